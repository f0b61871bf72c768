"""Display worker: classified frames, drop markers and eos in; sinks fed; every frame accounted for.

Consumes classifier messages (image + faces with ``label``/``probs`` + ``labels``), ``drop`` markers
and ``eos`` from any stage; produces, per frame, an events record and an annotated image for the
sinks (window, web page, video, events file). The :class:`Ledger` counts per source what arrived
against what capture read, decides when the run is complete, and names what was lost.

What arrives is checked before it counts (the transport may be reachable by other local users):
per source, a frame or drop marker whose ``seq`` is more than :data:`SEQ_AHEAD` after, or more
than :data:`SEQ_BEHIND` before, the newest accepted one is rejected and counted (one forged
``seq = 10**12`` used to make every later frame "late" for the tracker and the web page for the
rest of the run); :data:`SEQ_REANCHOR` rejected messages in a row that agree with each other are
taken as the source's new numbering (a restarted capture starts again at 0). At most
``[display] max_sources`` sources have state at once: those in ``[capture]`` always, others are
evicted least recently used (counted and logged; their counts go into one ``evicted`` line).

Two paths (``[detector] two_paths``): a frame marked ``wait`` is held until its classifier result
arrives (:mod:`display.join`, bounded by ``[display] join_wait_ms`` and ``join_max_pending``), then
shown with its emotions, or without them (``no_emotions`` and its reason, in the events record and
counted ``no_emotions_<reason>``). A ``result`` half is never counted as a frame of its own; a frame
is accounted once, when it is shown or dropped.

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

import numpy as np
import zmq

from bus.codec import RUN, DropReason, Frame, Message, named_probs
from bus.config import Config, DisplayConfig, display_pixels
from bus.media import is_image_name
from bus.preprocess import thumbnail
from bus.runtime import RateLimited, RuntimeDirError, Stall, Stats
from bus.shm import Rings
from bus.sockets import recv
from bus.stage import POLL_MS, is_stale, receive, take_pixels
from display.draw import annotate
from display.join import Joins, Released
from display.journal import Journal
from display.smooth import Smoother
from display.track import Follow, Tracked, Tracker


class Sink(Protocol):
    name: str
    wants_image: bool

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def is_file_uri(uri: str) -> bool:
    """A file or folder source (ends by itself), not a camera index or a stream URL."""
    return not uri.isdigit() and "://" not in uri


def is_image_uri(uri: str) -> bool:
    """A single still image (its faces get track ids, but nothing to smooth over)."""
    return is_file_uri(uri) and is_image_name(uri)


def follower(d: DisplayConfig, image: bool = False) -> Follow:
    """The tracker and smoother ``[display]`` asks for (smoothing off for a single image)."""
    mode = "off" if image else d.smoothing
    smoother = Smoother(mode, d.smoothing_alpha, d.smoothing_window, d.smoothing_hold)
    return Follow(Tracker(d.track_iou, d.track_max_missed), smoother, d.track_cut)


def scene_thumb(msg: Frame, cut: float) -> np.ndarray | None:
    """The frame's grey thumbnail for scene cuts (``cut``: ``[display] track_cut``; 0 = none): the
    one it carries (two paths, a display that draws nothing), else made from its pixels."""
    if cut <= 0:
        return None
    if msg.thumb is not None:
        return msg.thumb
    return None if msg.image is None else thumbnail(msg.image)


CARRIED = ("pixels", "thumbnail", "neither")


def carried(msg: Frame) -> str:
    """What a shown frame brought: ``pixels``, ``thumbnail`` (no pixels) or ``neither``."""
    return "pixels" if msg.pixels is not None else "thumbnail" if msg.thumb is not None else "neither"


def waiting_sources(cfg: Config) -> list[str]:
    """Sources whose end the display waits for: the file sources, or all of them if none is a file."""
    files = [s.id for s in cfg.capture.sources if is_file_uri(s.uri)]
    return files or cfg.source_ids()


SEQ_AHEAD = 3000  # frames a source's seq may jump forward (capture drops make gaps: ~100 s at 30 fps)
SEQ_BEHIND = 10_000  # frames a message may arrive behind the newest (parallel detectors, drop markers owed)
SEQ_REANCHOR = 30  # rejected messages in a row, within SEQ_AHEAD of each other, that become the new numbering
SEEN_CHUNK = 1 << 16  # seqs per chunk of the duplicates bitmap (8 KiB)
SEEN_CHUNKS = 64  # chunks kept per source (4 Mi seqs, 512 KiB); the least recently touched goes first


class Seen:
    """Which seqs of one source arrived: a bitmap in chunks of :data:`SEEN_CHUNK` seqs, at most
    :data:`SEEN_CHUNKS` of them (a duplicate older than that many frames can then pass unseen)."""

    def __init__(self) -> None:
        self.chunks: collections.OrderedDict[int, bytearray] = collections.OrderedDict()

    def add(self, seq: int) -> bool:
        """Record ``seq``; False when it was already there (a duplicate)."""
        key, bit = divmod(seq, SEEN_CHUNK)
        chunk = self.chunks.get(key)
        if chunk is None:
            chunk = self.chunks[key] = bytearray(SEEN_CHUNK // 8)
            if len(self.chunks) > SEEN_CHUNKS:
                self.chunks.popitem(last=False)
        self.chunks.move_to_end(key)
        byte, mask = bit >> 3, 1 << (bit & 7)
        if chunk[byte] & mask:
            return False
        chunk[byte] |= mask
        return True


@dataclass
class SeqWindow:
    """Accepts a source's seqs near the newest accepted one (see the module docstring)."""

    newest: int | None = None
    streak: int = 0  # rejected in a row, each within SEQ_AHEAD of the one before
    streak_last: int = 0

    def accept(self, seq: int) -> tuple[bool, bool]:
        """(accepted, re-anchored: the source's numbering restarted at ``seq``)."""
        if self.newest is None or self.newest - SEQ_BEHIND <= seq <= self.newest + SEQ_AHEAD:
            self.newest = seq if self.newest is None else max(self.newest, seq)
            self.streak = 0
            return True, False
        near = self.streak and abs(seq - self.streak_last) <= SEQ_AHEAD
        self.streak, self.streak_last = (self.streak + 1 if near else 1), seq
        if self.streak >= SEQ_REANCHOR:
            self.newest, self.streak = seq, 0
            return True, True
        return False, False


@dataclass
class SourceCount:
    received: int = 0  # frames with results (what the events file gets)
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    read: int | None = None  # frames capture read, from its eos
    capture_dropped: int = 0  # from the eos, or (no eos yet) the newest count capture put on a frame
    lost: int = 0  # set by Ledger.finalise
    last: float = float("-inf")  # when anything last arrived for this source
    duplicates: int = 0  # frames or drop markers whose seq had already arrived
    top: int = 0  # highest seq seen in a frame or drop marker, plus one: frames read so far, at least
    seen: Seen = field(default_factory=Seen, repr=False)

    @property
    def accounted(self) -> int:
        return self.received + sum(self.drops.values()) + self.capture_dropped - self.duplicates

    @property
    def ended(self) -> bool:
        return self.read is not None

    @property
    def complete(self) -> bool:
        return self.read is not None and self.accounted >= self.read


class Ledger:
    """Per-source accounting. Pure: callers pass ``now`` (any monotonic clock).

    read = in events + dropped (by reason, capture's own included) + lost, per source, exactly:
    a seq that arrives twice is counted as a duplicate (and not twice in the sum); more accounted
    than read is named in the final line. A source without an eos (a camera, a looped file, or
    one still running when the display stopped) is accounted against the frames it had read by
    the newest seq that arrived; what is missing of those is ``in flight`` (or lost: the display
    cannot tell which), never hidden."""

    def __init__(
        self, sources: Iterable[str], waiting: Sequence[str], record: Callable[[list[Any]], None] | None = None
    ):
        self.record = record  # each update also goes here (display.journal), so a restart can replay it
        self.sources: dict[str, SourceCount] = {s: SourceCount() for s in sources}
        self.waiting = tuple(waiting)
        self.evicted = SourceCount()  # the counts of every evicted source, summed
        self.evicted_sources = 0

    def _get(self, src: str, now: float, seq: int | None = None, capture_dropped: int | None = None) -> SourceCount:
        c = self.sources.setdefault(src, SourceCount())
        c.last = now
        if seq is not None:
            c.top = max(c.top, seq + 1)
            if not c.seen.add(seq):
                c.duplicates += 1
        if capture_dropped is not None and c.read is None:
            c.capture_dropped = max(c.capture_dropped, capture_dropped)
        return c

    def frame(self, src: str, now: float, seq: int | None = None, capture_dropped: int | None = None) -> None:
        self._get(src, now, seq, capture_dropped).received += 1
        if self.record is not None:
            self.record(["f", src, seq, capture_dropped])

    def drop(
        self, src: str, reason: str, now: float, seq: int | None = None, capture_dropped: int | None = None
    ) -> None:
        self._get(src, now, seq, capture_dropped).drops[reason] += 1
        if self.record is not None:
            self.record(["d", src, seq, capture_dropped, reason])

    def eos(self, src: str, read: int, capture_dropped: int, now: float) -> None:
        c = self._get(src, now)
        c.read, c.capture_dropped = read, capture_dropped
        if self.record is not None:
            self.record(["e", src, read, capture_dropped])

    def replay(self, updates: Iterable[list[Any]], now: float) -> int:
        """Apply the updates an earlier display of this run recorded (not recorded again); how many."""
        record, self.record = self.record, None
        n = 0
        try:
            for u in updates:
                kind, src = u[0], str(u[1])
                if kind == "f":
                    self.frame(src, now, u[2], u[3])
                elif kind == "d":
                    self.drop(src, str(u[4]), now, u[2], u[3])
                elif kind == "e":
                    self.eos(src, int(u[2]), int(u[3]), now)
                else:
                    continue
                n += 1
        finally:
            self.record = record
        return n

    def evict(self, src: str) -> None:
        """Forget a source, keeping its counts in :attr:`evicted`."""
        c = self.sources.pop(src)
        e = self.evicted
        e.received += c.received
        e.drops.update(c.drops)
        e.capture_dropped += c.capture_dropped
        e.duplicates += c.duplicates
        e.top += c.read if c.read is not None else c.top
        self.evicted_sources += 1

    def done(self, now: float, drain_timeout_s: float) -> bool:
        """Every awaited source ended and is complete, or ended and silent for ``drain_timeout_s``."""
        counts = [self.sources.get(s, SourceCount()) for s in self.waiting]
        if not counts or not all(c.ended for c in counts):
            return False
        if all(c.complete for c in counts):
            return True
        return now - max(c.last for c in counts) >= drain_timeout_s

    def finalise(self) -> None:
        """Whatever a source read and nobody accounted for is lost (in flight, without an eos)."""
        for c in [*self.sources.values(), self.evicted]:
            c.lost = max(0, (c.read if c.read is not None else c.top) - c.accounted)

    def lines(self) -> list[str]:
        out = []
        items = list(self.sources.items())
        if self.evicted_sources:
            items.append((f"{self.evicted_sources} evicted source(s)", self.evicted))
        for src, c in items:
            drops = " ".join(f"{k}={v}" for k, v in sorted(c.drops.items()))
            if c.capture_dropped:
                drops = f"capture={c.capture_dropped} {drops}".strip()
            read = str(c.read) if c.read is not None else f"{c.top} so far" if c.top else "?"
            line = f"{src}: read {read}  in events {c.received}  dropped {drops or 0}  "
            line += f"lost {c.lost}" if c.ended else f"in flight {c.lost}  (no eos)"
            read_n = c.read if c.read is not None else c.top
            if c.duplicates:
                line += f"  DUPLICATES {c.duplicates}"
            if c.received > read_n and (c.ended or c.top):
                line += f"  MORE IN EVENTS THAN READ ({c.received} > {read_n})"
            elif c.accounted > read_n and (c.ended or c.top):
                line += f"  MORE ACCOUNTED THAN READ by {c.accounted - read_n}"
            out.append(line)
        return out


EVENT_VERSION = 1  # the events record's "v" (docs/events.md, docs/events.schema.json)


def _uncertain(probs: Sequence[float] | None, top: float | None, below: float | None, flag: bool | None) -> bool:
    """The classifier's flag when it sent one, else ``top`` (the shown label's probability) below its threshold."""
    if flag is not None:
        return flag
    return below is not None and bool(probs) and top is not None and top < below


def event(msg: Frame, now: float, tracked: Sequence[Tracked] | None = None) -> dict[str, Any]:
    """The events record of a classified frame (``now``: wall clock, for latency); its schema is
    docs/events.schema.json. Each face says ``uncertain`` (its top probability is below the
    classifier's ``uncertain_below``). With ``tracked`` (one per face) each face also has ``track``,
    ``smoothed``, ``smoothed_label`` and ``smoothed_uncertain`` (the smoothed label's probability
    below the same threshold)."""
    labels = msg.labels or []
    below = msg.uncertain_below
    faces = []
    for i, f in enumerate(msg.faces):
        face = f.to_json(labels, _uncertain(f.probs, max(f.probs) if f.probs else None, below, f.uncertain))
        if tracked is not None:
            t = tracked[i]
            smoothed = named_probs(labels, t.smoothed)
            top = smoothed.get(t.smoothed_label) if t.smoothed_label is not None else None
            face.update(
                track=t.track,
                smoothed=smoothed,
                smoothed_label=t.smoothed_label,
                smoothed_uncertain=_uncertain(t.smoothed, top, below, None if below is not None else f.uncertain),
            )
        faces.append(face)
    rec: dict[str, Any] = {"v": EVENT_VERSION, "src": msg.src, "seq": msg.seq, "ts": msg.ts}
    if msg.path is not None:
        rec["path"] = msg.path  # folder and image sources: the file the frame came from
    rec.update(faces=faces, latency_ms=round((now - msg.ts) * 1000.0, 1))
    if below is not None:
        rec["uncertain_below"] = below
    if msg.no_emotions is not None:
        rec["no_emotions"] = str(msg.no_emotions)  # two paths: why no classifier result labels these faces
    return rec


@dataclass
class Output:
    event: dict[str, Any]
    image: np.ndarray | None


def step(msg: Frame, now: float, draw: bool = True, tracked: Sequence[Tracked] | None = None) -> Output:
    """A classified frame (and its faces' tracking) -> events record and (``draw``) annotated image. Pure."""
    image = (
        annotate(msg.image, msg.faces, msg.labels, tracked, msg.uncertain_below)
        if draw and msg.image is not None
        else None
    )
    return Output(event(msg, now, tracked), image)


def _journal(cfg: Config, log: logging.Logger) -> Journal | None:
    """The run's ledger journal (display.journal); none without a run id or a usable runtime dir."""
    if not RUN:
        return None
    try:
        return Journal(RUN, cfg.display.events)
    except (OSError, RuntimeDirError) as e:
        log.warning("no ledger journal (a restarted display would start counting again): %s", e)
        return None


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
        self.journal = _journal(cfg, log)
        self.ledger = Ledger(
            cfg.source_ids(), waiting_sources(cfg), None if self.journal is None else self.journal.write
        )
        if self.journal is not None:
            n = self.ledger.replay(self.journal.replay(), time.monotonic())
            if n:
                log.info("restarted within run %s: %d earlier frames, drops and ends carried over", RUN[:16], n)
        self.warn = RateLimited(log)
        self.draw = any(s.wants_image for s in self.sinks)
        if self.draw and not display_pixels(cfg):
            log.warning(
                "a sink draws, but [display] window, web and video are off: the detector sends frames without "
                "pixels (two paths), so there is nothing to draw"
            )
        self.carried: collections.Counter[str] = collections.Counter()  # shown frames by what they brought
        self.images = {s.id for s in cfg.capture.sources if is_image_uri(s.uri)}
        self.follow: dict[str, Follow] = {}
        self.windows: dict[str, SeqWindow] = {}
        self.configured = frozenset(cfg.source_ids())
        self.others: collections.OrderedDict[str, None] = collections.OrderedDict()  # least recently used first
        self.max_others = max(0, cfg.display.max_sources - len(self.configured))
        self.rings = Rings(max_bytes=cfg.bus.shm_max_bytes)
        self.joins = Joins(cfg.display.join_wait_ms / 1000.0, cfg.display.join_max_pending)

    def _admit(self, msg: Message) -> bool:
        """Room for ``msg``'s source (evicting the least recently used other source), and its seq
        inside the source's window. False: rejected (counted)."""
        src = msg.src
        if src not in self.configured:
            if src in self.others:
                self.others.move_to_end(src)
            else:
                self.warn.warning("unknown_src", "messages from %r, a source not in the config", src)
                if self.max_others == 0:
                    self.stats.drop(DropReason.TOO_MANY_SOURCES)
                    return False
                while len(self.others) >= self.max_others:
                    self._evict(self.others.popitem(last=False)[0])
                self.others[src] = None
        if msg.kind == "eos":
            return True
        ok, reanchored = self.windows.setdefault(src, SeqWindow()).accept(msg.seq)
        if reanchored:
            self.log.warning("%s: numbering restarted at seq %d (%d messages in a row)", src, msg.seq, SEQ_REANCHOR)
            self.follow.pop(src, None)  # the tracker's frame order starts over with it
        if not ok:
            self.stats.drop(DropReason.SEQ_WINDOW)
            self.warn.warning(DropReason.SEQ_WINDOW, "%s#%d: seq far from the source's newest: rejected", src, msg.seq)
        return ok

    def _evict(self, src: str) -> None:
        if src in self.ledger.sources:
            self.ledger.evict(src)
        self.follow.pop(src, None)
        self.windows.pop(src, None)
        for sink in self.sinks:
            forget = getattr(sink, "forget", None)  # sinks with per-source state (video writers, web slots)
            if forget is not None:
                forget(src)
        self.stats.drop(DropReason.EVICTED_SOURCE)
        self.warn.warning("evicted", "source %r evicted: more than %d sources", src, self.cfg.display.max_sources)

    def handle(self, parts: list[Any], now: float) -> None:
        got = receive(parts, self.stats, self.warn)
        if got is None:
            return
        msg = take_pixels(got, self.rings, self.warn)  # the frame's journey ends here: its slot is freed
        if not self._admit(msg):
            return
        capture_dropped = msg.dropped if msg.kind != "eos" else None  # capture's count so far, on its frames
        if msg.kind == "eos":
            if msg.frames is None:
                self.stats.drop(DropReason.GARBAGE)
                self.warn.warning("eos", "%s: eos without a frame count ignored", msg.src)
                return
            self.ledger.eos(msg.src, msg.frames, msg.dropped or 0, now)
            self.log.info(
                "%s: end of source after %d frames (%d dropped at capture)", msg.src, msg.frames, msg.dropped or 0
            )
        elif msg.result or (
            msg.kind == "frame" and msg.wait and not is_stale(msg, self.wall(), self.cfg.bus.max_age_ms)
        ):
            frame, released = self.joins.add(msg, now)
            self.release(released, now)
            if frame is not None:
                self._show(frame, now, frame.dropped)
        elif msg.kind == "drop":
            reason = msg.reason or DropReason.UNKNOWN  # a name bus.codec does not know is UNKNOWN already
            self.ledger.drop(msg.src, reason, now, msg.seq, capture_dropped)
            self.stats.drop(reason)
            self.joins.forget(msg.src, msg.seq)  # a result already here has nothing to join
        elif is_stale(msg, self.wall(), self.cfg.bus.max_age_ms):
            self.ledger.drop(msg.src, DropReason.STALE, now, msg.seq, capture_dropped)
            self.stats.drop(DropReason.STALE)
            self.warn.warning(DropReason.STALE, "%s#%d: stale live frame dropped", msg.src, msg.seq)
            self.joins.forget(msg.src, msg.seq)
        else:
            self._show(msg, now, capture_dropped)

    def expire(self, now: float) -> None:
        """Release what has waited ``[display] join_wait_ms`` for its other half (call it often)."""
        self.release(self.joins.expire(now), now)

    def release(self, released: list[Released], now: float) -> None:
        """Show the frames that waited in vain (without emotions); count the results nobody joined."""
        for r in released:
            if r.frame is None:
                self.stats.drop(r.reason)
            else:
                self.warn.warning(
                    f"no_emotions_{r.reason}", "%s#%d: shown without emotions: %s", r.frame.src, r.frame.seq, r.reason
                )
                self._show(r.frame, now, r.frame.dropped)

    def _show(self, msg: Frame, now: float, capture_dropped: int | None) -> None:
        """Track, draw and hand a frame to every sink. Nothing raised here stops the stage: a
        failure is counted (a ``display_error`` drop, or ``sink_<name>``) and logged rate-limited."""
        try:
            if msg.src not in self.follow:
                self.follow[msg.src] = follower(self.cfg.display, msg.src in self.images)
            thumb = scene_thumb(msg, self.cfg.display.track_cut)
            tracked = self.follow[msg.src].faces(msg.seq, msg.faces, msg.labels, thumb)
            out = step(msg, self.wall(), self.draw, tracked)
        except Exception as e:  # a bug in tracking or drawing must not end the run: count it, go on
            self.ledger.drop(msg.src, DropReason.DISPLAY_ERROR, now, msg.seq, capture_dropped)
            self.stats.drop(DropReason.DISPLAY_ERROR)
            self.warn.warning(
                DropReason.DISPLAY_ERROR, "%s#%d: not shown: %s: %s", msg.src, msg.seq, type(e).__name__, e
            )
            return
        self.ledger.frame(msg.src, now, msg.seq, capture_dropped)
        self.stats.frame(msg.ts)
        self.carried[carried(msg)] += 1
        if msg.no_emotions is not None and msg.faces:
            self.stats.drop(f"no_emotions_{msg.no_emotions}")
        for sink in self.sinks:
            try:
                sink.write(msg, out.image, out.event)
            except Exception as e:  # one sink failing (disk full, a bug) must not stop the others or the stage
                self.stats.drop(f"sink_{sink.name}")
                self.warn.warning(
                    f"sink_{sink.name}",
                    "%s sink failed on %s#%d: %s: %s",
                    sink.name,
                    msg.src,
                    msg.seq,
                    type(e).__name__,
                    e,
                )

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # closing one sink must not keep the others open
                self.log.error("closing the %s sink failed: %s: %s", sink.name, type(e).__name__, e)


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
            disp.expire(now)
            stall.check(  # configured sources only: a stranger that goes quiet is not a stall
                {
                    s: c.last
                    for s, c in disp.ledger.sources.items()
                    if s in disp.configured and not c.ended and c.last > float("-inf")
                },
                now,
            )
            if cfg.display.exit_at_end and disp.ledger.done(now, cfg.display.drain_timeout_s):
                log.info("every source ended and is accounted for: exiting")
                break
    finally:
        disp.release(disp.joins.flush(), clock())
        disp.close()
        disp.ledger.finalise()
        if disp.journal is not None:  # the run is over for the display only when it ended by itself
            disp.journal.close(done=cfg.display.exit_at_end and disp.ledger.done(clock(), cfg.display.drain_timeout_s))
        log.info("final stats: %s", stats.line())
        c = disp.carried
        log.info("final frames shown: with pixels %d, thumbnail only %d, neither %d", *(c[k] for k in CARRIED))
        for line in disp.ledger.lines():
            log.info("final %s", line)
    return disp.ledger
