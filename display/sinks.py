"""Display sinks other than the web page: OpenCV window, annotated video file, JSON-lines events.

Each consumes (message, annotated image, events record) per classified frame; ``open_sinks``
builds the combination ``[display]`` asks for. Start-up problems raise ``OSError``; a window
without a screen is disabled with one warning instead.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bus.codec import Message
from bus.config import Config
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

    def write(self, msg: Message, image: np.ndarray | None, event: dict[str, Any]) -> None:
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


class VideoSink:
    """Annotated frames to an mp4v video per source, opened at the first frame's size."""

    name = "video"
    wants_image = True

    def __init__(self, path: str | Path, cfg: Config, log: logging.Logger):
        self.path, self.log = Path(path), log
        self.fps = {s.id: s.fps if s.fps > 0 else DEFAULT_FPS for s in cfg.capture.sources}
        self.single = len(cfg.capture.sources) == 1
        self.writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def path_for(self, src: str) -> Path:
        """The configured path for a single source; ``name-<src>.mp4`` for each of several."""
        if self.single and src in self.fps:
            return self.path
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in src)
        return self.path.with_name(f"{self.path.stem}-{safe}{self.path.suffix}")

    def write(self, msg: Message, image: np.ndarray | None, event: dict[str, Any]) -> None:
        if image is None:
            return
        if msg.src not in self.writers:
            path, size = self.path_for(msg.src), (image.shape[1], image.shape[0])
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter.fourcc(*"mp4v"), self.fps.get(msg.src, DEFAULT_FPS), size
            )
            if not writer.isOpened():
                raise OSError(f"cannot open video writer for {path}")
            self.log.info("writing %s at %dx%d", path, *size)
            self.writers[msg.src] = (writer, size)
        writer, size = self.writers[msg.src]
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        writer.write(image)

    def forget(self, src: str) -> None:
        """The display evicted ``src``: close its video (a later frame opens it again)."""
        entry = self.writers.pop(src, None)
        if entry is not None:
            entry[0].release()

    def close(self) -> None:
        for writer, _ in self.writers.values():
            writer.release()
        self.writers.clear()


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

    def write(self, msg: Message, image: np.ndarray | None, event: dict[str, Any]) -> None:
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


def open_sinks(cfg: Config, stop: threading.Event, log: logging.Logger) -> list[Sink]:
    """The sinks ``[display]`` asks for. Raises OSError when a file or port cannot be opened."""
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
    except OSError:
        for s in sinks:
            s.close()
        raise
    if not sinks:
        log.warning("no display sink is on ([display] window/web/video/events): frames are only counted")
    return sinks
