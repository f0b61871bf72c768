"""capture.worker with scripted sources and senders (no sockets)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from bus.codec import Message
from bus.config import CaptureConfig, Config, SourceConfig
from bus.runtime import Stats
from bus.shm import Rings, create
from capture import worker
from capture.sources import Unreadable
from capture.worker import Pixels, _Shared, frame_message, printer, pump, run

log = logging.getLogger("test")


@dataclass
class Scripted:
    """A source that plays a script: an int n = frame n, "bad" = an unreadable item."""

    script: list[int | str]
    id: str = "s"
    uri: str = "scripted"
    live: bool = False
    fps: float = 1000.0
    ended: bool = False
    pos: int = 0

    def read(self, timeout: float) -> tuple[np.ndarray, float] | None:
        if self.pos >= len(self.script):
            self.ended = True
            return None
        item = self.script[self.pos]
        self.pos += 1
        if item == "bad":
            raise Unreadable("item is bad")
        return np.full((2, 3, 3), item, np.uint8), time.time()

    def close(self) -> None:
        pass


@dataclass
class Recorder:
    """A sender that records what it sent; ``refuse`` lists seqs of frames it fails to send."""

    refuse: set[int] = field(default_factory=set)
    sent: list[tuple[Message, bool]] = field(default_factory=list)

    def __call__(self, msg: Message, block: bool) -> bool:
        if msg.kind == "frame" and msg.seq in self.refuse:
            return False
        self.sent.append((msg, block))
        return True


def shared() -> _Shared:
    return _Shared(Stats(log, 60.0))


@pytest.mark.parametrize(
    ("script", "live", "refuse", "frames", "dropped", "unreadable"),
    [
        ([1, 2, 3], False, set(), 3, 0, 0),
        ([1, "bad", 2], False, set(), 2, 0, 1),
        ([1, 2, 3, 4], False, {1, 2}, 4, 2, 0),
        ([1, 2], True, {0}, 2, 1, 0),
        ([], False, set(), 0, 0, 0),
    ],
)
def test_pump_sends_every_frame_then_eos_with_counts(
    script: list[int | str], live: bool, refuse: set[int], frames: int, dropped: int, unreadable: int
) -> None:
    src, send, sh = Scripted(script, live=live), Recorder(refuse), shared()
    assert pump(src, send, threading.Event(), sh, realtime=False, peer_wait_s=0) == (frames, dropped)
    *sent_frames, (eos, eos_block) = send.sent
    assert [m.seq for m, _ in sent_frames] == [s for s in range(frames) if s not in refuse]
    assert all(m.kind == "frame" and m.src == "s" and m.live == live and m.image is not None for m, _ in sent_frames)
    assert all(block == (not live) for _, block in sent_frames), "live frames never block, file frames do"
    assert all("capture" in m.t for m, _ in sent_frames)
    assert (eos.kind, eos.frames, eos.dropped, eos.seq, eos_block) == ("eos", frames, dropped, frames, True)
    assert sh.stats.drops["unreadable"] == unreadable and sh.stats.drops["send"] == dropped
    assert sh.stats.total == frames - dropped


def test_first_file_frame_waits_for_a_peer() -> None:
    attempts = []

    def late_peer(msg: Message, block: bool) -> bool:
        attempts.append(msg.seq)
        return len(attempts) > 3  # downstream comes up after three tries

    assert pump(Scripted([1, 2]), late_peer, threading.Event(), shared(), realtime=False, peer_wait_s=10) == (2, 0)
    assert attempts[:4] == [0, 0, 0, 0]


def test_realtime_paces_files_at_their_fps() -> None:
    src = Scripted(list(range(6)), fps=50.0)
    t0 = time.monotonic()
    pump(src, Recorder(), threading.Event(), shared(), realtime=True, peer_wait_s=0)
    assert time.monotonic() - t0 >= 5 / 50.0 * 0.9


def test_stop_ends_pump_without_eos() -> None:
    class Endless(Scripted):
        def read(self, timeout: float) -> tuple[np.ndarray, float] | None:
            return np.zeros((2, 2, 3), np.uint8), time.time()

    stop, send = threading.Event(), Recorder()
    t = threading.Thread(target=pump, args=(Endless([]), send, stop, shared(), True))
    t.start()
    time.sleep(0.05)
    stop.set()
    t.join(timeout=2)
    assert not t.is_alive()
    assert send.sent and all(m.kind == "frame" for m, _ in send.sent)


def test_run_pumps_sources_in_parallel_and_print_writes_json_lines() -> None:
    cfg = Config(capture=CaptureConfig(sources=(SourceConfig(uri="a", id="a"), SourceConfig(uri="b", id="b"))))
    out = io.StringIO()
    lock = threading.Lock()
    sources = [Scripted([1, 2], id="a"), Scripted([3], id="b")]
    run(cfg, sources, [printer(out, lock), printer(out, lock)], threading.Event(), Stats(log, 60.0), linger_s=0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    a = [x for x in lines if x["src"] == "a"]
    assert [(x["kind"], x["seq"]) for x in a] == [("frame", 0), ("frame", 1), ("eos", 2)]
    assert a[0]["shape"] == [2, 3, 3] and isinstance(a[0]["ts"], float)
    assert [x["kind"] for x in lines if x["src"] == "b"] == ["frame", "eos"]


def test_run_lingers_after_the_end_until_stopped() -> None:
    cfg = Config(capture=CaptureConfig(sources=(SourceConfig(uri="a", id="a"),), eof_linger_s=30.0))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    run(cfg, [Scripted([1])], [Recorder()], stop, Stats(log, 60.0))
    assert 0.15 < time.monotonic() - t0 < 2.0


@pytest.fixture
def shm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pixels makes its rings here (the directory default is bound at import)."""
    monkeypatch.setattr(worker, "create_ring", partial(create, directory=tmp_path))
    return tmp_path


@pytest.fixture
def closing() -> Iterator[list[Pixels]]:
    made: list[Pixels] = []
    yield made
    for px in made:
        if px.ring is not None and hasattr(px.ring, "_map"):  # not closed by the test
            px.close()


def attach(px: Pixels, seq: int, live: bool = False) -> tuple[Message, float, bool]:
    msg = frame_message(Scripted([], live=live), seq, np.full((4, 5, 3), seq, np.uint8), time.time())
    t0 = time.monotonic()
    ok = px.attach(msg, live, threading.Event())
    return msg, time.monotonic() - t0, ok


def test_pixels_with_zero_slots_leaves_frames_inline(shm_dir: Path) -> None:
    px = Pixels(0, 1.0)
    msg, _, ok = attach(px, 0)
    assert ok and msg.shm is None and msg.image is not None and px.ring is None
    assert list(shm_dir.iterdir()) == []


def test_pixels_puts_frames_in_a_ring_made_at_the_first_frame(shm_dir: Path, closing: list[Pixels]) -> None:
    px = Pixels(4, 1.0)
    closing.append(px)
    assert px.ring is None
    msg, _, ok = attach(px, 3)
    assert ok and px.ring is not None and px.ring.slot_bytes == 4 * 5 * 3 and px.ring.slots == 4
    assert msg.shm is not None and msg.shm.ring == px.ring.name and msg.shm.shape == (4, 5, 3)
    assert np.array_equal(Rings(directory=shm_dir).view(msg.shm), np.full((4, 5, 3), 3, np.uint8))
    px.close()
    assert list(shm_dir.iterdir()) == []


def test_a_larger_frame_than_the_first_travels_in_the_message(shm_dir: Path, closing: list[Pixels]) -> None:
    px = Pixels(4, 1.0)
    closing.append(px)
    assert attach(px, 0)[2]
    msg = frame_message(Scripted([]), 1, np.zeros((8, 8, 3), np.uint8), time.time())
    assert px.attach(msg, False, threading.Event()) and msg.shm is None and msg.image is not None


def test_a_live_source_drops_at_once_when_the_ring_is_full(shm_dir: Path, closing: list[Pixels]) -> None:
    px = Pixels(2, 1.0)
    closing.append(px)
    assert all(attach(px, i, live=True)[2] for i in range(2))
    for seq in (2, 3):
        msg, took, ok = attach(px, seq, live=True)
        assert not ok and msg.shm is None and took < 0.2


def test_a_file_source_waits_for_a_free_slot_then_drops(shm_dir: Path, closing: list[Pixels]) -> None:
    px = Pixels(2, 0.3)
    closing.append(px)
    refs = [attach(px, i)[0].shm for i in range(2)]
    assert refs[0] is not None and refs[1] is not None
    msg, took, ok = attach(px, 2)
    assert not ok and msg.shm is None and 0.28 <= took < 2.0, "a full ring: wait wait_s, then drop"
    assert Rings(directory=shm_dir).release(refs[0])
    msg, took, ok = attach(px, 3)
    assert ok and msg.shm is not None and took < 0.2


def test_every_frame_carries_the_drops_so_far() -> None:
    """Issue 11 case 14: a live or looped source never sends eos, so its drops travel on its frames."""
    src, send = Scripted([1, 2, 3, 4, 5], live=True), Recorder({1, 2})
    pump(src, send, threading.Event(), shared(), realtime=False, peer_wait_s=0)
    assert [(m.seq, m.dropped) for m, _ in send.sent if m.kind == "frame"] == [(0, 0), (3, 2), (4, 2)]


def test_a_frame_that_was_not_sent_gives_its_slot_back_at_once(shm_dir: Path, closing: list[Pixels]) -> None:
    """Issue 11 case 4: with no detector up, each failed live send held its slot for RECLAIM_S
    (10 s), so after ``slots`` frames every later one was dropped as ring_full."""
    px = Pixels(2, 1.0)
    closing.append(px)
    sh = shared()
    frames, dropped = pump(
        Scripted(list(range(6)), live=True), Recorder(refuse=set(range(6))), threading.Event(), sh, False, 0, px
    )
    assert (frames, dropped) == (6, 6)
    assert dict(sh.stats.drops) == {"send": 6}, "never ring_full: every unsent frame freed its slot"
    assert px.ring is not None and px.ring.busy() == 0


def test_frames_over_max_frame_pixels_are_downscaled_and_counted(
    shm_dir: Path, closing: list[Pixels], caplog: pytest.LogCaptureFixture
) -> None:
    px = Pixels(4, 1.0, max_pixels=100 * 100)
    closing.append(px)
    big = np.random.default_rng(0).integers(0, 256, (400, 300, 3), np.uint8)
    small = np.zeros((50, 60, 3), np.uint8)

    @dataclass
    class Two(Scripted):
        def read(self, timeout: float) -> tuple[np.ndarray, float] | None:
            if self.pos >= 2:
                self.ended = True
                return None
            self.pos += 1
            return (big if self.pos == 1 else small), time.time()

    rec = Recorder()
    with caplog.at_level(logging.INFO, "capture"):
        assert pump(Two([]), rec, threading.Event(), shared(), False, 0, px) == (2, 0)
    shapes = [m.shm.shape if m.shm else None for m, _ in rec.sent if m.kind == "frame"]
    assert shapes == [(115, 86, 3), (50, 60, 3)], "aspect kept, at most max_pixels"
    assert "frame 0 of 300x400 downscaled to 86x115 ([bus] max_frame_pixels = 10000)" in caplog.text
    assert "source s ended: 2 frames, 0 not sent, 1 downscaled" in caplog.text


def test_no_room_for_a_ring_sends_pixels_in_the_messages_and_says_why_once(
    shm_dir: Path, closing: list[Pixels], caplog: pytest.LogCaptureFixture
) -> None:
    px = Pixels(16, 1.0, max_bytes=1 << 20)
    closing.append(px)
    with caplog.at_level(logging.WARNING, "capture"):
        for seq in range(3):
            msg = frame_message(Scripted([]), seq, np.zeros((1080, 1920, 3), np.uint8), time.time())
            assert px.attach(msg, False, threading.Event()) and msg.shm is None and msg.image is not None
    assert px.ring is None and list(shm_dir.iterdir()) == []
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"source s: no shared-memory ring: {shm_dir} (")
    assert "no room for 2 frames of 5.9 MiB within [bus] shm_max_bytes = 1048576" in line


def test_a_ring_with_fewer_slots_says_why(
    shm_dir: Path, closing: list[Pixels], caplog: pytest.LogCaptureFixture
) -> None:
    px = Pixels(16, 1.0, max_bytes=8 << 20)
    closing.append(px)
    with caplog.at_level(logging.WARNING, "capture"):
        msg = frame_message(Scripted([]), 0, np.zeros((540, 960, 3), np.uint8), time.time())
        assert px.attach(msg, False, threading.Event()) and msg.shm is not None
    assert px.ring is not None and px.ring.slots == 5
    assert "5 slots instead of [bus] shm_slots = 16" in caplog.text


def test_close_waits_for_frames_on_their_way(shm_dir: Path) -> None:
    """Issue 11 case 17: a ring closed right after the last frame was sent made the display drop
    it ('not on this host') when it opened the ring too late."""
    px = Pixels(2, 1.0)
    msg = attach(px, 0)[0]
    assert msg.shm is not None
    threading.Timer(0.2, lambda: Rings(directory=shm_dir).release(msg.shm)).start()  # type: ignore[arg-type]
    t0 = time.monotonic()
    px.close(drain_s=2.0)
    assert 0.15 < time.monotonic() - t0 < 1.0 and list(shm_dir.iterdir()) == []
