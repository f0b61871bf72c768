"""capture.sources on tiny files the tests write themselves."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from bus.config import SourceConfig
from capture.sources import LiveCapture, Source, SourceError, Unreadable, kind, open_source


def write_video(path: Path, n: int, size: tuple[int, int] = (32, 24), fps: float = 15.0) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), i * 10 % 256, np.uint8))
    w.release()
    return path


def read_all(src: Source, limit: int = 1000) -> tuple[list[np.ndarray], list[str]]:
    frames: list[np.ndarray] = []
    skipped: list[str] = []
    while not src.ended and len(frames) + len(skipped) < limit:
        try:
            got = src.read(0.1)
        except Unreadable as e:
            skipped.append(str(e))
            continue
        if got is not None:
            frames.append(got[0])
    return frames, skipped


def mixed_folder(root: Path) -> Path:
    """A folder of every awkward kind of file, in a name order that needs natural sorting."""
    root.mkdir()
    cv2.imwrite(str(root / "img1.png"), np.full((8, 10, 3), 50, np.uint8))
    cv2.imwrite(str(root / "img2_grey.png"), np.full((8, 10), 200, np.uint8))
    cv2.imwrite(str(root / "img3_16bit.png"), np.full((8, 10, 3), 65535, np.uint16))
    cv2.imwrite(str(root / "img4_bgra.png"), np.full((8, 10, 4), 90, np.uint8))
    cv2.imwrite(str(root / "img10_1x1.png"), np.zeros((1, 1, 3), np.uint8))
    (root / "img5_empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def test_folder_reads_every_layout_as_bgr8_and_skips_the_rest(tmp_path: Path) -> None:
    src = open_source(SourceConfig(uri=str(mixed_folder(tmp_path / "f")), id="f"))
    assert not src.live and src.fps == 30.0
    frames, skipped = read_all(src)
    assert [f.shape for f in frames] == [(8, 10, 3)] * 4 + [(1, 1, 3)]  # img10 after img4: natural order
    assert all(f.dtype == np.uint8 and f.flags.c_contiguous for f in frames)
    assert frames[1][0, 0].tolist() == [200, 200, 200]  # grey -> BGR
    assert frames[2][0, 0].tolist() == [255, 255, 255]  # 16-bit -> 8-bit
    assert len(skipped) == 2 and "img5_empty.png" in skipped[0] and "notes.txt" in skipped[1]
    assert src.read(0.1) is None and src.ended


def test_folder_loops_and_takes_fps_from_config(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((4, 4, 3), i, np.uint8))
    src = open_source(SourceConfig(uri=str(folder), id="f", loop=True, fps=7.0))
    assert src.fps == 7.0
    got = [src.read(0.1) for _ in range(5)]
    assert [int(g[0][0, 0, 0]) for g in got if g is not None] == [0, 1, 0, 1, 0]
    assert not src.ended


def test_single_image_is_a_folder_of_one(tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), np.full((6, 5, 4), 9, np.uint8))
    src = open_source(SourceConfig(uri=str(path), id="i"))
    frames, skipped = read_all(src)
    assert [f.shape for f in frames] == [(6, 5, 3)] and not skipped


def test_video_file_reads_all_frames_with_its_fps(tmp_path: Path) -> None:
    src = open_source(SourceConfig(uri=str(write_video(tmp_path / "v.avi", 6)), id="v"))
    assert not src.live and src.fps == pytest.approx(15.0)
    frames, _ = read_all(src)
    assert len(frames) == 6 and frames[0].shape == (24, 32, 3)
    src.close()


def test_video_file_loops(tmp_path: Path) -> None:
    src = open_source(SourceConfig(uri=str(write_video(tmp_path / "v.avi", 3)), id="v", loop=True))
    frames, _ = read_all(src, limit=8)
    assert len(frames) == 8 and not src.ended
    src.close()


def test_fps_override(tmp_path: Path) -> None:
    src = open_source(SourceConfig(uri=str(write_video(tmp_path / "v.avi", 2)), id="v", fps=5.0))
    assert src.fps == 5.0
    src.close()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.mp4", None, "no such file"),
        ("missing.png", None, "no such file"),
        ("junk.mp4", b"\x00junk" * 100, "junk.mp4"),
        ("empty.mkv", b"", "empty.mkv"),
        ("bad.png", b"nope", "cannot read image"),
        ("empty_folder", {}, "has no images"),
        ("text_folder", {"a.txt": b"x", "b.png": b""}, "has no images"),
    ],
)
def test_unopenable_files_raise_one_clear_error(
    tmp_path: Path, name: str, content: bytes | dict[str, bytes] | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, dict):
        path.mkdir()
        for child, data in content.items():
            (path / child).write_bytes(data)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        open_source(SourceConfig(uri=str(path), id="x"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [("97", "cannot open camera 97"), ("rtsp://127.0.0.1:1/none", "cannot open stream")],
)
def test_unopenable_devices_raise_one_clear_error(uri: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        open_source(SourceConfig(uri=uri, id="x"))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("0", "camera"),
        ("12", "camera"),
        ("rtsp://cam.local/stream", "stream"),
        ("HTTP://host/video.mjpg", "stream"),
        ("https://host/x.m3u8", "stream"),
        ("clip.mp4", "video"),
        ("anim.gif", "video"),
        ("photo.JPG", "image"),
        ("scan.tiff", "image"),
    ],
)
def test_kind(uri: str, expected: str) -> None:
    assert kind(uri) == expected


def test_kind_of_a_folder(tmp_path: Path) -> None:
    assert kind(str(tmp_path)) == "folder"


class FakeCapture:
    """A camera that makes frames faster than anyone reads them, then fails after ``n``."""

    def __init__(self, n: int):
        self.n, self.i, self.released = n, 0, False

    def get(self, prop: int) -> float:
        return 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(0.002)
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, np.full((2, 2), self.i % 256, np.uint16) << 8  # 16-bit grey, numbered

    def release(self) -> None:
        self.released = True


def test_live_capture_hands_out_only_the_newest_frame_and_ends_when_the_device_stops() -> None:
    cap = FakeCapture(n=60)
    src = LiveCapture(SourceConfig(uri="0", id="cam"), cap)  # type: ignore[arg-type]
    assert src.live and src.fps == 30.0
    seen = []
    deadline = time.monotonic() + 5
    while not src.ended and time.monotonic() < deadline:
        got = src.read(0.2)
        if got is not None:
            seen.append(int(got[0][0, 0, 0]))
            assert got[0].shape == (2, 2, 3) and got[0].dtype == np.uint8
            time.sleep(0.02)  # a slow consumer
    assert src.ended
    assert seen == sorted(set(seen)), "a frame was handed out twice or out of order"
    assert len(seen) < 60, "a slow consumer must skip frames, not queue them"
    src.close()
    assert cap.released


def test_live_capture_read_times_out_without_a_new_frame() -> None:
    class Stalled(FakeCapture):
        def read(self) -> tuple[bool, np.ndarray | None]:
            stop.wait(1.0)
            return False, None

    stop = threading.Event()
    src = LiveCapture(SourceConfig(uri="0", id="cam"), Stalled(0))  # type: ignore[arg-type]
    t0 = time.monotonic()
    assert src.read(0.1) is None and not src.ended
    assert time.monotonic() - t0 < 0.5
    stop.set()
    src.close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http_stream_is_live_and_reopened_when_the_server_stops_sending(tmp_path: Path) -> None:
    """A live stream never ends by itself (only files end a run): when the server stops sending, the
    stream is reopened after [capture] reconnect_s and its frames flow again."""
    write_video(tmp_path / "v.avi", 20)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/v.avi"
        src = open_source(SourceConfig(uri=uri, id="web"), (0.2, 1.0))
        assert isinstance(src, LiveCapture)
        frames, _ = read_all(src, limit=30)  # more than the 20 the server has: only after reopening
        src.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == 30 and frames[0].shape == (24, 32, 3)
    assert not src.ended and src.reconnects >= 1
