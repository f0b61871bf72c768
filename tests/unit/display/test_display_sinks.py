from __future__ import annotations

import logging
import socket
import threading
import time

import cv2
import msgspec
import numpy as np
import pytest

from bus.codec import Frame
from bus.config import Config, SourceConfig, validate
from display.sinks import PLAYABLE, VIDEO_QUEUE, EventsSink, VideoSink, WindowSink, choose_codec, open_sinks
from display.web import WebSink

LOG = logging.getLogger("test.sinks")


def config(tmp_path, n_sources=1, **display) -> Config:
    cfg = Config()
    sources = tuple(SourceConfig(uri=f"v{i}.mp4", id=f"cam{i}", fps=12.0 if i == 0 else 0.0) for i in range(n_sources))
    return validate(
        msgspec.structs.replace(
            cfg,
            capture=msgspec.structs.replace(cfg.capture, sources=sources),
            display=msgspec.structs.replace(cfg.display, **display),
        )
    )


def write_frames(sink, src, n, size=(64, 48)):
    for i in range(n):
        img = np.full((size[1], size[0], 3), (i * 20) % 256, np.uint8)
        sink.write(Frame(src=src, seq=i, ts=0.0), img, {})


def test_video_sink_writes_a_readable_video_opened_lazily(tmp_path):
    sink = VideoSink(tmp_path / "out" / "annotated.mp4", config(tmp_path), LOG)
    path = sink.path  # .webm where this OpenCV has no H.264 encoder
    assert not path.exists()
    write_frames(sink, "cam0", 3)
    sink.write(Frame(src="cam0", seq=3, ts=0.0), np.zeros((96, 128, 3), np.uint8), {})  # resized to fit
    sink.write(Frame(src="cam0", seq=4, ts=0.0), None, {})  # no image: skipped
    sink.close()
    assert sink.written == [path]
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    cap.release()


def test_video_sink_writes_one_file_per_source(tmp_path):
    path = tmp_path / "annotated.mp4"
    sink = VideoSink(path, config(tmp_path, n_sources=2), LOG)
    write_frames(sink, "cam0", 2)
    write_frames(sink, "cam1", 2)
    sink.close()
    ext = sink.path.suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"annotated-cam0{ext}", f"annotated-cam1{ext}"]
    cap = cv2.VideoCapture(str(tmp_path / f"annotated-cam1{ext}"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    cap.release()


def test_window_is_disabled_without_a_screen(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with caplog.at_level(logging.WARNING, logger="test.sinks"):
        sinks = open_sinks(config(tmp_path, window=True), threading.Event(), LOG)
    assert not any(isinstance(s, WindowSink) for s in sinks)
    assert "no screen" in caplog.text


def test_window_sink_disables_itself_when_opencv_cannot_show(monkeypatch, caplog):
    def broken(*_args):
        raise cv2.error("The function is not implemented\nno GUI backend")

    monkeypatch.setattr(cv2, "imshow", broken)
    sink = WindowSink(threading.Event(), LOG)
    with caplog.at_level(logging.WARNING, logger="test.sinks"):
        write_frames(sink, "cam0", 3)
    assert not sink.enabled
    assert caplog.text.count("window sink disabled") == 1


def test_open_sinks_builds_what_is_asked(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(tmp_path, web=f"127.0.0.1:{port}", video=str(tmp_path / "v.mp4"), events=str(tmp_path / "e.jsonl"))
    sinks = open_sinks(cfg, threading.Event(), LOG)
    try:
        assert [type(s) for s in sinks] == [WebSink, VideoSink, EventsSink]
    finally:
        for s in sinks:
            s.close()


def test_open_sinks_fails_with_oserror_when_the_port_is_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cfg = config(tmp_path, web=f"127.0.0.1:{s.getsockname()[1]}", events=str(tmp_path / "e.jsonl"))
        with pytest.raises(OSError):
            open_sinks(cfg, threading.Event(), LOG)


def test_the_video_codec_is_one_a_browser_plays(tmp_path):
    """H.264 (avc1) when this OpenCV encodes it, else VP8/VP9 in WebM: never mp4v when either works."""
    fourcc, ext, playable = choose_codec(".mp4")
    assert playable and (fourcc, ext) in PLAYABLE
    assert choose_codec(".webm")[1] == ".webm" or fourcc == "avc1"


def test_live_frames_never_wait_for_a_slow_encoder(tmp_path, monkeypatch):
    sink = VideoSink(tmp_path / "a.mp4", config(tmp_path), LOG)
    gate = threading.Event()
    monkeypatch.setattr(sink, "_frame", lambda src, image: gate.wait(10))  # the encoder is stuck
    t0 = time.monotonic()
    for i in range(VIDEO_QUEUE + 50):
        sink.write(Frame(src="cam0", seq=i, ts=0.0, live=True), np.zeros((8, 8, 3), np.uint8), {})
    assert time.monotonic() - t0 < 1.0
    assert sink.dropped >= 49
    gate.set()
    sink.close()


def test_forget_closes_a_video_after_its_queued_frames(tmp_path):
    """forget() runs in the encoder thread, in order: the frames queued before it are in the file."""
    sink = VideoSink(tmp_path / "a.mp4", config(tmp_path), LOG)
    write_frames(sink, "cam0", 5)
    sink.forget("cam0")
    sink.close()
    cap = cv2.VideoCapture(str(sink.path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5 and sink.writers == {}
