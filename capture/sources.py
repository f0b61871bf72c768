"""Frame sources: a camera index, a video file, a stream URL, a folder of images or one image.

Consumes a :class:`bus.config.SourceConfig`; produces uint8 BGR frames (any depth or layout the
file has -- 16-bit, grey, BGRA -- goes through :func:`bus.preprocess.to_uint8_bgr`) with the wall
time each was captured. :func:`open_source` raises :class:`SourceError` with one clear line when the
source cannot be opened, so the stage can exit 2 at start-up.

Live sources (cameras, streams) are read by a grab thread that keeps only the newest frame, so a
slow pipeline never sees stale frames; files and folders are read on demand (pacing is the
worker's job, with ``fps``). A live source never ends by itself: when it stops delivering frames
(a stream that stalls past its read timeout, a camera unplugged) it is reopened with exponential
backoff (``[capture] reconnect_s`` doubling up to ``reconnect_max_s``), every try logged. Only
files and folders end, so only they make capture send an end-of-stream.

``skip(n)`` passes over the first ``n`` frames of a file or folder (a capture restarted within a
run resumes where it was, :class:`capture.worker.Progress`); live sources skip nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from bus.config import SourceConfig
from bus.media import is_image_name
from bus.preprocess import to_uint8_bgr

log = logging.getLogger("capture")

DEFAULT_FPS = 30.0
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
OPEN_TIMEOUT_MS = 5000  # streams: give up connecting / reading after this long
FAILED_READS = 3  # a live source that fails this many reads in a row is reopened


class SourceError(RuntimeError):
    """A source that cannot be opened (start-up failure: one line, exit 2)."""


class Unreadable(Exception):
    """One item of a source could not be read (logged, counted and skipped)."""


Frame = tuple[np.ndarray, float]  # uint8 BGR image, capture wall time


class Source(Protocol):
    id: str
    uri: str
    live: bool
    fps: float
    ended: bool

    def read(self, timeout: float) -> Frame | None:
        """The next frame, or None (nothing new within ``timeout``, or ``ended``). Raises Unreadable."""
        ...

    def skip(self, n: int) -> int:
        """Pass over the next ``n`` frames (files and folders; live sources: 0). Returns how many."""
        ...

    def close(self) -> None: ...


def _bgr(raw: np.ndarray, what: str) -> np.ndarray:
    try:
        return to_uint8_bgr(raw)
    except ValueError as e:
        raise Unreadable(f"{what}: {e}") from None


def _fps(value: float, override: float) -> float:
    if override > 0:
        return override
    return value if math.isfinite(value) and 0 < value <= 1000 else DEFAULT_FPS


DECODE_THREADS = 1  # FFmpeg's frame threads: on 2 cores 0.77 ms CPU per 640x480 H.264 frame vs 1.59 with its default


def open_video(uri: str) -> cv2.VideoCapture:
    """cv2.VideoCapture for a file with :data:`DECODE_THREADS` decoder threads (the pipeline runs its
    stages in parallel; FFmpeg's own threads cost more CPU than they save here)."""
    return cv2.VideoCapture(uri, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, DECODE_THREADS])


class VideoFile:
    """A video file (anything cv2.VideoCapture opens: mp4, mkv, avi, gif, ...)."""

    live = False

    def __init__(self, cfg: SourceConfig):
        self.id, self.uri, self.loop = cfg.id, cfg.uri, cfg.loop
        self.ended = False
        if not Path(cfg.uri).is_file():
            raise SourceError(f"no such file: {cfg.uri}")
        self.cap = self._open()
        self.fps = _fps(self.cap.get(cv2.CAP_PROP_FPS), cfg.fps)
        ok, first = self.cap.read()
        if not ok or first is None:
            self.cap.release()
            raise SourceError(f"no frames could be read from {cfg.uri}")
        self.pending: np.ndarray | None = first

    def _open(self) -> cv2.VideoCapture:
        cap = open_video(self.uri)
        cap.setExceptionMode(False)
        if not cap.isOpened():
            raise SourceError(f"cannot open video file {self.uri}")
        return cap

    def read(self, timeout: float) -> Frame | None:
        if self.ended:
            return None
        raw, self.pending = self.pending, None
        if raw is None:
            ok, raw = self.cap.read()
            if not ok and self.loop:
                self.cap.release()
                self.cap = self._open()
                ok, raw = self.cap.read()
            if not ok or raw is None:
                self.ended = True
                return None
        return _bgr(raw, self.uri), time.time()

    def skip(self, n: int) -> int:
        # decoded and passed over, not seeked: CAP_PROP_POS_FRAMES lands near, not on, the frame in
        # files with B-frames, and resuming must neither repeat nor miss one
        if self.loop:  # a looped file restarts anyway: only its place in the loop matters, not n decodes
            count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
            n = n % count if count > 0 else 0
        done = 0
        if n > 0 and self.pending is not None:
            self.pending, done = None, 1
        while done < n and not self.ended:
            ok = self.cap.grab()
            if not ok and self.loop:
                self.cap.release()
                self.cap = self._open()
                ok = self.cap.grab()
            if not ok:
                self.ended = True
                break
            done += 1
        return done

    def close(self) -> None:
        self.cap.release()


def _natural(path: Path) -> list[int | str]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


class ImageFolder:
    """The files of a folder in natural sort order (or one image file: a folder of one)."""

    live = False

    def __init__(self, cfg: SourceConfig, files: list[Path] | None = None):
        self.id, self.uri, self.loop = cfg.id, cfg.uri, cfg.loop
        self.ended = False
        self.fps = _fps(0.0, cfg.fps)
        if files is None:
            folder = Path(cfg.uri)
            files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural)
        if not any(cv2.haveImageReader(str(p)) for p in files):  # reads file signatures only
            raise SourceError(f"folder {cfg.uri} has no images")
        self.files = files
        self.index = 0
        self.last_path: str | None = None  # the file of the frame read last (each frame's ``path`` header)

    def read(self, timeout: float) -> Frame | None:
        if self.index >= len(self.files):
            if not self.loop:
                self.ended = True
                return None
            self.index = 0
        path = self.files[self.index]
        self.index += 1
        self.last_path = str(path)
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise Unreadable(f"{path}: not a readable image")
        return _bgr(raw, str(path)), time.time()

    def skip(self, n: int) -> int:
        total = len(self.files)
        done = n if self.loop else min(n, total - self.index)
        self.index = (self.index + done) % total if self.loop else self.index + done
        return done

    def close(self) -> None:
        pass


class LiveCapture:
    """A camera or stream read by a grab thread that keeps only the newest frame."""

    live = True

    def __init__(
        self,
        cfg: SourceConfig,
        cap: cv2.VideoCapture,
        reopen: Callable[[], cv2.VideoCapture] | None = None,
        reconnect_s: float = 1.0,
        reconnect_max_s: float = 30.0,
    ):
        self.id, self.uri = cfg.id, cfg.uri
        self.cap = cap
        self.reopen, self.reconnect_s, self.reconnect_max_s = reopen, reconnect_s, reconnect_max_s
        self.reconnects = 0  # successful reopenings
        self._backoff = reconnect_s  # doubles per reopening that delivered no frame
        self.fps = _fps(cap.get(cv2.CAP_PROP_FPS), cfg.fps)
        self.ended = False
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float] | None = None
        self._fresh = False
        self._grab_done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab, name=f"grab-{cfg.id}", daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        failures = 0
        while not self._stop.is_set():
            ok, raw = self.cap.read()
            if not ok or raw is None:
                failures += 1
                if failures >= FAILED_READS:  # the device or stream is gone, or stalled past its timeout
                    if self.reopen is None or not self._reconnect():
                        break
                    failures = 0
                    continue
                self._stop.wait(0.05)
                continue
            failures, self._backoff = 0, self.reconnect_s
            with self._cond:
                self._latest, self._fresh = (raw, time.time()), True
                self._cond.notify_all()
        with self._cond:
            self._grab_done = True
            self._cond.notify_all()

    def _reconnect(self) -> bool:
        """Reopen with exponential backoff until it works (True) or the source is closed (False)."""
        assert self.reopen is not None
        t0 = time.monotonic()
        self.cap.release()
        while True:
            delay = self._backoff
            self._backoff = min(2.0 * delay, self.reconnect_max_s)
            log.warning("source %s: %s stopped delivering frames; reopening in %.1f s", self.id, self.uri, delay)
            if self._stop.wait(delay):
                return False
            try:
                cap = self.reopen()
            except SourceError as e:
                log.warning("source %s: reopening failed: %s", self.id, e)
                continue
            self.cap = cap
            self.reconnects += 1
            log.info("source %s: reopened after %.1f s", self.id, time.monotonic() - t0)
            return True

    def skip(self, n: int) -> int:
        return 0  # a live source cannot be replayed

    def read(self, timeout: float) -> Frame | None:
        with self._cond:
            if not self._fresh and not self._grab_done:
                self._cond.wait(timeout)
            if not self._fresh:
                self.ended = self._grab_done
                return None
            assert self._latest is not None
            (raw, ts), self._fresh = self._latest, False
        return _bgr(raw, self.uri), ts

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():  # never release a capture another thread is still reading
            self.cap.release()


def _open_camera(cfg: SourceConfig) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(int(cfg.uri))
    if not cap.isOpened():
        raise SourceError(f"cannot open camera {cfg.uri}")
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver queue would hand out old frames first
    if cfg.width:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
    if cfg.height:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
    return cap


def _open_stream(cfg: SourceConfig) -> cv2.VideoCapture:
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, OPEN_TIMEOUT_MS]
    cap = cv2.VideoCapture(cfg.uri, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        raise SourceError(f"cannot open stream {cfg.uri}")
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


def _live(cfg: SourceConfig, opener: Callable[[SourceConfig], cv2.VideoCapture], reconnect: Reconnect) -> LiveCapture:
    def reopen() -> cv2.VideoCapture:
        with _quiet_opencv():
            return opener(cfg)

    return LiveCapture(cfg, opener(cfg), reopen, *reconnect)


def kind(uri: str) -> str:
    """'camera' | 'stream' | 'folder' | 'image' | 'video' (by the look of the URI)."""
    if uri.isdigit():
        return "camera"
    if uri.lower().startswith(STREAM_SCHEMES):
        return "stream"
    path = Path(uri)
    if path.is_dir():
        return "folder"
    return "image" if is_image_name(path.name) else "video"


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV logs its own lines while probing backends; the failure is reported once, by us."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


Reconnect = tuple[float, float]  # live sources: first wait before reopening, longest wait (seconds)


def open_source(cfg: SourceConfig, reconnect: Reconnect = (1.0, 30.0)) -> Source:
    """Open ``cfg`` or raise :class:`SourceError` (one line saying what and why)."""
    with _quiet_opencv():
        return _open(cfg, reconnect)


def _open(cfg: SourceConfig, reconnect: Reconnect) -> Source:
    k = kind(cfg.uri)
    if k == "camera":
        return _live(cfg, _open_camera, reconnect)
    if k == "stream":
        return _live(cfg, _open_stream, reconnect)
    if k == "folder":
        return ImageFolder(cfg)
    if k == "image":
        path = Path(cfg.uri)
        if not path.is_file():
            raise SourceError(f"no such file: {cfg.uri}")
        if cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is None:
            raise SourceError(f"cannot read image {cfg.uri}")
        return ImageFolder(cfg, files=[path])
    return VideoFile(cfg)
