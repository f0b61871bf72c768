"""Detector worker: frames in, frames with faces and face crops out.

Consumes ``frame`` messages from capture; produces the same frame (image forwarded: the display
draws on it; a frame in shared memory, :mod:`bus.shm`, is read in place and forwarded as its
reference) with ``faces`` (left to right) and ``crops`` (one ``size x size x C`` uint8 crop per
face, made by :func:`bus.preprocess.crop_face` for the classifier model's sidecar spec), stamped
``t["detector"]`` when sent. Stale live frames and frames that cannot be processed become ``drop``
markers with a ``reason``; ``drop`` and ``eos`` messages are passed on unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import numpy as np
import zmq

from bus import sockets
from bus.codec import CodecError, Face, Message, decode, drop_marker, encode
from bus.config import Config
from bus.owed import Owed
from bus.preprocess import crop_face, eye_angle, to_uint8_bgr
from bus.runtime import RateLimited, Stats
from bus.shm import Rings, ShmError
from bus.sidecar import ModelSpec

log = logging.getLogger("detector")

POLL_MS = 100


class Backend(Protocol):
    excess: int  # faces dropped so far because a frame had more than max_faces

    def detect(self, bgr: np.ndarray) -> list[Face]: ...


def step(msg: Message, backend: Backend, spec: ModelSpec, max_age_ms: int, now: float, align: bool = False) -> Message:
    """One message in, one out (pure: no sockets, no clock; ``now`` is the wall time it arrived).
    With ``align`` each crop is rotated so the face's eyes are level (:func:`bus.preprocess.eye_angle`)."""
    if msg.kind != "frame":
        return msg
    if msg.live and max_age_ms > 0 and (now - msg.ts) * 1000.0 > max_age_ms:
        return drop_marker(msg, "stale")
    if msg.image is None:
        return drop_marker(msg, "no_image")
    try:
        image = to_uint8_bgr(msg.image)
    except ValueError:
        return drop_marker(msg, "bad_image")
    try:
        faces = backend.detect(image)
    except (ValueError, RuntimeError):
        return drop_marker(msg, "detect_error")
    crops = None  # no faces, no crops part (bus.codec cannot encode an empty crops array)
    try:
        if faces:
            colour = spec.colour
            crops = np.stack(
                [
                    crop_face(image, f.box, spec.size, colour, spec.crop_margin, eye_angle(f.kp) if align else 0.0)  # type: ignore[arg-type]
                    for f in faces
                ]
            )
    except ValueError:  # a box that is not a number
        return drop_marker(msg, "crop_error")
    return Message(
        src=msg.src,
        seq=msg.seq,
        ts=msg.ts,
        live=msg.live,
        image=image,
        jpeg=msg.jpeg,
        shm=msg.shm,
        path=msg.path,
        faces=faces,
        crops=crops,
        t=dict(msg.t),
        dropped=msg.dropped,
    )


def run(
    cfg: Config,
    in_sock: zmq.Socket,
    out_sock: zmq.Socket,
    backend: Backend,
    stop: threading.Event,
    stats: Stats,
    spec: ModelSpec,
) -> None:
    """Move messages until ``stop``: receive, decode, :func:`step`, encode, send; count every drop."""
    limited = RateLimited(log)
    jpeg = cfg.bus.jpeg_quality or None
    rings = Rings(max_bytes=cfg.bus.shm_max_bytes)
    owed = Owed()
    while not stop.is_set():
        parts = sockets.recv(in_sock, POLL_MS)
        stats.maybe_log()
        if parts is None:
            owed.flush(lambda p: sockets.send(out_sock, p, block=False))
            continue
        try:
            msg = decode(parts)
        except CodecError as e:
            stats.drop("decode")
            limited.warning("decode", "undecodable message dropped: %s", e)
            continue
        excess = backend.excess
        out = _step_shared(msg, rings, limited) or step(
            msg, backend, spec, cfg.bus.max_age_ms, time.time(), cfg.detector.align
        )
        if msg.shm is not None and out.kind == "frame" and not rings.valid(msg.shm):
            out = drop_marker(msg, "overwritten")  # capture reused the slot while we read it (RECLAIM_S)
        if backend.excess > excess:
            stats.drop("excess_faces", backend.excess - excess)
        if out.kind == "drop" and msg.kind == "frame":
            stats.drop(out.reason or "?")
            limited.warning(out.reason or "?", "src %s seq %d dropped: %s", msg.src, msg.seq, out.reason)
        elif out.kind == "frame":
            stats.frame(msg.ts)
        if not _forward(out, out_sock, jpeg, stats, limited, stop, owed) and msg.shm is not None:
            rings.release(msg.shm)  # nothing went on that could release the slot downstream: free it now
    owed.flush(lambda p: sockets.send(out_sock, p, block=False))
    if len(owed) or owed.forgotten:
        log.warning("%d drop/eos message(s) never sent downstream (%d forgotten)", len(owed), owed.forgotten)
    log.info("final stats: %s", stats.line())


def _step_shared(msg: Message, rings: Rings, limited: RateLimited) -> Message | None:
    """Point a shared-memory frame's ``image`` at its pixels; a drop marker when they are not there."""
    if msg.shm is None or msg.kind != "frame":
        return None
    try:
        msg.image = rings.view(msg.shm)
    except ShmError as e:
        limited.warning(e.reason, "src %s seq %d: %s", msg.src, msg.seq, e)
        return drop_marker(msg, e.reason)
    return None


def _forward(
    out: Message,
    sock: zmq.Socket,
    jpeg: int | None,
    stats: Stats,
    limited: RateLimited,
    stop: threading.Event,
    owed: Owed,
) -> bool:
    """Send ``out``: live frames without blocking, file-source messages patiently (a late downstream
    stage gets them); a frame that cannot be sent goes on as a drop marker, and a marker that
    cannot be sent either is owed (:mod:`bus.owed`), as is a drop or eos that could not go.
    False: neither the message nor its marker went now (the caller frees a shared-memory slot; the
    owed marker's release later is then a no-op, :meth:`bus.shm.Rings.release` checks the generation)."""
    owed.flush(lambda p: sockets.send(sock, p, block=False))
    out.t["detector"] = time.time()
    try:
        parts = encode(out, jpeg)
    except CodecError as e:
        limited.warning("encode", "src %s seq %d: cannot encode: %s", out.src, out.seq, e)
        parts = None
    if parts is not None:
        if out.live:
            if sockets.send(sock, parts, block=out.kind != "frame"):
                return True
        elif sockets.send_patiently(sock, parts, stop):
            return True
    stats.drop("send")
    limited.warning("send", "src %s seq %d (%s) not sent: downstream full or absent", out.src, out.seq, out.kind)
    marker = encode(drop_marker(out, "send")) if out.kind == "frame" else parts
    if marker is not None and sockets.send(sock, marker, block=not out.live):
        return True
    if marker is not None:
        owed.add(marker)
    return False
