"""Display worker: classified frames, drop markers and eos in; sinks fed; every frame accounted for.

Consumes classifier messages (image + faces with ``label``/``probs`` + ``labels``), ``drop`` markers
and ``eos`` from any stage; produces, per frame, an events record and an annotated image for the
sinks (window, web page, video, events file). The :class:`Ledger` counts per source what arrived
against what capture read, decides when the run is complete, and names what was lost.

Tracking lives here because the display is the only single sink (detectors and classifiers may run
as several copies): one :class:`display.track.Follow` per source gives every face a ``track`` id and
``smoothed`` probabilities / ``smoothed_label``, added to the events record next to the raw ones.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import zmq

from bus.codec import CodecError, Message, decode, drop_marker
from bus.config import Config, DisplayConfig
from bus.runtime import RateLimited, Stall, Stats
from bus.shm import Rings, ShmError
from bus.sockets import recv
from display.draw import annotate
from display.smooth import Smoother
from display.track import Follow, Tracked, Tracker

POLL_MS = 100
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jp2", ".avif")


class Sink(Protocol):
    name: str
    wants_image: bool

    def write(self, msg: Message, image: np.ndarray | None, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def is_file_uri(uri: str) -> bool:
    """A file or folder source (ends by itself), not a camera index or a stream URL."""
    return not uri.isdigit() and "://" not in uri


def is_image_uri(uri: str) -> bool:
    """A single still image (its faces get track ids, but nothing to smooth over)."""
    return is_file_uri(uri) and uri.lower().endswith(IMAGE_SUFFIXES)


def follower(d: DisplayConfig, image: bool = False) -> Follow:
    """The tracker and smoother ``[display]`` asks for (smoothing off for a single image)."""
    mode = "off" if image else d.smoothing
    smoother = Smoother(mode, d.smoothing_alpha, d.smoothing_window, d.smoothing_hold)
    return Follow(Tracker(d.track_iou, d.track_max_missed), smoother, d.track_cut)


def waiting_sources(cfg: Config) -> list[str]:
    """Sources whose end the display waits for: the file sources, or all of them if none is a file."""
    files = [s.id for s in cfg.capture.sources if is_file_uri(s.uri)]
    return files or cfg.source_ids()


@dataclass
class SourceCount:
    received: int = 0  # frames with results (what the events file gets)
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    read: int | None = None  # frames capture read, from its eos
    capture_dropped: int = 0
    lost: int = 0  # set by Ledger.finalise
    last: float = float("-inf")  # when anything last arrived for this source

    @property
    def accounted(self) -> int:
        return self.received + sum(self.drops.values()) + self.capture_dropped

    @property
    def ended(self) -> bool:
        return self.read is not None

    @property
    def complete(self) -> bool:
        return self.read is not None and self.accounted >= self.read


class Ledger:
    """Per-source accounting. Pure: callers pass ``now`` (any monotonic clock)."""

    def __init__(self, sources: Iterable[str], waiting: Sequence[str]):
        self.sources: dict[str, SourceCount] = {s: SourceCount() for s in sources}
        self.waiting = tuple(waiting)

    def _get(self, src: str, now: float) -> SourceCount:
        c = self.sources.setdefault(src, SourceCount())
        c.last = now
        return c

    def frame(self, src: str, now: float) -> None:
        self._get(src, now).received += 1

    def drop(self, src: str, reason: str, now: float) -> None:
        self._get(src, now).drops[reason] += 1

    def eos(self, src: str, read: int, capture_dropped: int, now: float) -> None:
        c = self._get(src, now)
        c.read, c.capture_dropped = read, capture_dropped

    def done(self, now: float, drain_timeout_s: float) -> bool:
        """Every awaited source ended and is complete, or ended and silent for ``drain_timeout_s``."""
        counts = [self.sources.get(s, SourceCount()) for s in self.waiting]
        if not counts or not all(c.ended for c in counts):
            return False
        if all(c.complete for c in counts):
            return True
        return now - max(c.last for c in counts) >= drain_timeout_s

    def finalise(self) -> None:
        """Whatever an ended source read and nobody accounted for is lost."""
        for c in self.sources.values():
            c.lost = max(0, c.read - c.accounted) if c.read is not None else 0

    def lines(self) -> list[str]:
        out = []
        for src, c in self.sources.items():
            drops = " ".join(f"{k}={v}" for k, v in sorted(c.drops.items()))
            if c.capture_dropped:
                drops = f"capture={c.capture_dropped} {drops}".strip()
            read = "?" if c.read is None else str(c.read)
            out.append(
                f"{src}: read {read}  in events {c.received}  dropped {drops or 0}  lost {c.lost}"
                + ("" if c.ended else "  (no eos)")
            )
        return out


def _probs(labels: Sequence[str], probs: Sequence[float] | None) -> dict[str, float]:
    if probs is None:
        return {}
    names = labels if len(labels) == len(probs) else [str(i) for i in range(len(probs))]
    return {n: round(float(p), 4) for n, p in zip(names, probs, strict=True)}


def event(msg: Message, now: float, tracked: Sequence[Tracked] | None = None) -> dict[str, Any]:
    """The events-file record of a classified frame (``now``: wall clock, for latency). With
    ``tracked`` (one per face) each face also has ``track``, ``smoothed`` and ``smoothed_label``."""
    labels = msg.labels or []
    faces = []
    for i, f in enumerate(msg.faces):
        face: dict[str, Any] = {
            "box": [round(float(v), 1) for v in f.box],
            "score": round(float(f.score), 4),
            "label": f.label,
            "probs": _probs(labels, f.probs),
        }
        if f.uncertain is not None:
            face["uncertain"] = f.uncertain
        if tracked is not None:
            t = tracked[i]
            face.update(track=t.track, smoothed=_probs(labels, t.smoothed), smoothed_label=t.smoothed_label)
        faces.append(face)
    record: dict[str, Any] = {"src": msg.src, "seq": msg.seq, "ts": msg.ts}
    if msg.path is not None:
        record["path"] = msg.path  # folder and image sources: the file the frame came from
    record.update(faces=faces, latency_ms=round((now - msg.ts) * 1000.0, 1))
    return record


@dataclass
class Output:
    event: dict[str, Any]
    image: np.ndarray | None


def step(msg: Message, now: float, draw: bool = True, tracked: Sequence[Tracked] | None = None) -> Output:
    """A classified frame (and its faces' tracking) -> events record and (``draw``) annotated image. Pure."""
    image = annotate(msg.image, msg.faces, msg.labels, tracked) if draw and msg.image is not None else None
    return Output(event(msg, now, tracked), image)


def is_stale(msg: Message, now: float, max_age_ms: int) -> bool:
    return msg.live and max_age_ms > 0 and (now - msg.ts) * 1000.0 > max_age_ms


class Display:
    """The loop's state: ledger, sinks, counters. ``handle`` takes one raw message."""

    def __init__(
        self,
        cfg: Config,
        sinks: Sequence[Sink],
        stats: Stats,
        log: logging.Logger,
        wall: Callable[[], float] = time.time,
    ):
        self.cfg, self.sinks, self.stats, self.log, self.wall = cfg, list(sinks), stats, log, wall
        self.ledger = Ledger(cfg.source_ids(), waiting_sources(cfg))
        self.warn = RateLimited(log)
        self.draw = any(s.wants_image for s in self.sinks)
        self.images = {s.id for s in cfg.capture.sources if is_image_uri(s.uri)}
        self.follow: dict[str, Follow] = {}
        self.rings = Rings()

    def _pixels(self, msg: Message) -> str | None:
        """A frame in shared memory: copy its pixels out (what the sinks and the tracker see) and
        release the slot -- the frame's journey ends here. Returns a drop reason when they are gone."""
        ref = msg.shm
        if ref is None:
            return None
        try:
            if msg.kind != "frame":
                return None
            try:
                msg.image = np.array(self.rings.view(ref))
            except ShmError as e:
                self.warn.warning(e.reason, "%s#%d: %s", msg.src, msg.seq, e)
                return e.reason
            return None if self.rings.valid(ref) else "overwritten"
        finally:
            self.rings.release(ref)

    def handle(self, parts: list[Any], now: float) -> None:
        try:
            msg = decode(parts)
        except CodecError as e:
            self.stats.drop("garbage")
            self.warn.warning("garbage", "undecodable message ignored: %s", e)
            return
        lost = self._pixels(msg)
        if lost is not None:
            msg = drop_marker(msg, lost)
        if msg.src not in self.ledger.sources:
            self.warn.warning("unknown_src", "messages from %r, a source not in the config", msg.src)
        if msg.kind == "eos":
            if msg.frames is None:
                self.stats.drop("garbage")
                self.warn.warning("eos", "%s: eos without a frame count ignored", msg.src)
                return
            self.ledger.eos(msg.src, msg.frames, msg.dropped or 0, now)
            self.log.info(
                "%s: end of source after %d frames (%d dropped at capture)", msg.src, msg.frames, msg.dropped or 0
            )
        elif msg.kind == "drop":
            reason = msg.reason or "unknown"
            self.ledger.drop(msg.src, reason, now)
            self.stats.drop(reason)
        elif is_stale(msg, self.wall(), self.cfg.bus.max_age_ms):
            self.ledger.drop(msg.src, "stale", now)
            self.stats.drop("stale")
            self.warn.warning("stale", "%s#%d: stale live frame dropped", msg.src, msg.seq)
        else:
            self.ledger.frame(msg.src, now)
            self.stats.frame(msg.ts)
            if msg.src not in self.follow:
                self.follow[msg.src] = follower(self.cfg.display, msg.src in self.images)
            tracked = self.follow[msg.src].faces(msg.seq, msg.faces, msg.labels, msg.image)
            out = step(msg, self.wall(), self.draw, tracked)
            for sink in self.sinks:
                try:
                    sink.write(msg, out.image, out.event)
                except (OSError, ValueError, cv2.error) as e:
                    self.stats.drop(f"sink_{sink.name}")
                    self.warn.warning(
                        f"sink_{sink.name}", "%s sink failed on %s#%d: %s", sink.name, msg.src, msg.seq, e
                    )

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except (OSError, ValueError, cv2.error) as e:
                self.log.error("closing the %s sink failed: %s", sink.name, e)


def run(
    cfg: Config,
    in_sock: zmq.Socket,
    sinks: Sequence[Sink],
    stop: threading.Event,
    stats: Stats,
    log: logging.Logger,
    clock: Callable[[], float] = time.monotonic,
) -> Ledger:
    """Receive and show until ``stop``, or (``exit_at_end``) until every awaited source is accounted for
    or has been silent for ``drain_timeout_s`` after its eos. Logs one final line per source."""
    disp = Display(cfg, sinks, stats, log)
    stall = Stall(log, cfg.display.stall_warn_s)  # a hung or dead stage upstream: warn with the age
    try:
        while not stop.is_set():
            stats.maybe_log()
            parts = recv(in_sock, POLL_MS)
            now = clock()
            if parts is not None:
                disp.handle(parts, now)
            stall.check(
                {s: c.last for s, c in disp.ledger.sources.items() if not c.ended and c.last > float("-inf")}, now
            )
            if cfg.display.exit_at_end and disp.ledger.done(now, cfg.display.drain_timeout_s):
                log.info("every source ended and is accounted for: exiting")
                break
    finally:
        disp.close()
        disp.ledger.finalise()
        log.info("final stats: %s", stats.line())
        for line in disp.ledger.lines():
            log.info("final %s", line)
    return disp.ledger
