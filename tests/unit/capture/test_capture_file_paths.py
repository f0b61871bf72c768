"""Folder and image sources name each frame's file: the ``path`` header travels capture -> detector ->
classifier -> display and lands in the events record."""

from __future__ import annotations

from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest

from bus.codec import CodecError, Face, Frame, decode, encode
from bus.config import SourceConfig
from bus.sidecar import ModelSpec
from capture.sources import Unreadable, open_source
from capture.worker import frame_message
from detector.worker import step as detect_step
from display.worker import event


def test_path_header_round_trips_and_is_checked() -> None:
    msg = Frame(src="s", seq=0, ts=1.0, path="/data/a b.png", pixels=np.zeros((2, 2, 3), np.uint8))
    assert decode(encode(msg)).path == "/data/a b.png"
    assert decode(encode(Frame(src="s", seq=0, ts=1.0))).path is None
    parts = encode(msg)
    header = msgpack.unpackb(parts[0])
    header["path"] = 7
    with pytest.raises(CodecError, match="path"):
        decode([msgpack.packb(header), *parts[1:]])


def test_folder_frames_carry_their_file(tmp_path: Path) -> None:
    for name in ("img10.png", "img2.png"):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), 100, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    src = open_source(SourceConfig(uri=str(tmp_path), id="f", realtime=False))
    seen = []
    for seq in range(3):
        try:
            got = src.read(0.0)
        except Unreadable:
            seen.append(None)  # the text file: unreadable, skipped by the worker
            continue
        assert got is not None
        seen.append(frame_message(src, seq, got[0], got[1]).path)
    assert seen == [str(tmp_path / "img2.png"), str(tmp_path / "img10.png"), None]


def test_video_frames_have_no_path() -> None:
    class Video:
        id, live = "v", False

    assert frame_message(Video(), 0, np.zeros((2, 2, 3), np.uint8), 0.0).path is None  # type: ignore[arg-type]


class OneFace:
    excess = 0

    def detect(self, bgr: np.ndarray) -> list[Face]:
        return [Face((1.0, 1.0, 4.0, 4.0), 0.9)]


def test_detector_forwards_the_path_and_the_display_writes_it() -> None:
    spec = ModelSpec(name="m", labels=("a", "b"), size=8, colour="grey")
    msg = Frame(src="f", seq=0, ts=1.0, path="x/img2.png", pixels=np.zeros((10, 10, 3), np.uint8))
    out = detect_step(msg, OneFace(), spec)
    assert out.kind == "frame" and out.path == "x/img2.png"
    out.faces[0].label, out.faces[0].probs, out.labels = "a", [0.7, 0.3], ["a", "b"]
    record = event(out, 1.5)
    assert record["path"] == "x/img2.png" and record["faces"][0]["label"] == "a"
    assert "path" not in event(Frame(src="v", seq=0, ts=1.0), 1.5)
