"""The tracker: births, deaths, crossing faces, max_missed, seq gaps and late frames, as tables."""

from __future__ import annotations

import numpy as np
import pytest

from display.track import Tracker, greedy_pairs, iou_matrix


def box(x: float, y: float = 0.0, s: float = 40.0) -> tuple[float, float, float, float]:
    return (x, y, s, s)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([box(0)], [box(0)], [[1.0]]),
        ([box(0)], [box(20)], [[800 / 2400]]),  # half overlap
        ([box(0)], [box(100)], [[0.0]]),
        ([(0, 0, 0, 0)], [(0, 0, 0, 0)], [[0.0]]),  # empty boxes: no division by zero
        ([box(0), box(100)], [box(100)], [[0.0], [1.0]]),
        ([], [box(0)], np.zeros((0, 1))),
    ],
    ids=["same", "half", "apart", "empty-boxes", "rows-columns", "no-rows"],
)
def test_iou_matrix(a, b, expected):
    np.testing.assert_allclose(iou_matrix(a, b), np.asarray(expected, float).reshape(len(a), len(b)))


@pytest.mark.parametrize(
    ("scores", "minimum", "pairs"),
    [
        ([[0.9, 0.8], [0.85, 0.1]], 0.3, [(0, 0)]),  # greedy: the best pair first, then nothing >= 0.3 left
        ([[0.9, 0.8], [0.85, 0.4]], 0.3, [(0, 0), (1, 1)]),
        ([[0.2]], 0.3, []),
        ([[0.5, 0.5]], 0.3, [(0, 0)]),  # a tie goes to the first column
    ],
)
def test_greedy_pairs(scores, minimum, pairs):
    assert greedy_pairs(np.asarray(scores), minimum) == pairs


def walk(x0: float, dx: float, y: float, n: int) -> list[tuple[float, float, float, float]]:
    return [box(x0 + dx * t, y) for t in range(n)]


A = walk(0, 5, 0, 8)  # a face drifting right
B = walk(200, -5, 0, 8)  # another drifting left, far away
FAST_RIGHT = walk(0, 20, 0, 10)  # two faces crossing at 20 px/frame (half a box), 20 px apart vertically
FAST_LEFT = walk(180, -20, 20, 10)

# Each case: frames as (seq, [boxes]); expected ids per frame.
CASES = {
    "birth": ([(0, [A[0]]), (1, [A[1], B[1]]), (2, [B[2], A[2]])], [[1], [1, 2], [2, 1]]),
    "empty frames": ([(0, []), (1, [])], [[], []]),
    "survives max_missed": ([(0, [A[0]]), (1, []), (2, []), (3, [A[3]])], [[1], [], [], [1]]),
    "death after max_missed": ([(0, [A[0]]), (1, []), (2, []), (3, []), (4, [A[4]])], [[1], [], [], [], [2]]),
    "seq gap counts as missed": ([(0, [A[0]]), (4, [A[4]])], [[1], [2]]),
    "short seq gap": ([(0, [A[0]]), (3, [A[3]])], [[1], [1]]),
    "ids never reused": ([(0, [A[0]]), (10, [B[0]]), (11, [B[1], A[1]])], [[1], [2], [2, 3]]),
    "far jump is a new face": ([(0, [box(0)]), (1, [box(100)])], [[1], [2]]),
    "crossing faces keep ids": (
        [(t, [FAST_RIGHT[t], FAST_LEFT[t]][:: -1 if t % 2 else 1]) for t in range(10)],  # order varies
        [[2, 1] if t % 2 else [1, 2] for t in range(10)],
    ),
    "crossing with occlusion": (
        [(t, [FAST_RIGHT[t]] + ([] if 4 <= t <= 5 else [FAST_LEFT[t]])) for t in range(10)],
        [[1] if 4 <= t <= 5 else [1, 2] for t in range(10)],
    ),
}


@pytest.mark.parametrize(("frames", "expected"), list(CASES.values()), ids=list(CASES))
def test_tracker_table(frames, expected):
    tracker = Tracker(iou_min=0.3, max_missed=2)
    assert [tracker.update(seq, boxes) for seq, boxes in frames] == expected


def test_max_missed_zero_ends_a_track_at_the_first_miss():
    tracker = Tracker(0.3, max_missed=0)
    assert [tracker.update(s, b) for s, b in [(0, [A[0]]), (1, [A[1]]), (2, []), (3, [A[3]])]] == [[1], [1], [], [2]]


def test_late_frames_are_matched_read_only():
    tracker = Tracker(0.3, 2)
    assert tracker.update(0, [A[0]]) == [1]
    assert tracker.update(2, [A[2]]) == [1]
    before = [(t.id, t.box, t.last_seq, t.hits) for t in tracker.tracks]
    assert tracker.update(1, [A[1], box(500)]) == [1, None]  # the stranger starts no track
    assert tracker.update(2, [A[2]]) == [1]  # a duplicate is late too
    assert [(t.id, t.box, t.last_seq, t.hits) for t in tracker.tracks] == before
    assert tracker.next_id == 2 and tracker.seq == 2


def test_ids_lists_the_live_tracks():
    tracker = Tracker(0.3, 1)
    tracker.update(0, [A[0], B[0]])
    tracker.update(1, [A[1]])
    assert tracker.ids() == {1, 2}
    tracker.update(3, [A[3]])
    assert tracker.ids() == {1}


@pytest.mark.parametrize(("iou_min", "max_missed"), [(0.0, 1), (1.0, 1), (0.3, -1)])
def test_bad_parameters_raise(iou_min, max_missed):
    with pytest.raises(ValueError):
        Tracker(iou_min, max_missed)
