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
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import numpy as np
import zmq

from bus import sockets
from bus.codec import CodecError, Message, encode
from bus.config import Config
from bus.runtime import RateLimited, Stats
from bus.shm import Ring, sweep
from capture.sources import Source, Unreadable

log = logging.getLogger("capture")

PEER_WAIT_S = sockets.PEER_WAIT_S  # a file source's first frame / eos keeps retrying this long for a peer
READ_TIMEOUT_S = 0.2  # a live source's read wait: how often a source thread notices stop

Send = Callable[[Message, bool], bool]  # (message, block) -> sent


def frame_message(source: Source, seq: int, image: np.ndarray, ts: float) -> Message:
    path = getattr(source, "last_path", None)  # folder and image sources name each frame's file
    return Message(src=source.id, seq=seq, ts=ts, live=source.live, image=image, path=path, t={"capture": time.time()})


def eos_message(source: Source, frames: int, dropped: int) -> Message:
    return Message(
        src=source.id,
        seq=frames,
        ts=time.time(),
        kind="eos",
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
        if msg.image is not None:
            line["shape"] = list(msg.image.shape)
        if msg.kind == "eos":
            line.update(frames=msg.frames, dropped=msg.dropped)
        with lock:
            print(json.dumps(line), file=out, flush=True)
        return True

    return send


class Pixels:
    """Where one source's pixels travel: a shared-memory :class:`~bus.shm.Ring` of ``slots`` frames
    (made at the first frame, sized for it), or in the message (``slots = 0``, or a frame larger
    than the first). The ring is the bound on frames in flight: when every slot is busy, a live
    source drops the frame at once and a file source waits up to ``wait_s`` for a slot, then drops
    it -- the same policy as a full socket, and no queue anywhere grows meanwhile."""

    def __init__(self, slots: int, wait_s: float):
        self.slots, self.wait_s = slots, wait_s
        self.ring: Ring | None = None

    def attach(self, msg: Message, live: bool, stop: threading.Event) -> bool:
        """Put ``msg``'s pixels in the ring (``msg.shm``); False: no free slot in time (a drop)."""
        image = msg.image
        if self.slots == 0 or image is None:
            return True
        if self.ring is None:
            self.ring = Ring(self.slots, image.nbytes)
        if not self.ring.fits(image):
            return True  # travels in the message
        msg.shm = self.ring.put(image, 0.0 if live else self.wait_s, stop)
        return msg.shm is not None

    def close(self) -> None:
        if self.ring is not None:
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
) -> tuple[int, int]:
    """Read ``source`` until it ends or ``stop``; send every frame, then eos. Returns (frames, dropped)."""
    frames = dropped = 0
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
            shared.drop("unreadable", "source %s: skipped %s", source.id, e)
            continue
        if got is None:
            if source.ended:
                break
            continue
        image, ts = got
        msg = frame_message(source, frames, image, ts)
        frames += 1
        if not pixels.attach(msg, source.live, stop):
            dropped += 1
            shared.drop("ring_full", "source %s: frame %d dropped: every shared-memory slot busy", source.id, msg.seq)
            continue
        if source.live:
            sent = send(msg, False)
        elif frames == 1:
            sent = _send_patiently(send, msg, stop, peer_wait_s)
        else:
            sent = send(msg, True)
        if sent:
            shared.frame(ts)
        else:
            dropped += 1
            shared.drop("send", "source %s: frame %d not sent (downstream full or absent)", source.id, msg.seq)
    if source.ended:
        if not _send_patiently(send, eos_message(source, frames, dropped), stop, peer_wait_s):
            shared.drop("eos", "source %s: end-of-stream marker not sent", source.id)
        log.info("source %s ended: %d frames, %d not sent", source.id, frames, dropped)
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
) -> None:
    """Pump every source in its own thread; when all have ended, linger (``eof_linger_s``) unless stopped."""
    shared = _Shared(stats)
    realtime = {s.id: s.realtime for s in cfg.capture.sources}
    slots = cfg.bus.shm_slots if cfg.bus.jpeg_quality == 0 and shm else 0
    if slots and (n := sweep()):
        log.info("removed %d shared-memory ring(s) left by a capture that died", n)
    pixels = [Pixels(slots, cfg.bus.send_timeout_ms / 1000.0) for _ in sources]
    threads = [
        threading.Thread(
            target=pump,
            name=f"source-{src.id}",
            daemon=True,
            args=(src, send, stop, shared, realtime.get(src.id, True), peer_wait_s, px),
        )
        for src, send, px in zip(sources, senders, pixels, strict=True)
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
    for px in pixels:  # after the linger: frames still in flight keep their pixels until then
        px.close()
    log.info("final stats: %s", stats.line())
