from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from bus.codec import Drop, DropReason, Eos, Face, Frame, Message, ShmRef, drop_marker, encode
from bus.config import Config, SourceConfig, validate
from bus.runtime import Stats
from bus.shm import Ring, Rings
from display.worker import SEQ_REANCHOR, Display, is_file_uri, run, waiting_sources

LOG = logging.getLogger("test.display")


class RecordingSink:
    name = "rec"
    wants_image = True

    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict] = []
        self.images: list[np.ndarray | None] = []
        self.fail = fail
        self.closed = False

    def write(self, msg, image, event):
        if self.fail:
            raise OSError("disk full")
        self.events.append(event)
        self.images.append(image)

    def close(self):
        self.closed = True


def config(*uris: str, drain: float = 5.0, max_age_ms: int = 500) -> Config:
    cfg = Config()
    cfg = msgspec.structs.replace(
        cfg,
        capture=msgspec.structs.replace(
            cfg.capture, sources=tuple(SourceConfig(uri=u, id=f"s{i}") for i, u in enumerate(uris))
        ),
        display=msgspec.structs.replace(cfg.display, drain_timeout_s=drain),
        bus=msgspec.structs.replace(cfg.bus, max_age_ms=max_age_ms),
    )
    return validate(cfg)


def frame(src="s0", seq=0, live=False, ts=None, faces=1):
    return Frame(
        src=src,
        seq=seq,
        ts=time.time() if ts is None else ts,
        live=live,
        labels=["a", "b"],
        faces=[Face((1, 1, 10, 10), 0.9, [], "b", [0.3, 0.7])] * faces,
        pixels=np.zeros((40, 40, 3), np.uint8),
    )


@pytest.mark.parametrize(
    ("uri", "is_file"),
    [
        ("0", False),
        ("video.mp4", True),
        ("/data/frames/", True),
        ("rtsp://cam/stream", False),
        ("http://x/y.mjpg", False),
    ],
)
def test_is_file_uri(uri, is_file):
    assert is_file_uri(uri) is is_file


@pytest.mark.parametrize(
    ("uris", "waiting"),
    [(("a.mp4", "0"), ["s0"]), (("0", "1"), ["s0", "s1"]), (("a.mp4", "b.mp4"), ["s0", "s1"])],
)
def test_waiting_sources(uris, waiting):
    assert waiting_sources(config(*uris)) == waiting


def test_handle_accounts_every_kind_and_survives_garbage_and_sink_failures():
    stats = Stats(LOG, 60.0)
    good, bad = RecordingSink(), RecordingSink(fail=True)
    d = Display(config("a.mp4"), [good, bad], stats, LOG)
    d.handle(encode(frame(seq=0)), 0.0)
    d.handle(encode(frame(seq=1, faces=0)), 0.0)
    d.handle(encode(Drop(src="s0", seq=2, ts=1.0, reason="classify_error")), 0.0)
    d.handle(encode(frame(seq=3, live=True, ts=time.time() - 10)), 0.0)  # stale live frame
    d.handle([b"\x93garbage"], 0.0)
    d.handle(encode(Eos(src="s0", seq=9, ts=1.0)), 0.0)  # eos without a count: ignored
    d.handle(encode(frame(src="stranger", seq=0)), 0.0)
    d.handle(encode(Eos(src="s0", seq=4, ts=1.0, frames=5, dropped=1)), 0.0)
    c = d.ledger.sources["s0"]
    assert (c.received, dict(c.drops), c.read, c.capture_dropped) == (2, {"classify_error": 1, "stale": 1}, 5, 1)
    assert d.ledger.sources["stranger"].received == 1
    assert [e["seq"] for e in good.events] == [0, 1, 0]
    assert good.events[1]["faces"] == []
    assert all(img is not None and img.shape == (40, 40, 3) for img in good.images)
    assert stats.drops["garbage"] == 2 and stats.drops["sink_rec"] == 3
    assert d.ledger.done(0.0, 5.0)


@pytest.fixture
def sockets():
    ctx = zmq.Context()
    addr = f"inproc://display-{time.monotonic_ns()}"
    pull = ctx.socket(zmq.PULL)
    pull.bind(addr)
    push = ctx.socket(zmq.PUSH)
    push.connect(addr)
    yield pull, push
    pull.close(linger=0)
    push.close(linger=0)
    ctx.term()


def run_in_thread(cfg, pull, sinks, stop):
    result = {}
    t = threading.Thread(target=lambda: result.update(ledger=run(cfg, pull, sinks, stop, Stats(LOG, 60.0), LOG)))
    t.start()
    return t, result


def test_run_exits_when_every_file_source_is_accounted_for(sockets, caplog):
    pull, push = sockets
    sink = RecordingSink()
    t, result = run_in_thread(config("a.mp4"), pull, [sink], threading.Event())
    push.send_multipart(encode(Eos(src="s0", seq=3, ts=1.0, frames=3, dropped=0)))  # eos first
    for seq in (2, 0):
        push.send_multipart(encode(frame(seq=seq)))
    push.send_multipart(encode(Drop(src="s0", seq=1, ts=1.0, reason="stale")))
    with caplog.at_level(logging.INFO, logger="test.display"):
        t.join(5)
    assert not t.is_alive()
    assert sink.closed
    assert result["ledger"].sources["s0"].lost == 0
    assert "final s0: read 3  in events 2  dropped stale=1  lost 0" in caplog.text


def test_run_counts_lost_frames_after_the_drain_timeout(sockets, caplog):
    pull, push = sockets
    t, result = run_in_thread(config("a.mp4", drain=0.3), pull, [], threading.Event())
    push.send_multipart(encode(frame(seq=0)))
    push.send_multipart(encode(Eos(src="s0", seq=5, ts=1.0, frames=5, dropped=0)))
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="test.display"):
        t.join(5)
    assert not t.is_alive()
    assert 0.25 <= time.monotonic() - t0 < 2.0
    assert result["ledger"].sources["s0"].lost == 4
    assert "lost 4" in caplog.text


def test_run_stops_on_the_stop_event_with_cameras_only(sockets):
    pull, push = sockets
    stop = threading.Event()
    t, result = run_in_thread(config("0"), pull, [], stop)
    push.send_multipart(encode(frame(seq=0, live=True)))
    time.sleep(0.2)
    assert t.is_alive()
    stop.set()
    t.join(2)
    assert not t.is_alive()
    assert result["ledger"].sources["s0"].received == 1


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[Ring]:
    r = Ring(1, 40 * 40 * 3, directory=tmp_path)
    yield r
    r.close()


def shm_display(tmp_path: Path, sink: RecordingSink, rings: Rings | None = None) -> tuple[Display, Stats]:
    stats = Stats(LOG, 60.0)
    d = Display(config("a.mp4"), [sink], stats, LOG)
    d.rings = rings or Rings(directory=tmp_path)
    return d, stats


def shm_frame(ring: Ring, seq: int, value: int) -> Message:
    msg = frame(seq=seq)
    ref = ring.put(np.full((40, 40, 3), value, np.uint8))
    assert ref is not None
    msg.pixels = ref
    return msg


def test_a_frame_in_shared_memory_reaches_the_sinks_as_a_copy_and_frees_its_slot(tmp_path: Path, ring: Ring) -> None:
    sink = RecordingSink()
    d, stats = shm_display(tmp_path, sink)
    d.handle(encode(shm_frame(ring, 0, 9)), 0.0)
    assert ring.busy() == 0, "the display ends the frame's journey: slot released"
    assert len(sink.images) == 1 and sink.images[0] is not None and sink.images[0].shape == (40, 40, 3)
    shown = sink.images[0].copy()
    assert d.ledger.sources["s0"].received == 1 and stats.total == 1 and not stats.drops
    ring.put(np.full((40, 40, 3), 200, np.uint8))  # capture reuses the slot at once
    assert np.array_equal(sink.images[0], shown), "the sinks got a copy, not the ring's slot"


def test_a_frame_whose_slot_was_reused_is_dropped_not_shown(tmp_path: Path, ring: Ring) -> None:
    sink = RecordingSink()
    d, stats = shm_display(tmp_path, sink)
    old = shm_frame(ring, 0, 9)
    assert Rings(directory=tmp_path).release(old.shm)
    shm_frame(ring, 1, 10)  # same slot, next generation
    d.handle(encode(old), 0.0)
    assert sink.events == [] and sum(stats.drops.values()) == 1 and stats.total == 0
    assert sum(d.ledger.sources["s0"].drops.values()) == 1
    assert ring.busy() == 1, "the stale reference must not release the new frame's slot"


def test_a_frame_whose_slot_was_reused_is_counted_overwritten(tmp_path: Path, ring: Ring) -> None:
    d, stats = shm_display(tmp_path, RecordingSink())
    old = shm_frame(ring, 0, 9)
    assert Rings(directory=tmp_path).release(old.shm)
    shm_frame(ring, 1, 10)
    d.handle(encode(old), 0.0)
    assert dict(stats.drops) == {"overwritten": 1}


def test_a_slot_reused_while_the_display_copies_it_is_counted_overwritten(tmp_path: Path, ring: Ring) -> None:
    class Racing(Rings):
        """Capture takes the slot back (RECLAIM_S) right after the display's read."""

        def view(self, ref: ShmRef) -> np.ndarray:
            pixels = super().view(ref)
            assert ring.meta[ref.slot, 1] == 1
            ring.meta[ref.slot, 1] = 0
            assert ring.put(np.zeros((40, 40, 3), np.uint8)) is not None
            return pixels

    sink = RecordingSink()
    d, stats = shm_display(tmp_path, sink, Racing(directory=tmp_path))
    d.handle(encode(shm_frame(ring, 0, 9)), 0.0)
    assert sink.events == [] and dict(stats.drops) == {"overwritten": 1}
    assert dict(d.ledger.sources["s0"].drops) == {"overwritten": 1}
    assert ring.busy() == 1, "the new frame keeps its slot"


def test_a_frame_whose_ring_is_gone_is_counted_shm_missing(tmp_path: Path) -> None:
    sink = RecordingSink()
    d, stats = shm_display(tmp_path, sink)
    msg = frame(seq=0)
    msg.pixels = ShmRef("emostream-1-1-deadbeef", 0, 1, (40, 40, 3))
    d.handle(encode(msg), 0.0)
    assert sink.events == [] and dict(stats.drops) == {"shm_missing": 1}


def test_a_drop_marker_releases_its_frames_slot(tmp_path: Path, ring: Ring) -> None:
    d, stats = shm_display(tmp_path, RecordingSink())
    d.handle(encode(drop_marker(shm_frame(ring, 0, 9), DropReason.CROP_ERROR)), 0.0)
    assert ring.busy() == 0
    assert dict(stats.drops) == {"crop_error": 1} and dict(d.ledger.sources["s0"].drops) == {"crop_error": 1}


class Raising(RecordingSink):
    """A sink with a bug: raises something no handler expected."""

    name = "buggy"

    def write(self, msg, image, event):
        raise OverflowError("cannot convert float infinity to integer")


def test_no_sink_or_drawing_failure_escapes_handle(monkeypatch):
    """Issue 11 case 2: one forged frame raised in drawing outside any handler and ended the run.
    Now decode refuses it, and whatever a sink or the drawing raises is counted, not raised."""
    stats = Stats(LOG, 60.0)
    good = RecordingSink()
    d = Display(config("a.mp4"), [Raising(), good], stats, LOG)
    d.handle(encode(frame(seq=0)), 0.0)
    assert [e["seq"] for e in good.events] == [0] and stats.drops["sink_buggy"] == 1

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a drawing bug")

    monkeypatch.setattr("display.worker.annotate", broken)
    d.handle(encode(frame(seq=1)), 0.0)
    assert stats.drops["display_error"] == 1 and d.ledger.sources["s0"].drops["display_error"] == 1
    assert [e["seq"] for e in good.events] == [0]


@pytest.mark.parametrize("bad", [float("inf"), 1e30, float("nan")])
def test_a_forged_frame_with_an_absurd_box_is_garbage(bad):
    stats = Stats(LOG, 60.0)
    good = RecordingSink()
    d = Display(config("a.mp4"), [good], stats, LOG)
    forged = frame(seq=0)
    forged.faces = [Face((0.0, 0.0, bad, 10.0), 0.9, [], "b", [0.3, 0.7])]
    d.handle(encode(forged), 0.0)
    d.handle(encode(frame(seq=1)), 0.0)
    assert stats.drops["garbage"] == 1 and [e["seq"] for e in good.events] == [1]


def test_one_forged_huge_seq_does_not_freeze_the_source():
    """Issue 11 case 7: a frame with seq 10**12 made every later frame 'late' (read-only for the
    tracker, ignored by the web page) for the rest of the run."""
    stats = Stats(LOG, 60.0)
    sink = RecordingSink()
    d = Display(config("a.mp4"), [sink], stats, LOG)
    d.handle(encode(frame(seq=0)), 0.0)
    d.handle(encode(frame(seq=10**12)), 0.0)
    d.handle(encode(Drop(src="s0", seq=10**12 + 1, ts=1.0, reason="stale")), 0.0)
    for seq in range(1, 4):
        d.handle(encode(frame(seq=seq)), 0.0)
    assert [e["seq"] for e in sink.events] == [0, 1, 2, 3]
    assert stats.drops["seq_window"] == 2 and d.follow["s0"].tracker.seq == 3
    c = d.ledger.sources["s0"]
    assert (c.received, c.top, sum(c.drops.values())) == (4, 4, 0)


def test_a_source_that_restarts_its_numbering_is_followed_after_a_few_frames():
    stats = Stats(LOG, 60.0)
    sink = RecordingSink()
    d = Display(config("a.mp4"), [sink], stats, LOG)
    for seq in range(500_000, 500_005):
        d.handle(encode(frame(seq=seq)), 0.0)
    for seq in range(40):  # a restarted capture counts from 0 again
        d.handle(encode(frame(seq=seq)), 0.0)
    assert stats.drops["seq_window"] == SEQ_REANCHOR - 1
    assert [e["seq"] for e in sink.events] == [*range(500_000, 500_005), *range(SEQ_REANCHOR - 1, 40)]


def test_sources_not_in_the_config_are_bounded_and_evicted_least_recently_used():
    """Issue 11 case 10: 300 forged source ids added 274 MB that were never freed."""
    cfg = config("a.mp4")
    cfg = msgspec.structs.replace(cfg, display=msgspec.structs.replace(cfg.display, max_sources=4))
    stats = Stats(LOG, 60.0)

    class Forgetting(RecordingSink):
        def __init__(self):
            super().__init__()
            self.forgotten: list[str] = []

        def forget(self, src):
            self.forgotten.append(src)

    sink = Forgetting()
    d = Display(cfg, [sink], stats, LOG)
    for i in range(300):
        d.handle(encode(frame(src=f"forged{i}", seq=0)), 0.0)
        d.handle(encode(frame(src="forged0", seq=i + 1)), 0.0)  # keeps being used: never evicted
        d.handle(encode(frame(seq=i)), 0.0)
    assert set(d.ledger.sources) == {"s0", "forged0", "forged298", "forged299"}
    assert set(d.follow) <= set(d.ledger.sources) and set(d.windows) <= set(d.ledger.sources)
    assert stats.drops["evicted_source"] == 297 and len(sink.forgotten) == 297 and "forged0" not in sink.forgotten
    assert d.ledger.evicted_sources == 297 and d.ledger.evicted.received == 297
    assert d.ledger.sources["s0"].received == 300


def test_distinct_drop_reasons_are_bounded():
    """Issue 11 case 13: every distinct reason became a key in every later stats line. Reasons are
    one enum now (issue 12): a name the display does not know is counted as ``unknown``."""
    stats = Stats(LOG, 60.0)
    d = Display(config("a.mp4"), [], stats, LOG)
    for seq in range(1000):
        d.handle(encode(Drop(src="s0", seq=seq, ts=1.0, reason=f"r{seq:04d}" + "x" * 50)), 0.0)
    assert dict(stats.drops) == {"unknown": 1000} and dict(d.ledger.sources["s0"].drops) == {"unknown": 1000}


def test_two_paths_a_frame_is_shown_once_with_its_result_or_without_emotions_after_the_wait():
    stats, sink = Stats(LOG, 60.0), RecordingSink()
    d = Display(config("a.mp4"), [sink], stats, LOG)
    bare = dataclasses.replace(frame(seq=0), labels=None, faces=[Face((1, 1, 10, 10), 0.9)], wait=True)
    res = dataclasses.replace(frame(seq=0), pixels=None, result=True)
    d.handle(encode(res), 0.0)  # the result first
    assert sink.events == [] and len(d.joins) == 1
    d.handle(encode(bare), 0.1)
    assert [e["faces"][0]["label"] for e in sink.events] == ["b"] and "no_emotions" not in sink.events[0]
    d.handle(encode(dataclasses.replace(bare, seq=1)), 0.2)  # its result never comes
    d.handle(encode(dataclasses.replace(bare, seq=2, wait=False, no_emotions=DropReason.SEND)), 0.2)
    d.handle(encode(Drop("s0", 3, 1.0, DropReason.STALE, result=True)), 0.2)  # a result whose frame was dropped
    d.handle(encode(Drop("s0", 3, 1.0, DropReason.SEND)), 0.2)
    d.release(d.joins.expire(0.2 + d.cfg.display.join_wait_ms / 1000.0), 2.0)
    assert [(e["seq"], e.get("no_emotions")) for e in sink.events] == [(0, None), (2, "send"), (1, "join_timeout")]
    assert sink.events[2]["faces"][0]["label"] is None and len(d.joins) == 0
    c = d.ledger.sources["s0"]
    assert (c.received, dict(c.drops), c.duplicates) == (3, {"send": 1}, 0)
    assert stats.drops["no_emotions_join_timeout"] == 1 and stats.drops["no_emotions_send"] == 1


@pytest.mark.parametrize(
    ("video", "two_paths", "warned"), [("", True, True), ("out.mp4", True, False), ("", False, False)]
)
def test_a_drawing_sink_without_pixels_coming_is_said_at_start(caplog, tmp_path, video, two_paths, warned):
    cfg = config("a.mp4")
    cfg = msgspec.structs.replace(
        cfg,
        display=msgspec.structs.replace(cfg.display, video=video and str(tmp_path / video)),
        detector=msgspec.structs.replace(cfg.detector, two_paths=two_paths),
        bus=msgspec.structs.replace(cfg.bus, shm_slots=0),  # else a display on this host gets references
    )
    with caplog.at_level(logging.WARNING, logger="test.display"):
        Display(cfg, [RecordingSink()], Stats(LOG, 1e9), LOG)
    assert ("the detector sends frames without pixels" in caplog.text) is warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.display"):
        Display(cfg, [], Stats(LOG, 1e9), LOG)  # nothing draws: nothing to say
    assert not caplog.text
