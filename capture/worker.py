"""Capture worker: one thread per source reads frames and pushes them downstream.

Consumes opened :mod:`capture.sources`; produces ``frame`` messages (image, src, seq, ts, live,
``t["capture"]``) and, when a source ends, one ``eos`` message with ``frames`` read and ``dropped``
(frames capture itself could not send). Each source thread has its own sender (its own PUSH
socket: ZeroMQ sockets are not shared between threads) and its own seq counter.

Sending policy: live frames never block (a full queue drops them, counted); file frames block up to
``[bus] send_timeout_ms``. A file source waits (up to :data:`PEER_WAIT_S`) for the first frame to go
through, so a detector that is still loading its model does not cost the start of the video. After
every source has ended the worker lingers ``[capture] eof_linger_s`` (cut short by stop) so that,
under honcho, the display exits first once everything is accounted for.

Restarts within one run (``EMOSTREAM_RUN``, set by the process manager): each source's progress
(frames read, frames dropped) is kept in the private runtime directory (:class:`Progress`), written
*before* a frame is sent. A capture restarted after a crash or ``kill -9`` skips the frames its
predecessor read and goes on from the next seq, so the display gets no frame twice; a frame that was
in flight when capture died is lost, never repeated. The eos counts every frame of the run.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
import zmq

from bus import sockets
from bus.codec import CodecError, DropReason, Eos, Frame, Message, encode
from bus.config import Config
from bus.runtime import RateLimited, RuntimeDirError, Stats, close_run_file, open_run_file
from bus.shm import DEFAULT_MAX_BYTES, Ring, sweep
from bus.shm import create as create_ring
from capture.sources import Source, Unreadable

log = logging.getLogger("capture")

PEER_WAIT_S = sockets.PEER_WAIT_S  # a file source's first frame / eos keeps retrying this long for a peer
READ_TIMEOUT_S = 0.2  # a live source's read wait: how often a source thread notices stop
DRAIN_S = 1.0  # at exit, frames still on their way get this long to be released before the rings go

Send = Callable[[Message, bool], bool]  # (message, block) -> sent


def frame_message(source: Source, seq: int, image: np.ndarray, ts: float) -> Frame:
    path = getattr(source, "last_path", None)  # folder and image sources name each frame's file
    return Frame(src=source.id, seq=seq, ts=ts, live=source.live, pixels=image, path=path, t={"capture": time.time()})


def eos_message(source: Source, frames: int, dropped: int) -> Eos:
    return Eos(
        src=source.id,
        seq=frames,
        ts=time.time(),
        live=source.live,
        frames=frames,
        dropped=dropped,
        t={"capture": time.time()},
    )


def socket_sender(sock: zmq.Socket, jpeg_quality: int) -> Send:
    """A sender over one PUSH socket (to be used by one thread only)."""
    limited = RateLimited(log)

    def send(msg: Message, block: bool) -> bool:
        try:
            parts = encode(msg, jpeg_quality or None)
        except CodecError as e:
            limited.warning("encode", "source %s seq %d: cannot encode: %s", msg.src, msg.seq, e)
            return False
        return sockets.send(sock, parts, block)

    return send


def printer(out: TextIO, lock: threading.Lock) -> Send:
    """A sender that prints one JSON line per message header instead of sending (``--print``)."""

    def send(msg: Message, block: bool) -> bool:
        line: dict[str, object] = {"kind": msg.kind, "src": msg.src, "seq": msg.seq, "ts": round(msg.ts, 6)}
        if msg.kind == "frame":
            ref, image = msg.shm, msg.image
            if ref is not None:
                line["shape"] = list(ref.shape)
            elif image is not None:
                line["shape"] = list(image.shape)
        if msg.kind == "eos":
            line.update(frames=msg.frames, dropped=msg.dropped)
        with lock:
            print(json.dumps(line), file=out, flush=True)
        return True

    return send


class Pixels:
    """Where one source's pixels travel: a shared-memory :class:`~bus.shm.Ring` of ``slots`` frames
    (made at the first frame, sized for it, at most ``max_bytes``: :func:`bus.shm.create`), or in
    the message (``slots = 0``, a frame larger than the first, or no room for a ring: said once).
    The ring is the bound on frames in flight: when every slot is busy, a live source drops the
    frame at once and a file source waits up to ``wait_s`` for a slot, then drops it -- the same
    policy as a full socket, and no queue anywhere grows meanwhile. A live frame's slot is taken
    back after ``live_reclaim_s`` (``[bus] max_age_ms``: it is stale everywhere by then); a frame
    that could not be sent gives its slot back at once (:meth:`release`)."""

    def __init__(
        self,
        slots: int,
        wait_s: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        live_reclaim_s: float | None = None,
        max_pixels: int = 0,
    ):
        self.slots, self.wait_s, self.max_bytes, self.live_reclaim_s = slots, wait_s, max_bytes, live_reclaim_s
        self.max_pixels = max_pixels  # 0: no limit
        self.ring: Ring | None = None
        self.off: str | None = None  # why there is no ring (pixels travel in the messages)

    def fit(self, image: np.ndarray) -> np.ndarray | None:
        """A copy of ``image`` downscaled (aspect kept) to at most ``max_pixels``; None when it fits."""
        h, w = image.shape[:2]
        if not self.max_pixels or h * w <= self.max_pixels:
            return None
        scale = (self.max_pixels / (h * w)) ** 0.5
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def attach(self, msg: Frame, live: bool, stop: threading.Event) -> bool:
        """Put ``msg``'s pixels in the ring (then ``msg.pixels`` is the slot's reference); False: no
        free slot in time (a drop)."""
        image = msg.image
        if self.slots == 0 or image is None or self.off is not None:
            return True
        if self.ring is None:
            try:
                self.ring = create_ring(
                    self.slots, image.nbytes, self.max_bytes, reclaim_s=self.live_reclaim_s if live else None
                )
            except OSError as e:  # no room (ShmSpaceError), or no usable directory: one line, then run without
                self.off = e.strerror or str(e)
                log.warning("source %s: no shared-memory ring: %s", msg.src, self.off)
                return True
            if self.ring.note:
                log.warning("source %s: shared-memory ring of %s", msg.src, self.ring.note)
        if not self.ring.fits(image):
            return True  # travels in the message
        ref = self.ring.put(image, 0.0 if live else self.wait_s, stop)
        if ref is None:
            return False
        msg.pixels = ref
        return True

    def release(self, msg: Frame) -> None:
        """``msg`` was not sent: its slot is free again at once (not after a reclaim timeout)."""
        if msg.shm is not None and self.ring is not None:
            self.ring.release(msg.shm)

    def close(self, drain_s: float = 0.0) -> None:
        """Remove the ring, after up to ``drain_s`` for the frames still on their way to be released
        (a reader that had not mapped the ring yet would find it gone and drop them)."""
        if self.ring is not None:
            self.ring.drain(drain_s)
            self.ring.close()


class _Shared:
    """Stats and warnings shared by the source threads (guarded by one lock)."""

    def __init__(self, stats: Stats):
        self.stats, self.lock, self.limited = stats, threading.Lock(), RateLimited(log)

    def frame(self, ts: float) -> None:
        with self.lock:
            self.stats.frame(ts)

    def drop(self, reason: str, warning: str, *args: object) -> None:
        with self.lock:
            self.stats.drop(reason)
            self.limited.warning(reason, warning, *args)

    def note(self, key: str, warning: str, *args: object) -> None:
        """A rate-limited warning about a frame that still goes on (not a drop)."""
        with self.lock:
            self.limited.warning(key, warning, *args)


class Progress:
    """One source's place in the current run, on disk: ``<runtime dir>/progress/<hash of run, source
    id, uri>``, 16 bytes (frames read, frames dropped) rewritten in place with one ``pwrite`` (a killed
    process cannot tear it). Without a run id (``run = ""``) it keeps nothing: an unrelated later run
    must never resume from it. Files of runs long over are swept (:func:`bus.runtime.open_run_file`)."""

    RECORD = struct.Struct("<QQ")

    def __init__(self, run: str, source_id: str, uri: str, base: Path | None = None):
        self.frames = self.dropped = 0
        self.fd: int | None = None
        if not run:
            return
        self.path, self.fd = open_run_file("progress", "\0".join((run, source_id, uri)), base=base)
        raw = os.pread(self.fd, self.RECORD.size, 0)
        if len(raw) == self.RECORD.size:
            self.frames, self.dropped = self.RECORD.unpack(raw)

    def save(self, frames: int, dropped: int) -> None:
        if self.fd is not None:
            os.pwrite(self.fd, self.RECORD.pack(frames, dropped), 0)

    def close(self, done: bool) -> None:
        """``done``: the run is over for this capture (a clean exit): forget the progress."""
        if self.fd is not None:
            close_run_file(self.path, self.fd, done)
            self.fd = None


def progress_for(run: str, source: Source) -> Progress:
    """The source's :class:`Progress` in ``run``; a runtime directory that cannot be used costs only
    the resuming (logged), never the run."""
    try:
        return Progress(run, source.id, source.uri)
    except (OSError, RuntimeDirError) as e:
        log.warning("source %s: cannot keep its progress (a restart would replay it): %s", source.id, e)
        return Progress("", source.id, source.uri)


def _send_patiently(send: Send, msg: Message, stop: threading.Event, wait_s: float) -> bool:
    """Blocking sends (each up to the socket's send timeout) until one succeeds, stop, or ``wait_s``."""
    return sockets.retry(lambda: send(msg, True), stop, wait_s)


def pump(
    source: Source,
    send: Send,
    stop: threading.Event,
    shared: _Shared,
    realtime: bool,
    peer_wait_s: float = PEER_WAIT_S,
    pixels: Pixels | None = None,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Read ``source`` until it ends or ``stop``; send every frame, then eos. Returns (frames, dropped).
    With ``progress`` from an earlier capture of this run, go on after its last frame."""
    progress = progress or Progress("", source.id, source.uri)
    frames, dropped = progress.frames, progress.dropped
    downscaled = 0
    if frames:
        skipped = source.skip(frames)
        log.info(
            "source %s: restarted within this run: going on at frame %d (%d skipped, %d dropped before)",
            source.id,
            frames,
            skipped,
            dropped,
        )
    first = True
    pixels = pixels or Pixels(0, 0.0)
    period = 1.0 / source.fps
    pace = realtime and not source.live
    due: float | None = None
    while not stop.is_set():
        if pace:
            now = time.monotonic()
            due = now if due is None or now > due + period else due  # more than a frame late: start over
            if due > now and stop.wait(due - now):
                break
            due += period
        try:
            got = source.read(READ_TIMEOUT_S)
        except Unreadable as e:
            shared.drop(DropReason.UNREADABLE, "source %s: skipped %s", source.id, e)
            continue
        if got is None:
            if source.ended:
                break
            continue
        image, ts = got
        smaller = pixels.fit(image)
        if smaller is not None:
            downscaled += 1
            shared.note(
                "downscaled",
                "source %s: frame %d of %dx%d downscaled to %dx%d ([bus] max_frame_pixels = %d)",
                source.id,
                frames,
                image.shape[1],
                image.shape[0],
                smaller.shape[1],
                smaller.shape[0],
                pixels.max_pixels,
            )
            image = smaller
        msg = frame_message(source, frames, image, ts)
        msg.dropped = dropped  # capture's drops so far: accounted for even if no eos ever comes
        frames += 1
        progress.save(frames, dropped)  # before sending: after a kill, this frame is lost, not repeated
        if not pixels.attach(msg, source.live, stop):
            dropped += 1
            progress.save(frames, dropped)
            shared.drop(
                DropReason.RING_FULL, "source %s: frame %d dropped: every shared-memory slot busy", source.id, msg.seq
            )
            continue
        if source.live:
            sent = send(msg, False)
        elif first:
            sent = _send_patiently(send, msg, stop, peer_wait_s)
        else:
            sent = send(msg, True)
        first = False
        if sent:
            shared.frame(ts)
        else:
            pixels.release(msg)
            dropped += 1
            progress.save(frames, dropped)
            shared.drop(DropReason.SEND, "source %s: frame %d not sent (downstream full or absent)", source.id, msg.seq)
    if source.ended:
        if not _send_patiently(send, eos_message(source, frames, dropped), stop, peer_wait_s):
            shared.drop(DropReason.EOS, "source %s: end-of-stream marker not sent", source.id)
        log.info("source %s ended: %d frames, %d not sent, %d downscaled", source.id, frames, dropped, downscaled)
    return frames, dropped


def run(
    cfg: Config,
    sources: Sequence[Source],
    senders: Sequence[Send],
    stop: threading.Event,
    stats: Stats,
    linger_s: float | None = None,
    peer_wait_s: float = PEER_WAIT_S,
    shm: bool = True,
    run_id: str = "",
) -> None:
    """Pump every source in its own thread; when all have ended, linger (``eof_linger_s``) unless stopped.
    With ``run_id``, each source resumes where an earlier capture of the same run left it."""
    shared = _Shared(stats)
    progress = [progress_for(run_id, src) for src in sources]
    realtime = {s.id: s.realtime for s in cfg.capture.sources}
    slots = cfg.bus.shm_slots if cfg.bus.jpeg_quality == 0 and shm else 0
    if slots and (n := sweep()):
        log.info("removed %d shared-memory ring(s) left by a capture that died", n)
    b = cfg.bus
    live_reclaim_s = b.max_age_ms / 1000.0 if b.max_age_ms > 0 else None
    pixels = [
        Pixels(slots, b.send_timeout_ms / 1000.0, b.shm_max_bytes, live_reclaim_s, b.max_frame_pixels) for _ in sources
    ]
    threads = [
        threading.Thread(
            target=pump,
            name=f"source-{src.id}",
            daemon=True,
            args=(src, send, stop, shared, realtime.get(src.id, True), peer_wait_s, px, pr),
        )
        for src, send, px, pr in zip(sources, senders, pixels, progress, strict=True)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.1)
        with shared.lock:
            stats.maybe_log()
    linger = cfg.capture.eof_linger_s if linger_s is None else linger_s
    if not stop.is_set() and linger > 0:
        log.info("all sources ended; staying up %.0f s so downstream can drain", linger)
        stop.wait(linger)
    deadline = time.monotonic() + DRAIN_S
    for px in pixels:  # after the linger: frames still in flight keep their pixels until then
        px.close(max(0.0, deadline - time.monotonic()))
    for pr in progress:  # a clean exit ends this capture's part of the run (a crash never gets here)
        pr.close(done=True)
    log.info("final stats: %s", stats.line())
