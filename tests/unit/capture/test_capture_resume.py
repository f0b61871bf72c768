"""A capture restarted within one run (after a crash or kill -9) goes on after the last frame its
predecessor read: no frame reaches the display twice, the eos counts the whole run."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from bus.codec import Message
from bus.config import SourceConfig
from bus.runtime import Stats
from capture.sources import open_source
from capture.worker import Progress, _Shared, pump

log = logging.getLogger("test")


def write_video(path: Path, n: int) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 15.0, (32, 24))
    for i in range(n):
        w.write(np.full((24, 32, 3), i * 10, np.uint8))
    w.release()
    return path


class Killed(Exception):
    """Stands for SIGKILL: nothing after it runs (no eos, no clean-up)."""


class Sender:
    def __init__(self, die_at: int | None = None, refuse: frozenset[int] = frozenset()):
        self.die_at, self.refuse = die_at, refuse
        self.sent: list[Message] = []

    def __call__(self, msg: Message, block: bool) -> bool:
        if msg.kind == "frame" and msg.seq == self.die_at:
            raise Killed
        if msg.kind == "frame" and msg.seq in self.refuse:
            return False
        self.sent.append(msg)
        return True


def level(msg: Message) -> int:
    assert msg.image is not None
    return int(np.median(msg.image))


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_a_restarted_capture_goes_on_after_its_last_frame(tmp_path: Path, kind: str) -> None:
    if kind == "video":
        uri = str(write_video(tmp_path / "v.avi", 10))
    else:
        (tmp_path / "f").mkdir()
        for i in range(10):
            cv2.imwrite(str(tmp_path / "f" / f"{i}.png"), np.full((24, 32, 3), i * 10, np.uint8))
        uri = str(tmp_path / "f")
    cfg = SourceConfig(uri=uri, id="v")

    def capture(send: Sender) -> tuple[int, int]:
        src = open_source(cfg)
        progress = Progress("run1", "v", uri, base=tmp_path)
        try:
            return pump(src, send, threading.Event(), _Shared(Stats(log, 60)), False, 0, progress=progress)
        finally:
            src.close()

    first = Sender(die_at=6, refuse=frozenset({2}))  # frame 2 dropped (counted), killed sending frame 6
    with pytest.raises(Killed):
        capture(first)
    second = Sender()
    assert capture(second) == (10, 1)
    seqs = [m.seq for m in first.sent + second.sent if m.kind == "frame"]
    assert seqs == [0, 1, 3, 4, 5, 7, 8, 9], "frame 6 was in flight (lost, never repeated); 2 was dropped"
    assert all(abs(level(m) - m.seq * 10) <= 3 for m in first.sent + second.sent if m.kind == "frame"), (
        "the restarted capture sent other pictures under these seqs"
    )
    (eos,) = [m for m in second.sent if m.kind == "eos"]
    assert (eos.frames, eos.dropped) == (10, 1)  # the whole run: read 10 = 8 sent + 1 dropped + 1 in flight


def test_without_a_run_id_nothing_is_kept(tmp_path: Path) -> None:
    p = Progress("", "v", "x.mp4", base=tmp_path)
    p.save(5, 1)
    assert Progress("", "v", "x.mp4", base=tmp_path).frames == 0
    assert not (tmp_path / "progress").exists()


def test_progress_is_per_run_and_source_and_forgotten_at_a_clean_exit(tmp_path: Path) -> None:
    p = Progress("run1", "v", "x.mp4", base=tmp_path)
    p.save(5, 1)
    assert (
        Progress("run1", "v", "x.mp4", base=tmp_path).frames,
        Progress("run1", "v", "x.mp4", base=tmp_path).dropped,
    ) == (5, 1)
    assert Progress("run2", "v", "x.mp4", base=tmp_path).frames == 0
    assert Progress("run1", "w", "x.mp4", base=tmp_path).frames == 0
    assert Progress("run1", "v", "y.mp4", base=tmp_path).frames == 0
    p.close(done=True)
    assert Progress("run1", "v", "x.mp4", base=tmp_path).frames == 0
    modes = {f.stat().st_mode & 0o777 for f in (tmp_path / "progress").iterdir()}
    assert modes == {0o600} and (tmp_path / "progress").stat().st_mode & 0o777 == 0o700
