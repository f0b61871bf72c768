"""detector.worker: the pure step with a fake backend, and run over real inproc sockets."""

from __future__ import annotations

import logging
import socket
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import zmq

from bus import sockets, stage
from bus.codec import Drop, Eos, Face, Frame, Message, ShmRef, decode, encode
from bus.config import BusConfig, Config, DisplayConfig, display_pixels
from bus.preprocess import thumbnail
from bus.runtime import Stats
from bus.shm import Ring, Rings
from bus.sidecar import ModelSpec
from detector.backend import limit_faces
from detector.worker import run as run_worker
from detector.worker import step

GREY = ModelSpec(name="t", labels=("a", "b"), size=48, colour="grey", crop_margin=0.2)
RGB = ModelSpec(name="t", labels=("a", "b"), size=32, colour="rgb", crop_margin=0.0)
NOW = 1_000_000.0


class FakeBackend:
    """Returns fixed faces, or raises ``error``; records the frames it saw."""

    def __init__(self, faces: list[Face] | None = None, error: Exception | None = None):
        self.faces, self.error, self.excess = faces or [], error, 0
        self.seen: list[tuple[int, ...]] = []

    def detect(self, bgr: np.ndarray) -> list[Face]:
        self.seen.append(bgr.shape)
        if self.error is not None:
            raise self.error
        return list(self.faces)


def frame(image: np.ndarray | None = None, live: bool = False, age_ms: float = 0.0, seq: int = 7) -> Message:
    img = np.full((120, 160, 3), 128, np.uint8) if image is None else image
    return Frame(src="cam", seq=seq, ts=NOW - age_ms / 1000.0, live=live, t={"capture": NOW}, pixels=img)


def face(x: float, y: float, w: float = 30.0, score: float = 0.9) -> Face:
    return Face((x, y, w, w), score, [(x + 5, y + 5)] * 6)


@pytest.mark.parametrize(
    ("faces", "spec", "crops_shape"),
    [
        ([], GREY, None),
        ([face(10, 10)], GREY, (1, 48, 48, 1)),
        ([face(10, 10)], RGB, (1, 32, 32, 3)),
        ([face(i * 5, i * 3) for i in range(30)], GREY, (30, 48, 48, 1)),
        ([face(-20, -15, 60), face(140, 100, 50)], GREY, (2, 48, 48, 1)),  # partly outside the frame
        ([face(500, 500)], GREY, (1, 48, 48, 1)),  # wholly outside: crop_face pads by replication
    ],
)
def test_step_adds_faces_and_one_crop_per_face(faces: list[Face], spec: ModelSpec, crops_shape: tuple | None) -> None:
    msg = frame()
    out = step(msg, FakeBackend(faces), spec)
    assert out.kind == "frame" and (out.src, out.seq, out.ts, out.live) == (msg.src, msg.seq, msg.ts, msg.live)
    assert out.faces == faces and (None if out.crops is None else out.crops.shape) == crops_shape
    assert out.crops is None or out.crops.dtype == np.uint8
    assert out.image is not None and out.image.shape == (120, 160, 3) and out.t == {"capture": NOW}
    back = decode(encode(out))  # what goes on the wire decodes to the same thing
    assert len(back.faces) == len(faces) and (None if back.crops is None else back.crops.shape) == crops_shape


@pytest.mark.parametrize(
    ("msg", "error", "reason"),
    [
        (Frame(src="cam", seq=1, ts=NOW), None, "no_image"),
        (frame(np.zeros((10, 10, 2), np.uint8)), None, "bad_image"),
        (frame(np.zeros((10, 10, 3), np.float32)), None, "bad_image"),
        (frame(np.zeros((0, 10, 3), np.uint8)), None, "bad_image"),
        (frame(np.zeros((2, 2, 2, 3), np.uint8)), None, "bad_image"),
        (frame(), RuntimeError("mediapipe says no"), "detect_error"),
        (frame(), ValueError("bad input"), "detect_error"),
        (frame(), "nan box", "crop_error"),
    ],
)
def test_step_turns_unusable_frames_into_drop_markers(msg: Message, error: Exception | str | None, reason: str) -> None:
    faces = [face(float("nan"), 1)] if error == "nan box" else [face(1, 1)]
    backend = FakeBackend(faces, error if isinstance(error, Exception) else None)
    out = step(msg, backend, GREY)
    assert (out.kind, out.reason) == ("drop", reason)
    assert (out.src, out.seq, out.ts, out.live) == (msg.src, msg.seq, msg.ts, msg.live)
    assert not hasattr(out, "pixels") and not hasattr(out, "crops"), "a drop marker carries no pixels"
    decode(encode(out))


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((40, 50), np.uint8),
        np.zeros((40, 50, 1), np.uint8),
        np.zeros((40, 50, 4), np.uint8),
        np.zeros((40, 50, 3), np.uint16),
        np.zeros((1, 1, 3), np.uint8),
    ],
)
def test_step_gives_the_backend_bgr8_whatever_the_layout(image: np.ndarray) -> None:
    backend = FakeBackend([face(0, 0)])
    out = step(frame(image), backend, GREY)
    assert out.kind == "frame" and backend.seen == [(*image.shape[:2], 3)]
    assert out.image is not None and out.image.dtype == np.uint8 and out.image.shape == (*image.shape[:2], 3)


@pytest.mark.parametrize(
    "msg",
    [
        Eos(src="cam", seq=9, ts=NOW, frames=9, dropped=1),
        Drop(src="cam", seq=3, ts=NOW - 100, live=True, reason="stale"),
    ],
)
def test_step_passes_markers_on_unchanged(msg: Message) -> None:
    backend = FakeBackend(error=RuntimeError("must not be called"))
    assert step(msg, backend, GREY) is msg and backend.seen == []


@pytest.mark.parametrize(
    ("n", "max_faces", "kept", "excess"),
    [(0, 4, 0, 0), (3, 4, 3, 0), (4, 4, 4, 0), (10, 4, 4, 6), (30, 1, 1, 29)],
)
def test_limit_faces_keeps_the_best_sorted_left_to_right(n: int, max_faces: int, kept: int, excess: int) -> None:
    faces = [face(x=(i * 37) % 100, y=0, score=i / 100) for i in range(n)]
    out, left = limit_faces(faces, max_faces)
    assert (len(out), left) == (kept, excess)
    assert [f.box[0] for f in out] == sorted(f.box[0] for f in out)
    assert sorted(f.score for f in out) == sorted(f.score for f in faces)[n - kept :]


def test_run_moves_frames_and_markers_and_counts_drops() -> None:
    ctx = zmq.Context()
    cfg = Config(bus=BusConfig(max_age_ms=500))
    in_sock = sockets.pull(ctx, "inproc://det-in", hwm=10)
    feed = sockets.push(ctx, ["inproc://det-in"], hwm=10, send_timeout_ms=500)
    sink = sockets.pull(ctx, "inproc://det-out", hwm=10)
    out_sock = sockets.push(ctx, ["inproc://det-out"], hwm=10, send_timeout_ms=500)
    stop, stats = threading.Event(), Stats(logging.getLogger("test"), 60.0)
    backend = FakeBackend([face(10, 10), face(50, 10)])
    worker = threading.Thread(target=run_worker, args=(cfg, in_sock, out_sock, backend, stop, stats, GREY))
    worker.start()
    try:
        now = time.time()
        sent = [
            Frame(src="a", seq=0, ts=now, pixels=np.zeros((60, 80, 3), np.uint8)),
            Frame(src="a", seq=1, ts=now - 10, live=True, pixels=np.zeros((60, 80, 3), np.uint8)),
            Eos(src="a", seq=2, ts=now, frames=2, dropped=0),
        ]
        assert sockets.send(feed, [b"garbage"], block=True)
        for m in sent:
            assert sockets.send(feed, encode(m), block=True)
        got = []
        for _ in sent:
            parts = sockets.recv(sink, 2000)
            assert parts is not None, "detector output timed out"
            got.append(decode(parts))
    finally:
        stop.set()
        worker.join(timeout=2)
        for s in (in_sock, feed, sink, out_sock):
            s.close(linger=0)
        ctx.term()
    assert not worker.is_alive()
    assert [(m.kind, m.seq, getattr(m, "reason", None)) for m in got] == [
        ("frame", 0, None),
        ("drop", 1, "stale"),
        ("eos", 2, None),
    ]
    assert len(got[0].faces) == 2 and got[0].crops is not None and got[0].crops.shape == (2, 48, 48, 1)
    assert all("detector" in m.t for m in got)
    assert stats.drops == {"garbage": 1, "stale": 1} and stats.total == 1


MISSING = ShmRef("emostream-1-1-deadbeef", 0, 1, (120, 160, 3))


def shm_frame(ref: ShmRef, seq: int = 7) -> Message:
    msg = frame(seq=seq)
    msg.pixels = ref
    return msg


def test_run_forwards_shared_memory_frames_as_references_and_drops_lost_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage, "Rings", partial(Rings, directory=tmp_path))
    ring = Ring(2, 120 * 160 * 3, directory=tmp_path)

    class Reclaiming(FakeBackend):
        """Capture takes the second frame's slot back while the detector reads it."""

        def detect(self, bgr: np.ndarray) -> list[Face]:
            if len(self.seen) == 1:
                ring.meta[1, 1] = 0
                assert ring.put(np.zeros((120, 160, 3), np.uint8)) is not None
            return super().detect(bgr)

    ctx = zmq.Context()
    in_sock = sockets.pull(ctx, "inproc://det-shm-in", hwm=10)
    feed = sockets.push(ctx, ["inproc://det-shm-in"], hwm=10, send_timeout_ms=500)
    sink = sockets.pull(ctx, "inproc://det-shm-out", hwm=10)
    out_sock = sockets.push(ctx, ["inproc://det-shm-out"], hwm=10, send_timeout_ms=500)
    stop, stats = threading.Event(), Stats(logging.getLogger("test"), 60.0)
    backend = Reclaiming([face(10, 10)])
    thread = threading.Thread(target=run_worker, args=(Config(), in_sock, out_sock, backend, stop, stats, GREY))
    thread.start()
    try:
        first = ring.put(np.full((120, 160, 3), 128, np.uint8))
        second = ring.put(np.full((120, 160, 3), 128, np.uint8))
        assert first is not None and second is not None and (first.slot, second.slot) == (0, 1)
        sent = [shm_frame(first, 0), shm_frame(MISSING, 1), shm_frame(second, 2)]
        for m in sent:
            assert sockets.send(feed, encode(m), block=True)
        received = []
        for _ in sent:
            parts = sockets.recv(sink, 2000)
            assert parts is not None, "detector output timed out"
            received.append(parts)
    finally:
        stop.set()
        thread.join(timeout=2)
        for s in (in_sock, feed, sink, out_sock):
            s.close(linger=0)
        ctx.term()
        ring.close()
    assert not thread.is_alive()
    assert [len(p) for p in received] == [2, 1, 1], "header (+ crops): the pixels stay in the ring"
    got = [decode(p) for p in received]
    assert [(m.kind, m.seq, getattr(m, "reason", None)) for m in got] == [
        ("frame", 0, None),
        ("drop", 1, "shm_missing"),
        ("drop", 2, "overwritten"),
    ]
    assert [m.shm for m in got] == [first, MISSING, second], "markers keep the reference for the display's release"
    assert got[0].image is None and len(got[0].faces) == 1 and got[0].crops is not None
    assert backend.seen == [(120, 160, 3)] * 2, "the detector read the ring's pixels; the missing one never ran"
    assert dict(stats.drops) == {"shm_missing": 1, "overwritten": 1} and stats.total == 1


def test_live_frames_that_cannot_be_sent_reach_the_display_as_drop_markers() -> None:
    """Issue 11 case 14: a live frame the detector could not send (classifier's queue full) was
    dropped with its marker (the marker found the same full queue): the display counted it lost.
    The markers are owed and go out once there is room; every seq arrives exactly once."""
    ctx = zmq.Context()
    cfg = Config(bus=BusConfig(max_age_ms=60_000))
    in_sock = sockets.pull(ctx, "inproc://det-owe-in", hwm=100)
    feed = sockets.push(ctx, ["inproc://det-owe-in"], hwm=100, send_timeout_ms=500)
    sink = sockets.pull(ctx, "inproc://det-owe-out", hwm=2)
    out_sock = sockets.push(ctx, ["inproc://det-owe-out"], hwm=2, send_timeout_ms=500)
    stop, stats = threading.Event(), Stats(logging.getLogger("test"), 60.0)
    worker = threading.Thread(target=run_worker, args=(cfg, in_sock, out_sock, FakeBackend([]), stop, stats, GREY))
    worker.start()
    n, got = 30, []
    try:
        for seq in range(n):
            m = Frame(src="cam", seq=seq, ts=time.time(), live=True, pixels=np.zeros((60, 80, 3), np.uint8))
            assert sockets.send(feed, encode(m), block=True)
        time.sleep(1.0)  # the detector sends what fits, and owes markers for the rest
        assert stats.drops["send"] > 0
        while (parts := sockets.recv(sink, 1000)) is not None:
            got.append(decode(parts))
    finally:
        stop.set()
        worker.join(timeout=2)
        for s in (in_sock, feed, sink, out_sock):
            s.close(linger=0)
        ctx.term()
    assert sorted(m.seq for m in got) == list(range(n))
    assert {m.reason for m in got if m.kind == "drop"} == {"send"}
    assert sum(m.kind == "drop" for m in got) == stats.drops["send"]


def test_run_frees_the_slot_of_a_live_frame_it_could_not_send_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 case 4: with no classifier to take it (nor its drop marker), the frame's slot stayed
    busy until capture took it back 10 s later; the display never sees it, so the detector frees it."""
    monkeypatch.setattr(stage, "Rings", partial(Rings, directory=tmp_path))
    ring = Ring(2, 120 * 160 * 3, directory=tmp_path)
    ctx = zmq.Context()
    in_sock = sockets.pull(ctx, "inproc://det-free-in", hwm=10)
    feed = sockets.push(ctx, ["inproc://det-free-in"], hwm=10, send_timeout_ms=500)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        nobody = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    out_sock = sockets.push(ctx, [nobody], hwm=10, send_timeout_ms=100)
    stop, stats = threading.Event(), Stats(logging.getLogger("test"), 60.0)
    thread = threading.Thread(
        target=run_worker, args=(Config(), in_sock, out_sock, FakeBackend([face(10, 10)]), stop, stats, GREY)
    )
    thread.start()
    try:
        ref = ring.put(np.full((120, 160, 3), 128, np.uint8))
        assert ref is not None and ring.busy() == 1
        msg = shm_frame(ref, 0)
        msg.live, msg.ts = True, time.time()
        assert sockets.send(feed, encode(msg), block=True)
        deadline = time.monotonic() + 3.0
        while ring.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ring.busy() == 0, f"the slot of the frame that went nowhere is free ({dict(stats.drops)})"
        assert stats.drops["send"] == 1
    finally:
        stop.set()
        thread.join(timeout=2)
        for s in (in_sock, feed, out_sock):
            s.close(linger=0)
        ctx.term()
        ring.close()


@pytest.mark.parametrize(
    ("endpoint", "shm_slots", "jpeg_quality", "pixels"),
    [
        ("tcp://127.0.0.1:5603", 16, 0, True),  # one host, shared memory: a reference costs nothing
        ("ipc:///tmp/display.sock", 16, 0, True),
        ("tcp://127.0.0.1:5603", 0, 0, False),  # raw pixels over loopback: a thumbnail is cheaper
        ("tcp://127.0.0.1:5603", 16, 85, False),  # JPEG: no shared memory
        ("tcp://10.0.0.2:5603", 16, 0, False),  # another host
    ],
)
def test_a_display_that_draws_nothing_gets_pixels_only_by_reference_on_this_host(
    endpoint: str, shm_slots: int, jpeg_quality: int, pixels: bool
) -> None:
    bus = BusConfig(allow_remote=True, shm_slots=shm_slots, jpeg_quality=jpeg_quality)
    cfg = Config(bus=bus, display=DisplayConfig(endpoint=endpoint, web=""))
    assert display_pixels(cfg) is pixels


def test_step_sends_the_thumbnail_instead_of_the_pixels_when_asked() -> None:
    img = np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (120, 1, 3))
    kept = step(frame(img), FakeBackend([face(10, 10)]), GREY)
    assert kept.kind == "frame" and kept.image is not None and kept.thumb is None
    lean = step(frame(img), FakeBackend([face(10, 10)]), GREY, pixels=False, thumb=True)
    assert lean.kind == "frame" and lean.pixels is None and lean.crops is not None
    assert lean.thumb is not None and np.array_equal(lean.thumb, thumbnail(img))
    bare = step(frame(img), FakeBackend([]), GREY, pixels=False)  # [display] track_cut = 0
    assert bare.kind == "frame" and bare.pixels is None and bare.thumb is None


@pytest.mark.parametrize("video", ["", "annotated.mp4"])
def test_two_paths_a_display_that_draws_gets_pixels_one_that_draws_nothing_a_thumbnail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, video: str
) -> None:
    """Frames in shared memory, the display on another host. One that draws nothing gets no pixels and
    no shared-memory reference: the detector releases every slot; one that draws gets the references,
    and releases them itself (its host must share the ring: docs/operations.md)."""
    monkeypatch.setattr(stage, "Rings", partial(Rings, directory=tmp_path))
    ring = Ring(4, 120 * 160 * 3, directory=tmp_path)
    remote = DisplayConfig(endpoint="tcp://10.0.0.2:5603", web="", video=video and str(tmp_path / video))
    cfg = Config(bus=BusConfig(allow_remote=True), display=remote)
    assert display_pixels(cfg) is bool(video)
    ctx = zmq.Context()
    in_sock = sockets.pull(ctx, "inproc://det-thumb-in", hwm=10)
    feed = sockets.push(ctx, ["inproc://det-thumb-in"], hwm=10, send_timeout_ms=500)
    socks = {}
    for name in ("classifier", "display"):
        socks[name] = (
            sockets.pull(ctx, f"inproc://det-thumb-{name}", hwm=10),
            sockets.push(ctx, [f"inproc://det-thumb-{name}"], hwm=10, send_timeout_ms=500),
        )
    stop, stats = threading.Event(), Stats(logging.getLogger("test"), 60.0)

    class OneFace(FakeBackend):
        """A face in the first frame only."""

        def detect(self, bgr: np.ndarray) -> list[Face]:
            self.seen.append(bgr.shape)
            return [face(10, 10)] if len(self.seen) == 1 else []

    backend = OneFace()
    args = (cfg, in_sock, socks["classifier"][1], backend, stop, stats, GREY, socks["display"][1])
    thread = threading.Thread(target=run_worker, args=args)
    thread.start()
    img = np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (120, 1, 3))
    refs = [ring.put(img), ring.put(255 - img)]
    assert refs[0] is not None and refs[1] is not None
    sent: list[Message] = [shm_frame(refs[0], 0), shm_frame(refs[1], 1), shm_frame(MISSING, 2)]
    sent += [Eos("cam", 3, NOW, frames=3)]
    try:
        for m in sent:
            assert sockets.send(feed, encode(m), block=True)
        shown = []
        for _ in sent:
            parts = sockets.recv(socks["display"][0], 2000)
            assert parts is not None, "detector output timed out"
            shown.append(decode(parts))
        request = sockets.recv(socks["classifier"][0], 2000)
        assert request is not None
    finally:
        stop.set()
        thread.join(timeout=2)
        for pair in socks.values():
            for s in pair:
                s.close(linger=0)
        for s in (in_sock, feed):
            s.close(linger=0)
        ctx.term()
    assert not thread.is_alive()
    got = decode(request)
    assert got.kind == "frame" and got.result and got.pixels is None and got.thumb is None and got.crops is not None
    assert [(m.kind, m.seq) for m in shown] == [("frame", 0), ("frame", 1), ("drop", 2), ("eos", 3)]
    frames = [m for m in shown if m.kind == "frame"]
    assert frames[0].wait and not frames[1].wait  # the second has no faces: nothing to wait for
    if video:
        assert [m.shm for m in shown] == [*refs, MISSING, None]
        assert all(m.thumb is None for m in frames)
        assert ring.busy() == 2, "the display releases the slots"
    else:
        assert [m.shm for m in shown] == [None] * 4, "no shared-memory reference leaves the detector"
        assert [m.pixels for m in frames] == [None, None]
        for m, pixels in zip(frames, (img, 255 - img), strict=True):
            assert m.thumb is not None and np.array_equal(m.thumb, thumbnail(pixels))
        assert ring.busy() == 0, "the detector released every slot"
    ring.close()
