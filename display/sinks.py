"""Display sinks other than the web page: OpenCV window, annotated video file, JSON-lines events.

Each consumes (message, annotated image, events record) per classified frame; ``open_sinks``
builds the combination ``[display]`` asks for. Start-up problems raise ``OSError``; a window
without a screen is disabled with one warning instead.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bus.codec import Frame
from bus.config import Config
from bus.runtime import RateLimited
from bus.sockets import Security
from display.worker import Sink

DEFAULT_FPS = 30.0


class EventsSink:
    """One JSON object per frame, one line each, written through at once (line-buffered: one
    ``write`` per record, so a display killed with SIGKILL loses no record it had written; the
    cost is one system call per frame).

    The file is appended to, never truncated: a display restarted in the middle of a run (by a
    supervisor, after a crash or ``kill -9``) adds to what was written before. A display killed
    while writing can leave a torn last line; on opening, a file that does not end in a newline
    is cut back to its last complete line (the torn record was never whole, and every line stays
    one JSON object), with a warning naming the bytes removed."""

    name = "events"
    wants_image = False

    def __init__(self, path: str | Path, log: logging.Logger | None = None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed by close())
        torn = repair_torn_line(self.file)
        if torn and log is not None:
            log.warning("%s: cut a torn last line of %d bytes (a display was killed while writing)", path, torn)

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None:
        self.file.write(json.dumps(event, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.file.close()


def repair_torn_line(file: Any) -> int:
    """Cut an append-mode regular file back to its last newline; the bytes removed (0 if none)."""
    fd = file.fileno()
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return 0  # /dev/null, a pipe: nothing to repair
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    end = size
    while end > 0:  # read backwards until a newline (a torn line is at most one record long)
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        if end == size and chunk.endswith(b"\n"):
            return 0
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            os.ftruncate(fd, start + nl + 1)
            return size - (start + nl + 1)
        end = start
    os.ftruncate(fd, 0)  # not one complete line
    return size


# Codecs a browser (Chromium) plays, in order of preference, and the container each goes in. The
# OpenCV wheels have no H.264 encoder ("avc1" does not open with opencv-contrib-python 4.14); VP8 in
# WebM encodes 640x480 at 10-31 fps on one core of this 2-core machine (load 11 vs 2), VP9 at 1.3-3
# fps: ``python -m bench.video_codecs`` measures it (docs/events.md#recordings).
PLAYABLE = (("avc1", ".mp4"), ("VP80", ".webm"), ("VP90", ".webm"))
FALLBACK = ("mp4v", ".mp4")  # always there, but no browser plays it
VIDEO_QUEUE = 32  # annotated frames waiting for the encoder; live frames beyond it are dropped (counted)


@functools.cache
def _opens(fourcc: str, suffix: str) -> bool:
    """Whether this OpenCV can encode ``fourcc`` into a ``suffix`` file (a 2-frame probe in a temp dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"probe{suffix}")
        w = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*fourcc), 10.0, (64, 48))
        try:
            if not w.isOpened():
                return False
            for _ in range(2):
                w.write(np.zeros((48, 64, 3), np.uint8))
        finally:
            w.release()
        return Path(path).is_file() and Path(path).stat().st_size > 0


def choose_codec(suffix: str = ".mp4") -> tuple[str, str, bool]:
    """(fourcc, container suffix, playable in a browser): the first of :data:`PLAYABLE` this OpenCV
    encodes (the configured container first), else :data:`FALLBACK`."""
    order = sorted(PLAYABLE, key=lambda c: c[1] != suffix.lower())
    for fourcc, ext in order:
        if _opens(fourcc, ext):
            return fourcc, ext, True
    return (*FALLBACK, False)


class VideoSink:
    """Annotated frames to a video per source that a browser plays (:func:`choose_codec`: H.264 MP4
    when this OpenCV has the encoder, else VP8 WebM, whose suffix then replaces the configured one),
    opened at the first frame's size. Encoding runs in its own thread behind a queue of
    ``VIDEO_QUEUE`` frames: file frames wait for room (the video is complete), live frames are
    dropped when it is full (counted, one warning per 5 s) so a slow encoder never holds the
    pipeline back."""

    name = "video"
    wants_image = True

    def __init__(self, path: str | Path, cfg: Config, log: logging.Logger):
        self.log, self.warn = log, RateLimited(log)
        self.fourcc, suffix, playable = choose_codec(Path(path).suffix or ".mp4")
        self.path = Path(path).with_suffix(suffix)
        if self.path != Path(path):
            log.info("annotated video goes to %s (%s: the encoder here that browsers play)", self.path, self.fourcc)
        if not playable:
            log.warning("no browser-playable video encoder in this OpenCV (H.264, VP8, VP9): writing mp4v")
        self.fps = {s.id: s.fps if s.fps > 0 else DEFAULT_FPS for s in cfg.capture.sources}
        self.single = len(cfg.capture.sources) == 1
        self.writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self.written: list[Path] = []
        self.dropped = 0
        self.error: OSError | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.queue: queue.Queue[tuple[str, np.ndarray | None] | None] = queue.Queue(VIDEO_QUEUE)  # None image: forget
        self.thread = threading.Thread(target=self._encode, name="video", daemon=True)
        self.thread.start()

    def path_for(self, src: str) -> Path:
        """The configured path for a single source; ``name-<src>.<ext>`` for each of several."""
        if self.single and src in self.fps:
            return self.path
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in src)
        return self.path.with_name(f"{self.path.stem}-{safe}{self.path.suffix}")

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        if image is None:
            return
        if not msg.live:
            self.queue.put((msg.src, image))
            return
        try:
            self.queue.put_nowait((msg.src, image))
        except queue.Full:
            self.dropped += 1
            self.warn.warning("video_full", "video encoder behind: live frame %s#%d not recorded", msg.src, msg.seq)

    def _encode(self) -> None:
        while (item := self.queue.get()) is not None:
            src, image = item
            if image is None:
                self._release(src)
            elif self.error is None:
                try:
                    self._frame(src, image)
                except (OSError, cv2.error) as e:
                    self.error = e if isinstance(e, OSError) else OSError(str(e))

    def _frame(self, src: str, image: np.ndarray) -> None:
        if src not in self.writers:
            path, size = self.path_for(src), (image.shape[1], image.shape[0])
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter.fourcc(*self.fourcc), self.fps.get(src, DEFAULT_FPS), size
            )
            if not writer.isOpened():
                raise OSError(f"cannot open video writer for {path}")
            self.log.info("writing %s at %dx%d (%s)", path, *size, self.fourcc)
            self.writers[src] = (writer, size)
            self.written.append(path)
        writer, size = self.writers[src]
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        writer.write(image)

    def forget(self, src: str) -> None:
        """The display evicted ``src``: close its video (a later frame opens it again). Done by the
        encoder thread, after the frames queued before it (releasing here could free the writer
        under a frame being encoded)."""
        self.queue.put((src, None))

    def _release(self, src: str) -> None:
        entry = self.writers.pop(src, None)
        if entry is not None:
            entry[0].release()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        for writer, _ in self.writers.values():
            writer.release()
        self.writers.clear()
        if self.dropped:
            self.log.warning("video: %d live frame(s) not recorded (encoder behind)", self.dropped)


def has_screen() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class WindowSink:
    """One OpenCV window per source; ``q`` or Esc in a window stops the display."""

    name = "window"
    wants_image = True

    def __init__(self, stop: threading.Event, log: logging.Logger):
        self.stop, self.log = stop, log
        self.enabled = True
        self.windows: set[str] = set()

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None:
        if not self.enabled or image is None:
            return
        title = f"emotions: {msg.src}"
        try:
            cv2.imshow(title, image)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:
            self.enabled = False
            self.log.warning("window sink disabled: %s", str(e).strip().splitlines()[-1])
            return
        self.windows.add(title)
        if key in (ord("q"), 27):
            self.log.info("window closed with a key: stopping")
            self.stop.set()

    def close(self) -> None:
        if self.windows:
            cv2.destroyAllWindows()


def open_sinks(cfg: Config, stop: threading.Event, log: logging.Logger, security: Security | None = None) -> list[Sink]:
    """The sinks ``[display]`` asks for (``security``: CURVE for the PUB socket). Raises OSError
    when a file or port cannot be opened."""
    from display.publish import MqttSink, PubSink
    from display.web import WebSink  # the web server pulls in http.server only when used

    d = cfg.display
    sinks: list[Sink] = []
    try:
        if d.window:
            if has_screen():
                sinks.append(WindowSink(stop, log))
            else:
                log.warning("[display] window = true but there is no screen (DISPLAY unset): window disabled")
        if d.web:
            sinks.append(WebSink(d.web, log))
        if d.video:
            sinks.append(VideoSink(d.video, cfg, log))
        if d.events:
            sinks.append(EventsSink(d.events, log=log))
        if d.publish:
            sinks.append(PubSink(d.publish, log, security))
        if d.mqtt:
            sinks.append(MqttSink(d.mqtt, d.mqtt_prefix, d.mqtt_qos, log))
    except OSError:
        for s in sinks:
            s.close()
        raise
    if not sinks:
        log.warning("no display sink is on ([display] window/web/video/events): frames are only counted")
    return sinks
