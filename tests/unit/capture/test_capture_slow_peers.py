"""A live source never waits for its detector: with the detector absent, or present but not reading
(hung), capture's pump keeps reading at the source's pace and drops (and counts) what cannot go,
over real PUSH sockets on loopback (``bus.sockets.push``: IMMEDIATE, small HWM)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import zmq

from bus import sockets
from bus.runtime import Stats
from capture.worker import _Shared, pump, socket_sender
from emostream.launch import free_port

pytestmark = pytest.mark.timeout(60)
FRAMES = 120


@dataclass
class Camera:
    """A live source of VGA frames that ends after ``n`` (as an unplugged camera would)."""

    n: int
    id: str = "cam"
    uri: str = "0"
    live: bool = True
    fps: float = 30.0
    ended: bool = False
    pos: int = 0

    def read(self, timeout: float) -> tuple[np.ndarray, float] | None:
        if self.pos >= self.n:
            self.ended = True
            return None
        self.pos += 1
        return np.full((480, 640, 3), self.pos % 256, np.uint8), time.time()

    def close(self) -> None:
        pass


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.mark.parametrize("peer", ["absent", "hung"])
def test_live_capture_is_never_stalled_by_its_detector(ctx: zmq.Context, peer: str) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    hung = None
    if peer == "hung":  # bound and connected, never reads: its queue and the TCP buffers fill up
        hung = ctx.socket(zmq.PULL)
        hung.setsockopt(zmq.RCVHWM, 4)
        hung.linger = 0
        hung.bind(ep)
    push = sockets.push(ctx, [ep], hwm=4, send_timeout_ms=1000)
    if hung is not None:  # IMMEDIATE: writable only once the connection is up; a live source does not wait for it
        assert push.poll(10_000, zmq.POLLOUT), "the hung peer never accepted the connection"
    shared = _Shared(Stats(logging.getLogger("test"), 60.0))
    t0 = time.monotonic()
    frames, dropped = pump(Camera(FRAMES), socket_sender(push, 0), threading.Event(), shared, True, peer_wait_s=0.5)
    elapsed = time.monotonic() - t0
    # a live source is read as fast as it delivers (no pacing, no blocking sends): far below 1 s per frame
    assert frames == FRAMES and elapsed < 10.0, elapsed
    assert dropped == shared.stats.drops["send"]
    print(f"{peer}: {frames} frames read in {elapsed:.2f} s, {dropped} dropped")
    if peer == "absent":
        assert dropped == FRAMES  # IMMEDIATE: nothing is queued for a peer that is not there
    else:
        # bounded: the hung peer took its HWM plus what the socket buffers hold, the rest was dropped
        assert 0 < FRAMES - dropped <= 40
    push.close(0)
    if hung is not None:
        hung.close(0)
