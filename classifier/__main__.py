"""``python -m classifier``: the classifier stage, or ``--image FACE.png ...`` to classify face images.

Stage: binds a PULL socket on ``[classifier] endpoints[--instance]``, connects a PUSH socket to
``[display] endpoint``. Image mode classifies face crops, prints JSON lines and exits. It first runs
the face detector (``[detector]`` settings) on each image, because a whole photo classified as one
face gives a confident-looking but meaningless answer:

- a face covering at least :data:`CROP_COVER` of the image: a face crop, classified whole;
- only smaller faces: not a face crop; it says so on stderr and classifies each detected face,
  cropped as the pipeline crops it (``"face"``: its index in the image);
- no face: classified whole, with a warning on stderr (the detector misses many tight crops, e.g.
  half the CK+ 48 x 48 images at ``min_confidence`` 0.5, so this is not an error).

``--no-detect`` skips the detector (every image is taken as a crop). Every line is ``{"image"}``
(plus ``"face"`` for a detected face) and the face as the events record has it
(:meth:`bus.codec.Face.to_json`: ``box``, ``score``, ``kp``, ``label``, ``probs``, ``uncertain``).
An image classified whole is a face whose ``box`` is the whole image ``[0, 0, width, height]``, with
``score`` 0 and no ``kp``: no detector scored it (0 is the face's "no score", the default the wire
leaves out; 1.0 would claim a detection that did not happen). The detector is imported from
the detector package here, in this debugging mode only; the stage itself never loads it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import click
import cv2
import msgspec
import numpy as np

from bus.cli import config_option, fail, instance_option
from bus.codec import Face
from bus.config import Config, ConfigError, load
from bus.preprocess import crop_face, eye_angle, to_model_pixels, to_uint8_bgr
from bus.runtime import Stats, install_stop, setup_logging, single_threaded_opencv
from bus.sockets import StageSockets
from classifier.model import EmotionModel, ModelError
from classifier.worker import run

CROP_COVER = 0.25  # measured: face crops with the pipeline's 20 % margin 0.61-0.88, whole photos <= 0.08


class Detector(Protocol):
    def detect(self, bgr: np.ndarray) -> list[Face]: ...


def classify_images(
    model: EmotionModel,
    paths: tuple[str, ...],
    detector: Detector | None = None,
    warn: Callable[[str], None] = print,
    align: bool = False,
    uncertain_below: float = 0.0,
) -> list[dict[str, object]]:
    """Each image file -> face crop(s) -> results, all in one batch. With a ``detector``, an image
    whose faces are all small is not a crop: each detected face is cropped as the detector stage
    crops it (``align``: eyes level) and classified instead (``warn`` says so); without one, each
    image is one crop. ``uncertain``: the top probability is below ``uncertain_below``."""
    crops: list[np.ndarray] = []
    entries: list[dict[str, object]] = []
    found: list[Face] = []  # per entry: the detected face it is, or the whole image (no score, no keypoints)
    for p in paths:
        img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot read image {p}")
        faces = detector.detect(to_uint8_bgr(img)) if detector is not None else None
        area = float(img.shape[0] * img.shape[1])
        if faces and max(f.box[2] * f.box[3] for f in faces) < CROP_COVER * area:
            warn(f"{p} is not a face crop: {len(faces)} face(s) found; classifying each detected face")
            for i, f in enumerate(faces):
                angle = eye_angle(f.kp) if align else 0.0
                crops.append(crop_face(img, f.box, model.size, model.spec.colour, model.spec.crop_margin, angle))
                entries.append({"image": p, "face": i})
                found.append(f)
            continue
        if faces is not None and not faces:
            warn(f"{p}: the face detector finds no face; classified as one face crop")
        crops.append(to_model_pixels(img, model.size, model.spec.colour))
        entries.append({"image": p})
        found.append(Face(box=(0.0, 0.0, float(img.shape[1]), float(img.shape[0]))))
    probs = model.classify(np.stack(crops))
    for entry, face, row in zip(entries, found, probs, strict=True):
        label, uncertain = model.labels[int(np.argmax(row))], bool(np.max(row) < uncertain_below)
        classified = msgspec.structs.replace(face, label=label, probs=[float(v) for v in row], uncertain=uncertain)
        entry.update(classified.to_json(model.labels))  # the one face object, as the events record has it
    return entries


@contextlib.contextmanager
def _image_detector(cfg: Config, off: bool) -> Iterator[Detector | None]:
    if off:
        yield None
        return
    from detector.backend import BackendError, open_backend  # debugging mode only (see the module docstring)

    d = cfg.detector
    try:
        backend = open_backend(d.backend, d.model, d.min_confidence, d.max_faces)
    except BackendError as e:
        fail("classifier", f"{e} (--no-detect takes every image as a face crop)")
    with backend:
        yield backend


def serve(cfg: Config, model: EmotionModel, plumbing: StageSockets) -> None:
    log = setup_logging("classifier")
    single_threaded_opencv()
    log.info("loaded %s", model.info)
    stop = threading.Event()
    install_stop(stop)
    with plumbing as socks:
        assert socks.pull is not None
        log.info("instance %d: pulling on %s, pushing to %s", plumbing.instance, socks.bind, cfg.display.endpoint)
        run(cfg, socks.pull, socks.push[0], model, stop, Stats(log, cfg.bus.stats_interval_s), log)


@click.command()
@config_option
@instance_option("classifier")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    help="A .tflite model (with its .json sidecar) instead of [classifier] model.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Classify this face crop and print JSON (a photo: each detected face); repeatable. No sockets.",
)
@click.option("--no-detect", is_flag=True, help="With --image: take every image as a face crop (no face detector).")
def main(
    config_path: str | None, instance: int, model_path: str | None, images: tuple[str, ...], no_detect: bool
) -> None:
    """Classify the emotion of every detected face (int8 TFLite, one batch per frame)."""
    try:
        cfg = load(config_path)
    except ConfigError as e:
        fail("classifier", str(e))
    plumbing = None if images else StageSockets("classifier", cfg, instance)  # a bad --instance or key: exit 2
    try:
        model = EmotionModel(model_path or cfg.classifier.model, threads=cfg.classifier.threads)
    except ModelError as e:
        fail("classifier", str(e))
    if images:
        try:
            with _image_detector(cfg, no_detect) as detector:
                say = lambda m: click.echo(f"classifier: {m}", err=True)  # noqa: E731
                results = classify_images(
                    model, images, detector, say, cfg.detector.align, cfg.classifier.uncertain_below
                )
        except ValueError as e:
            fail("classifier", str(e))
        for r in results:
            click.echo(json.dumps(r))
        return
    assert plumbing is not None
    serve(cfg, model, plumbing)


if __name__ == "__main__":
    main()
