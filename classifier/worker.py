"""Classifier worker: frames with faces and crops in, frames with labels and probabilities out.

Consumes detector messages (``faces`` + ``crops``, image forwarded); produces the same frame with
``face.label``/``face.probs`` (in ``labels`` order, calibrated)/``face.uncertain``, ``msg.labels``,
``msg.uncertain_below`` and no crops, and sends it to the
display. ``drop`` and ``eos`` markers pass through untouched; a frame this stage cannot classify
becomes a ``drop`` marker with the reason, so the display can account for it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import numpy as np
import zmq

from bus.codec import CodecError, Message, decode, drop_marker, encode
from bus.config import Config
from bus.runtime import RateLimited, Stats
from bus.shm import Rings
from bus.sockets import recv, send, send_patiently

POLL_MS = 100


class Classifier(Protocol):
    labels: tuple[str, ...]
    size: int
    channels: int

    def classify(self, crops: np.ndarray) -> np.ndarray: ...


def is_stale(msg: Message, now: float, max_age_ms: int) -> bool:
    """A live frame older than ``max_age_ms`` (0 = never stale)."""
    return msg.kind == "frame" and msg.live and max_age_ms > 0 and (now - msg.ts) * 1000.0 > max_age_ms


def step(msg: Message, model: Classifier, uncertain_below: float = 0.0) -> Message:
    """Label every face of a frame in one batch; a face whose top probability is below
    ``uncertain_below`` is flagged ``uncertain`` (its label is kept). Pure: no sockets, no clock."""
    if msg.kind != "frame":
        return msg
    msg.labels = list(model.labels)
    msg.uncertain_below = uncertain_below
    if not msg.faces:
        msg.crops = None
        return msg
    crops = msg.crops
    if crops is None:
        return drop_marker(msg, "no_crops")
    expected = (len(msg.faces), model.size, model.size, model.channels)
    if crops.shape != expected:
        return drop_marker(msg, "crop_shape")
    probs = model.classify(crops)
    for face, p in zip(msg.faces, probs, strict=True):
        face.probs = [float(v) for v in p]
        face.label = model.labels[int(np.argmax(p))]
        face.uncertain = bool(np.max(p) < uncertain_below)
    msg.crops = None
    return msg


def run(
    cfg: Config,
    in_sock: zmq.Socket,
    out_sock: zmq.Socket,
    model: Classifier,
    stop: threading.Event,
    stats: Stats,
    log: logging.Logger,
) -> None:
    """Receive, classify, forward until ``stop`` is set; one stats line on the way out."""
    warn = RateLimited(log)
    jpeg = cfg.bus.jpeg_quality or None
    rings = Rings(max_bytes=cfg.bus.shm_max_bytes)  # opened only to free the slot of a frame not sent
    while not stop.is_set():
        stats.maybe_log()
        parts = recv(in_sock, POLL_MS)
        if parts is None:
            continue
        try:
            msg = decode(parts)
        except CodecError as e:
            stats.drop("garbage")
            warn.warning("garbage", "undecodable message dropped: %s", e)
            continue
        out = msg
        if is_stale(msg, time.time(), cfg.bus.max_age_ms):
            out = drop_marker(msg, "stale")
        elif msg.kind == "frame":
            try:
                out = step(msg, model, cfg.classifier.uncertain_below)
            except (ValueError, RuntimeError) as e:
                warn.warning("classify", "%s#%d: classification failed: %s", msg.src, msg.seq, e)
                out = drop_marker(msg, "classify_error")
        if out.kind == "frame":
            stats.frame(out.ts)
            out.t["classifier"] = time.time()
        elif out.kind == "drop" and msg.kind == "frame":
            stats.drop(out.reason or "unknown")
        try:
            wire = encode(out, jpeg)
        except CodecError as e:
            stats.drop("encode")
            warn.warning("encode", "%s#%d: cannot encode: %s", out.src, out.seq, e)
            if msg.shm is not None:
                rings.release(msg.shm)
            continue
        sent = send(out_sock, wire, block=out.kind != "frame") if out.live else send_patiently(out_sock, wire, stop)
        if not sent:
            stats.drop("send_full")
            warn.warning("send", "%s#%d: display not keeping up, %s not sent", out.src, out.seq, out.kind)
            if msg.shm is not None:
                rings.release(msg.shm)  # the display will never see it: free the slot now
    log.info("final stats: %s", stats.line())
