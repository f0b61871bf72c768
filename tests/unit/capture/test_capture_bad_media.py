"""Bad media that opens: a truncated or partly corrupt video plays what it can and ends (no
exception but Unreadable), and frames of every size up to 8K travel from capture's sender over a
real socket; a frame beyond the codec's MAX_SIDE is refused at the sender and counted, not sent.
(Media that cannot be opened at all -- missing, junk, empty, folders without images -- is in
test_capture_sources.py; the stage's exit 2 in tests/integration/test_bad_inputs.py.)"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from bus import sockets
from bus.codec import MAX_SIDE, decode
from bus.config import SourceConfig
from bus.runtime import Stats
from capture.sources import SourceError, Unreadable, open_source
from capture.worker import _Shared, pump, socket_sender


def video(path: Path, n: int = 30) -> bytes:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 15.0, (64, 48))
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((48, 64, 3), i * 8 % 256, np.uint8))
    w.release()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "zeroed_middle", "random_middle"])
def test_a_damaged_video_plays_what_it_can_then_ends(tmp_path: Path, damage: str) -> None:
    data = bytearray(video(tmp_path / "v.avi"))
    third = len(data) // 3
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "zeroed_middle":
        data[third : third + 2000] = bytes(2000)
    else:
        data[third : third + 2000] = np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
    (tmp_path / "bad.avi").write_bytes(bytes(data))
    try:
        src = open_source(SourceConfig(uri=str(tmp_path / "bad.avi"), id="v"))
    except SourceError:
        return  # refusing it at start-up, with one line, is fine too
    frames = 0
    for _ in range(200):
        try:
            if src.read(0.1) is not None:
                frames += 1
        except Unreadable:
            continue
        if src.ended:
            break
    src.close()
    assert src.ended and 0 < frames <= 30


@pytest.fixture
def link() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = sockets.push(ctx, [f"tcp://127.0.0.1:{port}"], 4, 5000)
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


@dataclass
class Frames:
    """A file source playing the given images."""

    images: list[np.ndarray]
    id: str = "f"
    uri: str = "f"
    live: bool = False
    fps: float = 1000.0
    ended: bool = False
    pos: int = field(default=0)

    def read(self, timeout: float) -> tuple[np.ndarray, float] | None:
        if self.pos >= len(self.images):
            self.ended = True
            return None
        self.pos += 1
        return self.images[self.pos - 1], time.time()

    def close(self) -> None:
        pass


def test_frames_from_1x1_to_8k_travel_and_oversized_ones_are_counted(link: tuple[zmq.Socket, zmq.Socket]) -> None:
    push, pull = link
    images = [
        np.full((1, 1, 3), 7, np.uint8),
        np.full((4320, 7680, 3), 9, np.uint8),  # 8K UHD
        np.zeros((100, MAX_SIDE + 1, 3), np.uint8),  # wider than the codec carries
        np.full((48, 64, 3), 5, np.uint8),
    ]
    shared = _Shared(Stats(logging.getLogger("test"), 60.0))
    got: list = []

    def receive() -> None:
        while len(got) < 4 and pull.poll(10000):
            got.append(decode(pull.recv_multipart(), copy_image=True))

    t = threading.Thread(target=receive)
    t.start()
    assert pump(Frames(images), socket_sender(push, 0), threading.Event(), shared, False) == (4, 1)
    t.join(30)
    assert [m.kind for m in got] == ["frame", "frame", "frame", "eos"]
    assert [m.image.shape for m in got[:3]] == [(1, 1, 3), (4320, 7680, 3), (48, 64, 3)]
    assert [m.seq for m in got[:3]] == [0, 1, 3] and got[3].dropped == 1
    assert int(got[1].image[-1, -1, 0]) == 9 and shared.stats.drops["send"] == 1
