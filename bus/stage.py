"""The stage loop, written once: the detector and the classifier run :func:`run` with their pure
``step``; the display, where a frame's journey ends, uses its receive half (:func:`receive`,
:func:`take_pixels`, :func:`is_stale`).

What one message goes through (the backpressure rules themselves are :mod:`bus.sockets`'s):

1. poll the PULL socket for :data:`POLL_MS`, so ``stop`` is noticed within 0.1 s; when nothing
   came, the markers owed downstream (:mod:`bus.owed`) go out;
2. decode (:func:`bus.codec.decode`, which also refuses another run's messages): anything
   undecodable is counted ``garbage`` and logged, rate-limited;
3. resolve the pixels of a frame in shared memory (:mod:`bus.shm`): in place where the reference is
   passed on (:func:`view_pixels`, the detector), copied out and the slot released where the
   journey ends (:func:`take_pixels`, the display); a ring that is not there or a slot reused
   before it was read makes the frame a drop marker (``shm_missing``, ``overwritten``);
4. drop a live frame older than ``[bus] max_age_ms`` (``stale``; :func:`is_stale`, the one age check);
5. ``step``: the stage's pure function; a ``ValueError``/``RuntimeError`` it raises makes the frame
   a drop marker with the stage's reason. A frame read in place whose slot was reused meanwhile is
   ``overwritten``, never a wrong picture;
6. count: a frame (fps, latency) or a drop by reason (:class:`bus.runtime.Stats`), each drop logged
   rate-limited; ``drop`` and ``eos`` messages from upstream pass on uncounted;
7. stamp ``t[stage]`` with the wall time and encode (a frame that cannot be: ``encode``);
8. send (:class:`Sender`): live messages without blocking (frames) or bounded by the send timeout
   (markers), file-source messages patiently (:func:`bus.sockets.send_patiently`). What cannot go
   is counted (``send``) and goes on as a drop marker; a marker that cannot go either is owed and
   sent before the next message. A message that did not go frees its shared-memory slot at once:
   nothing downstream will (a later marker's release by the display is then a no-op,
   :meth:`bus.shm.Rings.release` checks the slot's generation).

Two paths (the detector with ``[detector] two_paths``, :class:`TwoPaths`): a frame with faces sends
its faces and crops to a classifier (a ``result`` request, no pixels) and then itself, without
crops, to the display, marked ``wait``; the classifier's result (or the drop marker it sends
instead) goes to the display, which joins the two by source and seq (:mod:`display.join`). A frame
without faces, and every marker and eos, goes to the display only. A request that cannot go is not
a drop: the frame goes on unmarked with ``no_emotions`` (shown without emotions, counted
``no_emotions_<reason>``). File frames wait for the classifier as the one path does, until it has
taken a first request; after that a request waits at most ``[bus] send_timeout_ms``, and once one
has timed out (a classifier dead or hung) requests go without blocking until one goes again, so a
dead classifier costs one timeout, not one per frame.

Where the pixels' journey ends before the last stage (``ends``: the detector, on two paths, when the
display draws nothing and gets frames without pixels, :func:`bus.config.display_pixels`), the stage
releases each message's shared-memory slot once it is handled and sends on no reference to it
(:func:`unshared`): frames, drop markers and eos alike, so no stage downstream, on this host or
another, ever gets a shared-memory reference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import zmq

from bus import sockets
from bus.codec import CodecError, DropReason, Frame, Message, decode, drop_marker, encode
from bus.config import Config
from bus.owed import Owed
from bus.runtime import RateLimited, Stats
from bus.shm import Rings, ShmError

POLL_MS = 100

Step = Callable[[Message], Message]


def is_stale(msg: Message, now: float, max_age_ms: int) -> bool:
    """A live frame older than ``max_age_ms`` (0 = never stale); file frames and markers never are."""
    return msg.kind == "frame" and msg.live and max_age_ms > 0 and (now - msg.ts) * 1000.0 > max_age_ms


def receive(parts: list[Any], stats: Stats, warn: RateLimited) -> Message | None:
    """The message, or None for garbage (counted and logged)."""
    try:
        return decode(parts)
    except CodecError as e:
        stats.drop(DropReason.GARBAGE)
        warn.warning(DropReason.GARBAGE, "undecodable message dropped: %s", e)
        return None


def view_pixels(msg: Message, rings: Rings, warn: RateLimited) -> Message:
    """A shared-memory frame with its pixels viewed in place (``image``; read-only: check
    :meth:`bus.shm.Rings.valid` after use), or its drop marker when they are not there. Anything
    else is returned as it is."""
    if msg.kind != "frame" or msg.shm is None:
        return msg
    try:
        return replace(msg, pixels=replace(msg.shm, view=rings.view(msg.shm)))
    except ShmError as e:
        warn.warning(e.reason, "src %s seq %d: %s", msg.src, msg.seq, e)
        return drop_marker(msg, e.reason)


def take_pixels(msg: Message, rings: Rings, warn: RateLimited) -> Message:
    """Where the journey ends: a shared-memory frame with its pixels copied out, or its drop marker
    when they are gone or were overwritten while copied; the slot of any message (frame or marker)
    is released."""
    ref = msg.shm
    if ref is None:
        return msg
    try:
        out = view_pixels(msg, rings, warn)
        if out.kind != "frame" or msg.kind != "frame":
            return out
        copied = replace(out, pixels=np.array(out.image))
        return copied if rings.valid(ref) else drop_marker(msg, DropReason.OVERWRITTEN)
    finally:
        rings.release(ref)


def unshared(msg: Message) -> Message:
    """``msg`` without a shared-memory reference (a frame that had one then goes without pixels)."""
    if msg.shm is None:
        return msg
    return replace(msg, pixels=None) if msg.kind == "frame" else replace(msg, shm=None)


class Sender:
    """A stage's sending side: the send policy, drop markers for what cannot go, the markers owed
    (:mod:`bus.owed`), and the shared-memory slots of what went nowhere."""

    def __init__(
        self,
        stage: str,
        sock: zmq.Socket,
        stop: threading.Event,
        stats: Stats,
        warn: RateLimited,
        rings: Rings,
        jpeg: int | None = None,
    ):
        self.stage, self.sock, self.stop, self.stats, self.warn, self.rings = stage, sock, stop, stats, warn, rings
        self.jpeg = jpeg
        self.owed = Owed()

    def _now(self, parts: list[Any]) -> bool:
        return sockets.send(self.sock, parts, block=False)

    def idle(self) -> None:
        """Send what is owed, without blocking."""
        self.owed.flush(self._now)

    def send(self, out: Message) -> bool:
        """Stamp, encode and send ``out`` (see the module docstring); False when it did not go."""
        self.idle()
        out.t[self.stage] = time.time()
        try:
            parts = encode(out, self.jpeg)
        except CodecError as e:
            self.stats.drop(DropReason.ENCODE)
            self.warn.warning(DropReason.ENCODE, "src %s seq %d: cannot encode: %s", out.src, out.seq, e)
            self._instead(out, DropReason.ENCODE, None)
            return False
        sent = (
            sockets.send(self.sock, parts, block=out.kind != "frame")
            if out.live
            else sockets.send_patiently(self.sock, parts, self.stop)
        )
        if sent:
            return True
        self.stats.drop(DropReason.SEND)
        self.warn.warning(
            DropReason.SEND, "src %s seq %d (%s) not sent: downstream full or absent", out.src, out.seq, out.kind
        )
        self._instead(out, DropReason.SEND, parts)
        return False

    def _instead(self, out: Message, reason: DropReason, parts: list[bytes | memoryview] | None) -> None:
        """``out`` did not go: free its slot, and send its marker (a frame's, or the drop/eos
        itself), now or later."""
        if out.shm is not None:
            self.rings.release(out.shm)
        marker = encode(drop_marker(out, reason)) if out.kind == "frame" else parts
        if marker is not None and not sockets.send(self.sock, marker, block=not out.live):
            self.owed.add(marker)

    def close(self, log: logging.Logger) -> None:
        """A last try at what is owed; what still is, is logged."""
        self.idle()
        if len(self.owed) or self.owed.forgotten:
            log.warning(
                "%d drop/eos message(s) never sent downstream (%d forgotten)", len(self.owed), self.owed.forgotten
            )


class TwoPaths:
    """The detector's two paths (see the module docstring): requests to ``classifier``, frames,
    markers and eos to the display through ``display`` (a :class:`Sender`, with its policy)."""

    def __init__(self, classifier: zmq.Socket, display: Sender):
        self.sock, self.display = classifier, display
        self.taken = False  # a classifier took a request (before: file requests wait as frames do)
        self.absent = False  # a request timed out: send without blocking until one goes

    def send(self, out: Message) -> bool:
        """Send ``out`` by its path(s); False when the frame (or marker) did not reach the display."""
        if out.kind == "frame" and out.faces and out.crops is not None:
            reason = self.request(out)
            out = replace(out, crops=None, wait=reason is None, no_emotions=reason)
        return self.display.send(out)

    def request(self, frame: Frame) -> DropReason | None:
        """Send ``frame``'s faces and crops to a classifier; None when they went, else why not (counted)."""
        d = self.display
        req = Frame(frame.src, frame.seq, frame.ts, frame.live, faces=frame.faces, crops=frame.crops, result=True)
        req.t = {**frame.t, d.stage: time.time()}
        reason = None
        try:
            parts = encode(req)
        except CodecError as e:
            reason = DropReason.ENCODE
            d.warn.warning("no_emotions_encode", "src %s seq %d: request not encoded: %s", frame.src, frame.seq, e)
        else:
            if frame.live or self.absent:
                sent = sockets.send(self.sock, parts, block=False)
            elif not self.taken:
                sent = sockets.send_patiently(self.sock, parts, d.stop)
            else:
                sent = sockets.send(self.sock, parts, block=True)
            self.taken = self.taken or sent
            if not frame.live:
                self.absent = not sent
            if not sent:
                reason = DropReason.SEND
                d.warn.warning(
                    "no_emotions_send", "src %s seq %d: no classifier took its crops: no emotions", frame.src, frame.seq
                )
        if reason is not None:
            d.stats.drop(f"no_emotions_{reason}")
        return reason


def handle(
    msg: Message,
    step: Step,
    error: DropReason,
    now: float,
    max_age_ms: int,
    stats: Stats,
    warn: RateLimited,
    rings: Rings | None = None,
) -> Message:
    """One decoded message that arrived at wall time ``now`` through pixels (in place, when
    ``rings`` is given), age check and ``step``, counted: what goes downstream."""
    if msg.kind != "frame":
        return msg
    got = view_pixels(msg, rings, warn) if rings is not None else msg
    out: Message
    if got.kind != "frame":
        out = got
    elif is_stale(got, now, max_age_ms):
        out = drop_marker(got, DropReason.STALE)
    else:
        try:
            out = step(got)
        except (ValueError, RuntimeError) as e:
            warn.warning(error, "src %s seq %d: %s: %s", msg.src, msg.seq, error, e)
            out = drop_marker(got, error)
        if rings is not None and got.shm is not None and out.kind == "frame" and not rings.valid(got.shm):
            out = drop_marker(got, DropReason.OVERWRITTEN)  # capture reused the slot while we read it (RECLAIM_S)
    if out.kind == "frame":
        stats.frame(msg.ts)
    else:
        reason = out.reason if out.kind == "drop" else DropReason.UNKNOWN
        stats.drop(reason)
        warn.warning(reason, "src %s seq %d dropped: %s", msg.src, msg.seq, reason)
    return out


def run(
    cfg: Config,
    stage: str,
    in_sock: zmq.Socket,
    out_sock: zmq.Socket,
    step: Step,
    error: DropReason,
    stop: threading.Event,
    stats: Stats,
    log: logging.Logger,
    pixels: bool = False,
    display_sock: zmq.Socket | None = None,
    ends: bool = False,
) -> None:
    """Move messages until ``stop`` (see the module docstring); one ``final stats`` line on the way
    out. ``error``: the drop reason of a frame ``step`` raised on; ``pixels``: ``step`` reads the
    pixels of shared-memory frames (they are looked up in place and passed on as references);
    ``display_sock``: two paths (:class:`TwoPaths`), ``out_sock`` then takes only the requests;
    ``ends``: the pixels' journey ends here (see the module docstring)."""
    warn = RateLimited(log)
    rings = Rings(max_bytes=cfg.bus.shm_max_bytes)
    jpeg = cfg.bus.jpeg_quality or None
    sender = Sender(stage, out_sock if display_sock is None else display_sock, stop, stats, warn, rings, jpeg)
    send = sender.send if display_sock is None else TwoPaths(out_sock, sender).send
    while not stop.is_set():
        stats.maybe_log()
        parts = sockets.recv(in_sock, POLL_MS)
        if parts is None:
            sender.idle()
            continue
        msg = receive(parts, stats, warn)
        if msg is not None:
            got = rings if pixels else None
            out = handle(msg, step, error, time.time(), cfg.bus.max_age_ms, stats, warn, got)
            if ends and msg.shm is not None:
                rings.release(msg.shm)  # handled: nothing downstream reads these pixels
                out = unshared(out)
            send(out)
    sender.close(log)
    log.info("final stats: %s", stats.line())
