from __future__ import annotations

import logging
import threading
import time
from functools import partial

import numpy as np
import pytest
import zmq

from bus import shm, stage
from bus.codec import Eos, Face, Frame, Message, decode, encode
from bus.config import Config
from bus.runtime import Stats
from classifier.worker import run

LOG = logging.getLogger("test.classifier")


class FlakyModel:
    labels = ("a", "b")
    size = 4
    channels = 1

    def classify(self, crops: np.ndarray) -> np.ndarray:
        if crops.max() == 255:
            raise RuntimeError("interpreter failed")
        return np.tile(np.array([[0.25, 0.75]], np.float32), (len(crops), 1))


def msg(seq: int, live: bool = False, age_s: float = 0.0, pixel: int = 0) -> Message:
    return Frame(
        src="s",
        seq=seq,
        ts=time.time() - age_s,
        live=live,
        faces=[Face((0, 0, 4, 4), 0.9)],
        crops=np.full((1, 4, 4, 1), pixel, np.uint8),
        pixels=np.zeros((8, 8, 3), np.uint8),
    )


@pytest.fixture
def wired():
    ctx = zmq.Context()
    tag = time.monotonic_ns()
    inner, outer = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    inner.bind(f"inproc://in-{tag}")
    outer.connect(f"inproc://in-{tag}")
    down, sink = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    sink.bind(f"inproc://out-{tag}")
    down.connect(f"inproc://out-{tag}")
    yield outer, inner, down, sink
    for s in (inner, outer, down, sink):
        s.close(linger=0)
    ctx.term()


def test_run_forwards_results_markers_and_eos(wired):
    feed, inner, down, sink = wired
    stop, stats = threading.Event(), Stats(LOG, 60.0)
    t = threading.Thread(target=run, args=(Config(), inner, down, FlakyModel(), stop, stats, LOG))
    t.start()
    try:
        feed.send_multipart(encode(msg(0)))
        feed.send_multipart([b"garbage"])
        feed.send_multipart(encode(msg(1, live=True, age_s=5.0)))  # stale
        feed.send_multipart(encode(msg(2, pixel=255)))  # the model fails on this one
        feed.send_multipart(encode(Eos(src="s", seq=3, ts=1.0, frames=3, dropped=0)))
        got = []
        for _ in range(4):
            assert sink.poll(5000), "nothing forwarded within 5 s"
            got.append(decode(sink.recv_multipart()))
    finally:
        stop.set()
        t.join(2)
    assert not t.is_alive()
    assert [(m.seq, m.kind, getattr(m, "reason", None)) for m in got] == [
        (0, "frame", None),
        (1, "drop", "stale"),
        (2, "drop", "classify_error"),
        (3, "eos", None),
    ]
    assert got[0].faces[0].label == "b" and got[0].labels == ["a", "b"] and got[0].crops is None
    assert "classifier" in got[0].t and got[0].image is not None
    assert dict(stats.drops) == {"garbage": 1, "stale": 1, "classify_error": 1}


def test_live_frames_the_display_had_no_room_for_reach_it_as_drop_markers():
    """Issue 11 case 14: a live result the display's queue had no room for was only counted here
    (`send`); the display saw it as lost. Its marker is owed and goes out when there is room."""
    ctx = zmq.Context()
    tag = time.monotonic_ns()
    inner, feed = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    inner.bind(f"inproc://in-{tag}")
    feed.connect(f"inproc://in-{tag}")
    down, sink = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (down, sink):
        s.sndhwm = s.rcvhwm = 2
    sink.bind(f"inproc://out-{tag}")
    down.connect(f"inproc://out-{tag}")
    stop, stats = threading.Event(), Stats(LOG, 60.0)
    t = threading.Thread(target=run, args=(Config(), inner, down, FlakyModel(), stop, stats, LOG))
    t.start()
    n, got = 30, []
    try:
        for seq in range(n):
            feed.send_multipart(encode(msg(seq, live=True)))
        time.sleep(1.0)
        assert stats.drops["send"] > 0
        while sink.poll(1000):
            got.append(decode(sink.recv_multipart()))
    finally:
        stop.set()
        t.join(2)
        for s in (inner, feed, down, sink):
            s.close(linger=0)
        ctx.term()
    assert sorted(m.seq for m in got) == list(range(n))
    assert sum(m.kind == "drop" and m.reason == "send" for m in got) == stats.drops["send"]


def test_run_frees_the_slot_of_a_live_frame_the_display_did_not_take(tmp_path, monkeypatch):
    """Issue 11 case 4: a live frame the display could not take held its shared-memory slot until
    capture took it back 10 s later (nothing downstream would ever release it)."""
    monkeypatch.setattr(stage, "Rings", partial(shm.Rings, directory=tmp_path))
    ring = shm.Ring(2, 8 * 8 * 3, directory=tmp_path)
    ctx = zmq.Context()
    tag = time.monotonic_ns()
    inner, feed = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    inner.bind(f"inproc://in-{tag}")
    feed.connect(f"inproc://in-{tag}")
    down = ctx.socket(zmq.PUSH)
    down.setsockopt(zmq.SNDHWM, 1)
    down.setsockopt(zmq.IMMEDIATE, 1)
    down.connect("tcp://127.0.0.1:1")  # no display: a live frame cannot be sent
    stop, stats = threading.Event(), Stats(LOG, 60.0)
    t = threading.Thread(target=run, args=(Config(), inner, down, FlakyModel(), stop, stats, LOG))
    t.start()
    try:
        ref = ring.put(np.zeros((8, 8, 3), np.uint8))
        assert ref is not None
        m = msg(0, live=True)
        m.pixels = ref
        feed.send_multipart(encode(m))
        deadline = time.monotonic() + 3.0
        while ring.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ring.busy() == 0 and stats.drops["send"] == 1, dict(stats.drops)
    finally:
        stop.set()
        t.join(2)
        for s in (inner, feed, down):
            s.close(linger=0)
        ctx.term()
        ring.close()
