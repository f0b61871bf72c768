"""bus.stage: the one age check, pixel resolution, one message through ``handle``, and the drop
reasons on the wire. The loop over real sockets is tested through the stages that run it
(tests/unit/detector/test_detector_worker.py, tests/unit/classifier/test_classifier_run.py)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from bus import sockets
from bus.codec import Drop, DropReason, Eos, Face, Frame, Message, ShmRef, decode, encode
from bus.runtime import RateLimited, Stats
from bus.shm import Ring, Rings
from bus.stage import Sender, TwoPaths, handle, is_stale, receive, take_pixels, view_pixels
from emostream.launch import free_port

LOG = logging.getLogger("test.stage")
NOW = 1_000_000.0
MISSING = ShmRef("emostream-1-1-deadbeef", 0, 1, (120, 160, 3))


def frame(live: bool = False, age_ms: float = 0.0, shm: ShmRef | None = None) -> Message:
    pixels = shm if shm is not None else np.full((120, 160, 3), 128, np.uint8)
    return Frame(src="cam", seq=7, ts=NOW - age_ms / 1000.0, live=live, t={"capture": NOW}, pixels=pixels)


@pytest.mark.parametrize(
    ("kind", "live", "age_s", "max_age_ms", "stale"),
    [
        ("frame", True, 0.6, 500, True),
        ("frame", True, 0.4, 500, False),
        ("frame", False, 9.0, 500, False),  # file frames are never stale
        ("frame", True, 9.0, 0, False),  # 0 = never
        ("eos", True, 9.0, 500, False),
        ("drop", True, 9.0, 500, False),
    ],
)
def test_is_stale(kind: str, live: bool, age_s: float, max_age_ms: int, stale: bool) -> None:
    msg = {"frame": Frame, "drop": Drop, "eos": Eos}[kind](src="s", seq=0, ts=100.0, live=live)
    assert is_stale(msg, 100.0 + age_s, max_age_ms) is stale


def labelled(msg: Message) -> Message:
    return Frame(src=msg.src, seq=msg.seq, ts=msg.ts, live=msg.live, faces=[Face((1, 1, 2, 2), 0.5)])


def refuses(msg: Message) -> Message:
    raise RuntimeError("interpreter failed")


@pytest.mark.parametrize(
    ("msg", "step", "kind", "reason", "counted"),
    [
        (frame(), labelled, "frame", None, {}),
        (frame(live=True, age_ms=499), labelled, "frame", None, {}),
        (frame(live=True, age_ms=501), labelled, "drop", "stale", {"stale": 1}),
        (frame(live=False, age_ms=60_000), labelled, "frame", None, {}),
        (frame(), refuses, "drop", "classify_error", {"classify_error": 1}),
        (Eos(src="cam", seq=9, ts=NOW, frames=9, dropped=0), refuses, "eos", None, {}),
        (
            Drop(src="cam", seq=3, ts=1.0, live=True, reason=DropReason.SEND),
            refuses,
            "drop",
            "send",
            {},
        ),
    ],
    ids=["frame", "fresh-live", "stale", "old-file-frame", "step-raises", "eos-passes", "marker-passes"],
)
def test_handle_ages_steps_and_counts(msg: Message, step, kind: str, reason: str | None, counted: dict) -> None:
    stats = Stats(LOG, 60.0)
    out = handle(msg, step, DropReason.CLASSIFY_ERROR, NOW, 500, stats, RateLimited(LOG))
    assert (out.kind, getattr(out, "reason", None), out.seq) == (kind, reason, msg.seq)
    assert dict(stats.drops) == counted and stats.total == (kind == "frame" and msg.kind == "frame")
    if msg.kind != "frame":
        assert out is msg, "markers and ends pass on unchanged (and uncounted: they were counted upstream)"


def test_view_pixels_reads_in_place_or_drops_a_missing_ring(tmp_path: Path) -> None:
    rings, warn = Rings(directory=tmp_path), RateLimited(LOG)
    ring = Ring(2, 120 * 160 * 3, directory=tmp_path)
    try:
        ref = ring.put(np.full((120, 160, 3), 42, np.uint8))
        assert ref is not None
        msg = frame(shm=ref)
        out = view_pixels(msg, rings, warn)
        assert out.image is not None and out.image.shape == (120, 160, 3) and int(out.image.max()) == 42
        assert msg.image is None and out.shm == ref, "a new message, still travelling as the reference"
        assert ring.busy() == 1, "in place: the slot stays busy for the stage downstream"
        marker = view_pixels(frame(shm=MISSING), rings, warn)
        assert (marker.kind, marker.reason, marker.shm) == ("drop", "shm_missing", MISSING)
        plain = frame()
        assert view_pixels(plain, rings, warn) is plain, "frames with their pixels are untouched"
    finally:
        ring.close()


def test_a_slot_reused_before_it_is_read_is_overwritten(tmp_path: Path) -> None:
    rings = Rings(directory=tmp_path)
    ring = Ring(1, 120 * 160 * 3, directory=tmp_path)
    try:
        old = ring.put(np.zeros((120, 160, 3), np.uint8))
        assert old is not None and rings.release(old) and ring.put(np.zeros((120, 160, 3), np.uint8)) is not None
        assert view_pixels(frame(shm=old), rings, RateLimited(LOG)).reason == "overwritten"
    finally:
        ring.close()


def test_a_slot_reused_while_the_step_reads_it_makes_the_frame_overwritten(tmp_path: Path) -> None:
    rings, stats = Rings(directory=tmp_path), Stats(LOG, 60.0)
    ring = Ring(1, 120 * 160 * 3, directory=tmp_path)
    try:
        ref = ring.put(np.zeros((120, 160, 3), np.uint8))
        assert ref is not None

        def reclaimed(msg: Message) -> Message:  # capture takes the slot back meanwhile (RECLAIM_S)
            ring.meta[ref.slot, 1] = 0
            assert ring.put(np.ones((120, 160, 3), np.uint8)) is not None
            return labelled(msg)

        out = handle(frame(shm=ref), reclaimed, DropReason.DETECT_ERROR, NOW, 500, stats, RateLimited(LOG), rings)
        assert (out.kind, out.reason, out.shm) == ("drop", "overwritten", ref) and dict(stats.drops) == {
            "overwritten": 1
        }
    finally:
        ring.close()


def test_take_pixels_copies_and_frees_the_slot(tmp_path: Path) -> None:
    rings = Rings(directory=tmp_path)
    ring = Ring(2, 120 * 160 * 3, directory=tmp_path)
    try:
        ref = ring.put(np.full((120, 160, 3), 9, np.uint8))
        assert ref is not None
        out = take_pixels(frame(shm=ref), rings, RateLimited(LOG))
        assert out.kind == "frame" and out.image is not None and int(out.image.max()) == 9 and out.image.flags.writeable
        assert ring.busy() == 0
    finally:
        ring.close()


def test_receive_counts_garbage_and_another_runs_messages() -> None:
    stats = Stats(LOG, 60.0)
    header = msgpack.packb({"v": 1, "kind": "frame", "src": "s", "seq": 0, "ts": 1.0, "run": "someone-else"})
    assert receive([b"\x93garbage"], stats, RateLimited(LOG)) is None
    assert receive([header], stats, RateLimited(LOG)) is None
    assert dict(stats.drops) == {"garbage": 2}
    msg = receive(encode(frame()), stats, RateLimited(LOG))
    assert msg is not None and msg.seq == 7


def wire_reason(reason: str) -> list[bytes]:
    return [msgpack.packb({"v": 1, "kind": "drop", "src": "s", "seq": 0, "ts": 1.0, "reason": reason})]


@pytest.mark.parametrize("reason", list(DropReason))
def test_every_reason_travels_as_its_name(reason: DropReason) -> None:
    parts = encode(Drop(src="s", seq=0, ts=1.0, reason=reason))
    assert msgpack.unpackb(parts[0]) == msgpack.unpackb(wire_reason(reason.value)[0]), "a plain msgpack str"
    assert decode(parts).reason is reason


@pytest.mark.parametrize("name", ["send_full", "decode", "?", "a_newer_writers_reason"])
def test_a_reason_this_reader_does_not_know_is_unknown(name: str) -> None:
    assert decode(wire_reason(name)).reason is DropReason.UNKNOWN


def test_a_frame_that_cannot_be_encoded_goes_on_as_an_encode_marker(tmp_path: Path) -> None:
    ctx = zmq.Context()
    sink, out = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    sink.bind("inproc://stage-encode")
    out.connect("inproc://stage-encode")
    stats = Stats(LOG, 60.0)
    sender = Sender("detector", out, threading.Event(), stats, RateLimited(LOG), Rings(directory=tmp_path))
    try:
        too_wide = Frame(src="cam", seq=4, ts=NOW, pixels=np.zeros((1, 8193, 3), np.uint8))
        assert sender.send(too_wide) is False
        assert sink.poll(2000)
        got = decode(sink.recv_multipart())
    finally:
        for s in (sink, out):
            s.close(0)
        ctx.term()
    assert (got.kind, got.seq, got.reason) == ("drop", 4, "encode") and "detector" in got.t
    assert dict(stats.drops) == {"encode": 1}


def test_two_paths_crops_to_the_classifier_the_frame_to_the_display_and_no_emotions_when_none_takes_them(
    tmp_path: Path,
) -> None:
    ctx = zmq.Context()
    clf_in, disp_in = sockets.pull(ctx, "inproc://two-clf", 4), sockets.pull(ctx, "inproc://two-disp", 4)
    to_clf = sockets.push(ctx, ["inproc://two-clf"], 4, 100)
    to_disp = sockets.push(ctx, ["inproc://two-disp"], 4, 100)
    nobody = sockets.push(ctx, [f"tcp://127.0.0.1:{free_port()}"], 4, 100)  # a classifier that is not there
    stats = Stats(LOG, 60.0)
    display = Sender("detector", to_disp, threading.Event(), stats, RateLimited(LOG), Rings(directory=tmp_path))
    face = Face((1.0, 2.0, 30.0, 30.0), 0.9)
    crops = np.full((1, 48, 48, 1), 7, np.uint8)
    with_face = Frame("cam", 1, NOW, live=True, pixels=np.zeros((60, 80, 3), np.uint8), faces=[face], crops=crops)
    try:
        paths = TwoPaths(to_clf, display)
        assert paths.send(with_face)
        assert paths.send(Frame("cam", 2, NOW, live=True, pixels=np.zeros((60, 80, 3), np.uint8)))
        assert paths.send(Drop("cam", 3, NOW, DropReason.STALE))
        request = decode(clf_in.recv_multipart())
        got = [decode(disp_in.recv_multipart()) for _ in range(3)]
        assert not clf_in.poll(100), "only frames with faces go to the classifier"
        lonely = TwoPaths(nobody, display)
        lonely.send(dataclasses.replace(with_face, seq=4))
        unlabelled = decode(disp_in.recv_multipart())
    finally:
        for s in (clf_in, disp_in, to_clf, to_disp, nobody):
            s.close(0)
        ctx.term()
    assert request.kind == "frame" and request.result and request.pixels is None and request.crops is not None
    assert (request.seq, request.faces, request.crops.shape, "detector" in request.t) == (
        1,
        [face],
        (1, 48, 48, 1),
        True,
    )
    first = got[0]
    assert first.kind == "frame" and first.wait and first.crops is None and first.image is not None
    assert [(m.kind, m.seq, getattr(m, "wait", False)) for m in got[1:]] == [("frame", 2, False), ("drop", 3, False)]
    assert unlabelled.kind == "frame" and not unlabelled.wait and unlabelled.no_emotions == "send"
    assert dict(stats.drops) == {"no_emotions_send": 1}


def test_two_paths_a_file_request_that_timed_out_makes_the_next_ones_not_wait(tmp_path: Path) -> None:
    ctx = zmq.Context()
    disp_in = sockets.pull(ctx, "inproc://two-disp2", 16)
    to_disp = sockets.push(ctx, ["inproc://two-disp2"], 16, 100)
    nobody = sockets.push(ctx, [f"tcp://127.0.0.1:{free_port()}"], 4, 300)
    display = Sender("detector", to_disp, threading.Event(), Stats(LOG, 60.0), RateLimited(LOG), Rings(tmp_path))
    face = Face((1.0, 2.0, 30.0, 30.0), 0.9)
    msg = Frame("f", 0, NOW, pixels=np.zeros((8, 8, 3), np.uint8), faces=[face], crops=np.zeros((1, 4, 4, 1), np.uint8))
    took = []
    try:
        paths = TwoPaths(nobody, display)
        paths.taken = True  # a classifier took requests before, then died
        for seq in range(3):
            t0 = time.monotonic()
            paths.send(dataclasses.replace(msg, seq=seq))
            took.append(time.monotonic() - t0)
        got = [decode(disp_in.recv_multipart()) for _ in range(3)]
    finally:
        for s in (disp_in, to_disp, nobody):
            s.close(0)
        ctx.term()
    assert took[0] >= 0.25 and max(took[1:]) < 0.1, took
    assert [(m.seq, m.no_emotions) for m in got] == [(0, "send"), (1, "send"), (2, "send")]
