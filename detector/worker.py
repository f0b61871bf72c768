"""Detector worker: frames in, frames with faces and face crops out.

Consumes ``frame`` messages from capture; produces the same frame (image forwarded: the display
draws on it; a frame in shared memory, :mod:`bus.shm`, is read in place and forwarded as its
reference) with ``faces`` (left to right) and ``crops`` (one ``size x size x C`` uint8 crop per
face, made by :func:`bus.preprocess.crop_face` for the classifier model's sidecar spec), stamped
``t["detector"]`` when sent. Frames that cannot be processed become ``drop`` markers with a
``reason``; ``drop`` and ``eos`` messages are passed on unchanged. The loop around :func:`step`
(pixels, age, sending, markers) is :mod:`bus.stage`'s. With two paths (``[detector] two_paths``,
:class:`bus.stage.TwoPaths`) the faces and crops go to the classifier and the frame, without
crops, straight to the display; to a display that draws nothing (:func:`bus.config.display_pixels`)
without its pixels too, with its grey scene-cut thumbnail instead (``[display] track_cut`` > 0): the
pixels' journey ends here, so a frame's shared-memory slot is released here and what goes on
refers to none (the display may be on another host).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import numpy as np
import zmq

from bus import stage
from bus.codec import DropReason, Face, Frame, Jpeg, Message, ShmRef, drop_marker
from bus.config import Config, display_pixels
from bus.preprocess import crop_face, eye_angle, thumbnail, to_uint8_bgr
from bus.runtime import Stats
from bus.sidecar import ModelSpec

log = logging.getLogger("detector")


class Backend(Protocol):
    excess: int  # faces dropped so far because a frame had more than max_faces

    def detect(self, bgr: np.ndarray) -> list[Face]: ...


def step(
    msg: Message, backend: Backend, spec: ModelSpec, align: bool = False, pixels: bool = True, thumb: bool = False
) -> Message:
    """One message in, one out (pure: no sockets, no clock). With ``align`` each crop is rotated so
    the face's eyes are level (:func:`bus.preprocess.eye_angle`). ``pixels``: the frame goes on with
    its pixels (else without); ``thumb``: with its grey thumbnail (:func:`bus.preprocess.thumbnail`)."""
    if msg.kind != "frame":
        return msg
    if msg.image is None:
        return drop_marker(msg, DropReason.NO_IMAGE)
    try:
        image = to_uint8_bgr(msg.image)
    except ValueError:
        return drop_marker(msg, DropReason.BAD_IMAGE)
    try:
        faces = backend.detect(image)
    except (ValueError, RuntimeError):
        return drop_marker(msg, DropReason.DETECT_ERROR)
    crops = None  # no faces, no crops part (bus.codec cannot encode an empty crops array)
    try:
        if faces:
            colour = spec.colour
            crops = np.stack(
                [
                    crop_face(image, f.box, spec.size, colour, spec.crop_margin, eye_angle(f.kp) if align else 0.0)
                    for f in faces
                ]
            )
    except ValueError:  # a box that is not a number
        return drop_marker(msg, DropReason.CROP_ERROR)
    # a shared-memory reference or a JPEG file goes on as it came; an array as converted
    sent = (msg.pixels if isinstance(msg.pixels, Jpeg | ShmRef) else image) if pixels else None
    return Frame(
        src=msg.src,
        seq=msg.seq,
        ts=msg.ts,
        live=msg.live,
        pixels=sent,
        thumb=thumbnail(image) if thumb else None,
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
    display_sock: zmq.Socket | None = None,
) -> None:
    """Run :func:`bus.stage.run` with :func:`step` until ``stop``; faces beyond ``max_faces`` are
    counted (``excess_faces``). ``display_sock``: two paths (``out_sock`` gets only the crops)."""
    keep = display_pixels(cfg) or display_sock is None  # one path: the classifier forwards the frames
    thumb = not keep and cfg.display.track_cut > 0

    def detect(msg: Message) -> Message:
        before = backend.excess
        try:
            return step(msg, backend, spec, cfg.detector.align, keep, thumb)
        finally:
            if backend.excess > before:
                stats.drop(DropReason.EXCESS_FACES, backend.excess - before)

    stage.run(
        cfg,
        "detector",
        in_sock,
        out_sock,
        detect,
        DropReason.DETECT_ERROR,
        stop,
        stats,
        log,
        pixels=True,
        display_sock=display_sock,
        ends=not keep,
    )
