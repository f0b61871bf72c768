"""The real pipeline on one video, without the live view, to reports (``python -m analyze VIDEO``).

Starts ``python -m capture``, ``python -m detector`` and ``python -m classifier`` through
:mod:`emostream.launch` on free loopback ports with a temporary config made from the user's (``--config`` / ``BUS_CONFIG``
/ ``./bus.toml``: models, thresholds, tracking and smoothing are kept; the source is the video, read
as fast as the pipeline takes it, ``realtime = false``). It plays the display's role itself: binds
the display's PULL socket and feeds :class:`display.worker.Display` (ledger, tracking, smoothing)
with a collecting sink and, with ``--video``, the annotated-video sink. A tqdm bar counts the frames
accounted for. When every frame is accounted for, the children are stopped and
:func:`analyze.report.write_reports` writes the tables and the plot.

The children are always stopped and reaped (the launcher's SIGTERM, a bounded wait, then SIGKILL),
on success, on an error and on Ctrl-C. A stage that dies, or no message for ``STALL_S`` seconds, ends the run with one line
and the stage's last log line. Exit codes: 0 done, 1 the run failed, 2 bad input or start-up
failure, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from analyze.report import ReportError, require_matplotlib, write_reports
from bus import codec
from bus.codec import Frame
from bus.config import Config, ConfigError, load, to_table
from bus.media import is_image_name
from bus.runtime import RUN_ENV, Stats
from bus.sidecar import SidecarError, load_spec
from bus.sockets import pull, recv
from display.sinks import VideoSink
from display.worker import Display, Sink
from emostream.launch import Launcher, LaunchError, endpoint, write_config

STAGES = ("classifier", "detector", "capture")  # start order: consumers first
STALL_S = 90.0  # no message for this long (model loading included): the run failed
POLL_MS = 100
SEND_TIMEOUT_MS = 10000  # file frames may wait this long for a busy stage: nothing is dropped


class AnalyzeError(RuntimeError):
    """The analysis failed; ``code`` is the exit code (2: bad input or start-up, 1: the run)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class Interrupted(AnalyzeError):
    def __init__(self) -> None:
        super().__init__("interrupted", 130)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int | None  # from the container (CAP_PROP_FRAME_COUNT); None when unknown
    fps: float
    width: int
    height: int


def probe(video: str) -> VideoInfo:
    """Check that ``video`` is a readable video file; :class:`AnalyzeError` (code 2) if not."""
    path = Path(video)
    if not path.is_file():
        raise AnalyzeError(f"no such file: {video}", 2)
    if is_image_name(path.name):
        raise AnalyzeError(f"{video} is an image, not a video", 2)
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok or frame is None:
            raise AnalyzeError(f"{video} is not a video (no frame could be read)", 2)
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        fps = cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return VideoInfo(
        path=path.resolve(),
        frames=int(n) if np.isfinite(n) and n > 0 else None,
        fps=float(fps) if np.isfinite(fps) and 0 < fps <= 1000 else 30.0,
        width=int(frame.shape[1]),
        height=int(frame.shape[0]),
    )


def source_id(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:64] or "video"


def stage_table(base: Config, info: VideoInfo, video: Path | None = None) -> dict[str, dict[str, Any]]:
    """The children's config: ``base`` with the video as the only source and fresh loopback ports;
    ``video``: the annotated video this process's display writes (so the detector sends it pixels:
    :func:`bus.config.display_pixels`)."""
    t = to_table(base)
    ep = [endpoint() for _ in range(3)]
    t["bus"].update(allow_remote=False, curve=False, send_timeout_ms=max(SEND_TIMEOUT_MS, base.bus.send_timeout_ms))
    source = {"id": source_id(info.path), "uri": str(info.path), "realtime": False, "loop": False, "fps": info.fps}
    t["capture"] = {"sources": [source], "eof_linger_s": 3600.0}  # capture waits for our SIGTERM
    t["detector"]["endpoints"] = [ep[0]]  # one copy each: frames reach the display in order
    t["classifier"]["endpoints"] = [ep[1]]
    drawn = "" if video is None else str(Path(video).absolute())  # a config's relative path is its folder's
    t["display"].update(endpoint=ep[2], window=False, web="", video=drawn, events="", exit_at_end=True)
    return t


class Collect:
    """A sink that keeps every events record and the model's labels."""

    name = "collect"
    wants_image = False

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.labels: list[str] | None = None

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None:
        self.records.append(event)
        if self.labels is None and msg.labels:
            self.labels = list(msg.labels)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Result:
    info: VideoInfo
    paths: dict[str, Path]  # report name -> file
    summary: dict[str, Any]  # what tracks.json holds: the run's figures and one entry per track


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (main thread only) for the duration; old handlers come back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _base_config(config_path: str | None) -> Config:
    env = {"BUS_CONFIG": os.environ["BUS_CONFIG"]} if os.environ.get("BUS_CONFIG") else {}
    try:
        cfg = load(config_path, env)  # SOURCE / EVENTS / WEB / VIDEO do not apply here
        load_spec(cfg.classifier.model)
    except (ConfigError, SidecarError) as e:
        raise AnalyzeError(str(e), 2) from None
    if not Path(cfg.classifier.model).is_file():
        raise AnalyzeError(f"classifier model not found: {cfg.classifier.model}", 2)
    return cfg


def analyze(
    video: str,
    out: str | Path,
    config_path: str | None = None,
    annotated: bool = False,
    plot: bool = True,
    progress: bool = True,
    stop: threading.Event | None = None,
    log: logging.Logger | None = None,
) -> Result:
    """Run the pipeline on ``video`` and write the reports into ``out``. Raises :class:`AnalyzeError`."""
    info = probe(video)
    base = _base_config(config_path)
    if plot:
        try:
            require_matplotlib()
        except ReportError as e:
            raise AnalyzeError(str(e), 2) from None
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalyzeError(f"cannot create {out}: {e}", 2) from None
    stop = stop or threading.Event()
    log = log or logging.getLogger("analyze")
    with tempfile.TemporaryDirectory(prefix="emostream-analyze-") as tmp:
        cfg_path = write_config(
            Path(tmp) / "bus.toml", stage_table(base, info, out / "annotated.mp4" if annotated else None)
        )
        try:
            cfg = load(cfg_path, {})
        except ConfigError as e:  # pragma: no cover (we wrote it from a valid config)
            raise AnalyzeError(f"internal: the stage config is invalid: {e}") from None
        collect = Collect()
        sinks: list[Sink] = [collect]
        recorder = VideoSink(out / "annotated.mp4", cfg, log) if annotated else None
        sinks += [recorder] if recorder is not None else []
        # we decode the children's messages here: they belong to this process's run (usually none)
        children = Launcher(Path(tmp), {RUN_ENV: codec.RUN} if codec.RUN else {})
        ctx = zmq.Context()
        disp = Display(cfg, sinks, Stats(log, 1e9), log)
        try:
            try:
                sock = pull(ctx, cfg.display.endpoint, max(cfg.bus.hwm, 16))
            except zmq.ZMQError as e:
                raise AnalyzeError(f"cannot bind {cfg.display.endpoint}: {e}", 2) from None
            try:
                for stage in STAGES:
                    try:
                        children.start(stage, config=cfg_path)
                    except OSError as e:
                        raise AnalyzeError(f"cannot start {stage}: {e}", 2) from None
                _receive(disp, sock, children, cfg, info, stop, progress)
            finally:
                sock.close(linger=0)
        finally:
            codes = {p.stage: code for p, code in zip(children.procs, children.stop().values(), strict=True)}
            disp.close()
            ctx.term()
        disp.ledger.finalise()
        src = cfg.capture.sources[0].id
        count = disp.ledger.sources[src]
        labels = collect.labels or list(load_spec(cfg.classifier.model).labels)
        d = cfg.display
        meta = {
            "video": str(info.path),
            "frames_read": count.read,
            "frames_analysed": count.received,
            "dropped": dict(count.drops, **({"capture": count.capture_dropped} if count.capture_dropped else {})),
            "lost": count.lost,
            "scene_cuts": list(disp.follow[src].cuts) if src in disp.follow else [],
            "model": cfg.classifier.model,
            "detector": cfg.detector.model,
            "tracking": {"iou": d.track_iou, "max_missed": d.track_max_missed, "cut": d.track_cut},
            "smoothing": {
                "mode": d.smoothing,
                "alpha": d.smoothing_alpha,
                "window": d.smoothing_window,
                "hold": d.smoothing_hold,
            },
            "stage_exit_codes": codes,
        }
        try:
            paths, doc = write_reports(out, collect.records, labels, info.fps, meta, plot=plot)
        except (OSError, ReportError) as e:
            raise AnalyzeError(f"cannot write the reports: {e}") from None
        # annotated.webm when this OpenCV has no H.264 encoder (display.sinks.choose_codec)
        for path in recorder.written if recorder is not None else []:
            paths[path.name] = path
    return Result(info, paths, doc)


def _receive(
    disp: Display,
    sock: zmq.Socket,
    children: Launcher,
    cfg: Config,
    info: VideoInfo,
    stop: threading.Event,
    progress: bool,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Feed ``disp`` until every frame of the video is accounted for (or fail / stop)."""
    from tqdm import tqdm

    src = cfg.capture.sources[0].id
    last = clock()
    with tqdm(total=info.frames, unit="frame", desc=info.path.name, disable=not progress, file=sys.stderr) as bar:
        while True:
            if stop.is_set():
                raise Interrupted()
            parts = recv(sock, POLL_MS)
            now = clock()
            if parts is not None:
                disp.handle(parts, now)
                last = now
            disp.expire(now)  # two paths: frames whose emotions did not come are shown without them
            count = disp.ledger.sources.get(src)
            if count is not None and count.accounted > bar.n:
                bar.update(count.accounted - bar.n)
            if disp.ledger.done(now, cfg.display.drain_timeout_s):
                return
            try:
                children.check()
            except LaunchError as e:
                raise AnalyzeError(str(e), 2 if e.code == 2 else 1) from None
            if now - last > STALL_S:
                lines = "; ".join(f"{p.stage}: {p.last_line()}" for p in children.procs)
                raise AnalyzeError(f"no results for {STALL_S:.0f} s (last log lines: {lines})")
