"""display.join: the two halves of a frame (the frame, its classifier result) met in either order,
bounded in time and in number."""

from __future__ import annotations

import numpy as np
import pytest

from bus.codec import Drop, DropReason, Face, Frame
from display.join import Joins

BOX = (1.0, 1.0, 10.0, 10.0)


def waiting(seq: int = 0, src: str = "s0") -> Frame:
    return Frame(src, seq, 1.0, pixels=np.zeros((8, 8, 3), np.uint8), faces=[Face(BOX, 0.9)], wait=True, t={"d": 2.0})


def result(seq: int = 0, src: str = "s0") -> Frame:
    face = Face(BOX, 0.9, label="b", probs=[0.2, 0.8])
    return Frame(src, seq, 1.0, faces=[face], labels=["a", "b"], uncertain_below=0.4, result=True, t={"c": 3.0})


def dropped(seq: int = 0) -> Drop:
    return Drop("s0", seq, 1.0, DropReason.CLASSIFY_ERROR, result=True)


@pytest.mark.parametrize("frame_first", [True, False])
def test_a_frame_and_its_result_join_in_either_order(frame_first: bool) -> None:
    j = Joins(1.0, 8)
    first, second = (waiting(), result()) if frame_first else (result(), waiting())
    assert j.add(first, 0.0) == (None, [])
    out, released = j.add(second, 0.5)
    assert released == [] and len(j) == 0 and out is not None
    assert out.image is not None and out.faces[0].label == "b" and out.labels == ["a", "b"]
    assert (out.uncertain_below, out.wait, out.no_emotions, out.t) == (0.4, False, None, {"d": 2.0, "c": 3.0})


def test_a_classifier_drop_joins_as_no_emotions_with_its_reason() -> None:
    j = Joins(1.0, 8)
    j.add(waiting(), 0.0)
    out, _ = j.add(dropped(), 0.1)
    assert out is not None and out.no_emotions == DropReason.CLASSIFY_ERROR and out.faces[0].label is None


@pytest.mark.parametrize(
    ("halves", "now", "expired"),
    [
        ([waiting(0), result(1)], 0.99, []),
        ([waiting(0), result(1)], 1.0, [("frame", "join_timeout"), (None, "late_result")]),
        ([dropped(3)], 5.0, [(None, "late_result")]),
    ],
)
def test_halves_waiting_past_join_wait_are_released(halves, now: float, expired) -> None:
    j = Joins(1.0, 8)
    for h in halves:
        j.add(h, 0.0)
    got = [("frame" if r.frame is not None else None, r.reason) for r in j.expire(now)]
    assert got == expired and len(j) == len(halves) - len(expired)


def test_the_oldest_half_makes_room_and_a_released_frame_has_no_emotions() -> None:
    j = Joins(60.0, 2)
    j.add(waiting(0), 0.0)
    j.add(result(1), 0.1)
    out, released = j.add(waiting(2), 0.2)
    assert out is None and len(j) == 2
    assert [(r.frame.seq if r.frame else None, r.reason) for r in released] == [(0, "join_full")]
    assert released[0].frame is not None and released[0].frame.no_emotions == "join_full"


def test_forget_and_flush() -> None:
    j = Joins(60.0, 8)
    j.add(result(0), 0.0)
    j.add(waiting(1), 0.0)
    assert j.forget("s0", 0) is not None and j.forget("s0", 0) is None
    assert [(r.frame is not None, r.reason) for r in j.flush()] == [(True, "stopped")] and len(j) == 0


def test_the_same_half_twice_releases_the_older() -> None:
    j = Joins(60.0, 8)
    j.add(waiting(0), 0.0)
    out, released = j.add(waiting(0), 0.1)
    assert out is None and [r.reason for r in released] == ["join_full"] and len(j) == 1
