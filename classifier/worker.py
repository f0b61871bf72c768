"""Classifier worker: frames with faces and crops in, frames with labels and probabilities out.

Consumes detector messages (``faces`` + ``crops``, image forwarded); produces the same frame with
``face.label``/``face.probs`` (in ``labels`` order, calibrated)/``face.uncertain``, ``msg.labels``,
``msg.uncertain_below`` and no crops, and sends it to the
display. ``drop`` and ``eos`` markers pass through untouched; a frame this stage cannot classify
becomes a ``drop`` marker with the reason, so the display can account for it. The loop around
:func:`step` (age, sending, markers) is :mod:`bus.stage`'s. With two paths the detector sends only
faces and crops (a ``result`` request, no pixels): the answer is a ``result`` frame (labelled faces,
no pixels), or a ``result`` drop marker, which the display joins to the frame it got directly.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Protocol

import msgspec
import numpy as np
import zmq

from bus import stage
from bus.codec import DropReason, Message, drop_marker
from bus.config import Config
from bus.runtime import Stats


class Classifier(Protocol):
    labels: tuple[str, ...]
    size: int
    channels: int

    def classify(self, crops: np.ndarray) -> np.ndarray: ...


def step(msg: Message, model: Classifier, uncertain_below: float = 0.0) -> Message:
    """Label every face of a frame in one batch; a face whose top probability is below
    ``uncertain_below`` is flagged ``uncertain`` (its label is kept). Pure: no sockets, no clock,
    and ``msg`` is left as it was (the result is a new message with new faces)."""
    if msg.kind != "frame":
        return msg
    if msg.faces and msg.crops is None:
        return drop_marker(msg, DropReason.NO_CROPS)
    if msg.faces:
        assert msg.crops is not None
        expected = (len(msg.faces), model.size, model.size, model.channels)
        if msg.crops.shape != expected:
            return drop_marker(msg, DropReason.CROP_SHAPE)
        probs = model.classify(msg.crops)
        faces = [
            msgspec.structs.replace(
                face,
                probs=[float(v) for v in p],
                label=model.labels[int(np.argmax(p))],
                uncertain=bool(np.max(p) < uncertain_below),
            )
            for face, p in zip(msg.faces, probs, strict=True)
        ]
    else:
        faces = []
    return replace(
        msg, faces=faces, crops=None, labels=list(model.labels), uncertain_below=uncertain_below, t=dict(msg.t)
    )


def run(
    cfg: Config,
    in_sock: zmq.Socket,
    out_sock: zmq.Socket,
    model: Classifier,
    stop: threading.Event,
    stats: Stats,
    log: logging.Logger,
) -> None:
    """Run :func:`bus.stage.run` with :func:`step` until ``stop``; a model that raises on a frame
    makes it a ``classify_error`` drop."""
    below = cfg.classifier.uncertain_below
    stage.run(
        cfg,
        "classifier",
        in_sock,
        out_sock,
        lambda m: step(m, model, below),
        DropReason.CLASSIFY_ERROR,
        stop,
        stats,
        log,
    )
