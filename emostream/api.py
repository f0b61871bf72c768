"""The Python API: images and videos in, faces with emotions out, in this process.

Consumes an image (a file path, or a uint8 BGR / grey / BGRA numpy array as OpenCV reads it), a
video file, a folder of images, a glob pattern or a list of images; produces :class:`FaceResult`
lists (box, score, label, probabilities, uncertain) and, for many images or frames, one
:class:`Result` each.

It runs the pipeline's own code, so it finds the same faces and labels as the four processes:
capture's readers (:func:`capture.sources.open_source`: the same decoding, folder order and pixel
conversion), the detector's ``step`` (BlazeFace and the crop of ``bus.preprocess.crop_face`` made
for the classifier model's sidecar) and the classifier's ``step`` (the int8 model on LiteRT). No
socket is opened and TensorFlow is never imported. What it does not do is the display's tracking
and smoothing: each label is the frame's own (the events file's ``label``, not ``smoothed_label``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from msgspec.structs import replace

from bus.codec import Face, Frame
from bus.config import Config, ConfigError, SourceConfig, load, validate
from bus.paths import shipped_root
from bus.preprocess import to_uint8_bgr
from capture.sources import SourceError, Unreadable, kind, open_source
from classifier.model import EmotionModel, ModelError
from classifier.worker import step as classify_step
from detector.backend import BackendError, open_backend
from detector.worker import step as detect_step

ImageLike = str | os.PathLike[str] | np.ndarray
GLOB_CHARS = re.compile(r"[*?[]")


class RecognizerError(RuntimeError):
    """A model or configuration that cannot be loaded, or a source that cannot be opened."""


@dataclass(frozen=True)
class FaceResult:
    """One face: ``box`` (x, y, width, height in pixels of the image), the detector's ``score``,
    the emotion ``label`` (the most probable), ``probs`` (label -> probability, the model's label
    order, calibrated with the model's class bias and temperature, summing to 1), ``uncertain`` (the top
    probability is below ``[classifier] uncertain_below``; the label is kept) and the six BlazeFace
    ``keypoints`` (eyes, nose, mouth, ears)."""

    box: tuple[float, float, float, float]
    score: float
    label: str
    probs: dict[str, float]
    uncertain: bool | None = None
    keypoints: tuple[tuple[float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The face object of the events record (:meth:`bus.codec.Face.to_json`)."""
        face = Face(self.box, self.score, list(self.keypoints), self.label, list(self.probs.values()), self.uncertain)
        return face.to_json(list(self.probs))


@dataclass(frozen=True)
class Result:
    """One image or video frame: ``index`` (frame number, or position in the list), ``path`` (the
    image file; the video for a frame), ``time_s`` (video frames: index / fps), its ``faces`` left
    to right, and ``error`` (why an image could not be read; then ``faces`` is empty)."""

    index: int
    path: str | None
    faces: list[FaceResult] = field(default_factory=list)
    time_s: float | None = None
    error: str | None = None


class EmotionRecognizer:
    """The face detector and the emotion model, loaded once.

    ``config``: a ``bus.toml`` whose ``[detector]`` and ``[classifier]`` sections are used (default:
    the shipped one). ``model`` (a .tflite with its JSON sidecar), ``detector`` ("full_range",
    "short_range" or a .tflite), ``min_confidence``, ``max_faces`` and ``uncertain_below`` (a face
    whose top probability is lower is flagged ``uncertain``; 0 = never) override it.
    Raises :class:`RecognizerError` when something cannot be loaded.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        detector: str | None = None,
        min_confidence: float | None = None,
        max_faces: int | None = None,
        config: str | os.PathLike[str] | None = None,
        uncertain_below: float | None = None,
    ):
        try:
            cfg = load(config if config is not None else shipped_root() / "bus.toml", env={})
        except ConfigError as e:
            raise RecognizerError(str(e)) from None
        d = replace(
            cfg.detector,
            model=cfg.detector.model if detector is None else detector,
            min_confidence=cfg.detector.min_confidence if min_confidence is None else min_confidence,
            max_faces=cfg.detector.max_faces if max_faces is None else max_faces,
        )
        c = cfg.classifier if uncertain_below is None else replace(cfg.classifier, uncertain_below=uncertain_below)
        try:
            self.config: Config = validate(replace(cfg, detector=d, classifier=c))
        except ConfigError as e:
            raise RecognizerError(str(e)) from None
        try:
            path = os.fspath(model) if model is not None else cfg.classifier.model
            self.model = EmotionModel(path, cfg.classifier.threads)
            self._detector = open_backend(d.backend, d.model, d.min_confidence, d.max_faces)
        except (ModelError, BackendError, ValueError) as e:
            raise RecognizerError(str(e)) from None
        self.labels: tuple[str, ...] = self.model.labels

    def detect(self, image: ImageLike) -> list[FaceResult]:
        """The faces in one image (a path, or a numpy array: uint8/uint16, grey, BGR or BGRA), left
        to right. Raises ValueError when the image cannot be read or has an unsupported layout."""
        if isinstance(image, np.ndarray):
            return self._frame(to_uint8_bgr(image))
        frame = cv2.imread(os.fspath(image), cv2.IMREAD_UNCHANGED)  # as capture reads an image file
        if frame is None:
            raise ValueError(f"cannot read image {os.fspath(image)}")
        return self._frame(to_uint8_bgr(frame))

    def _frame(self, bgr: np.ndarray) -> list[FaceResult]:
        """The pipeline's detector and classifier steps on one uint8 BGR frame."""
        d, c = self.config.detector, self.config.classifier
        msg = detect_step(Frame(src="api", seq=0, ts=0.0, pixels=bgr), self._detector, self.model.spec, d.align)
        if msg.kind == "frame":
            msg = classify_step(msg, self.model, c.uncertain_below)
        if msg.kind != "frame":
            raise ValueError(f"the frame could not be analysed ({msg.reason if msg.kind == 'drop' else msg.kind})")
        faces = []
        for f in msg.faces:
            x, y, w, h = f.box
            probs = [float(p) for p in f.probs or []]
            faces.append(
                FaceResult(
                    box=(float(x), float(y), float(w), float(h)),
                    score=float(f.score),
                    label=str(f.label),
                    probs=dict(zip(self.labels, probs, strict=True)),
                    uncertain=f.uncertain,
                    keypoints=tuple((float(x), float(y)) for x, y in f.kp),
                )
            )
        return faces

    def analyze(self, source: ImageLike | Iterable[ImageLike]) -> Iterator[Result]:
        """One :class:`Result` per frame of a video, or per image of a folder (natural order, as
        capture reads it), a glob pattern (``"photos/*.jpg"``), one image file, or a list of images
        (paths or arrays). An unreadable image gives a Result with ``error``; a source that cannot
        be opened raises :class:`RecognizerError`."""
        if isinstance(source, np.ndarray):
            yield Result(0, None, self.detect(source))
        elif isinstance(source, str | os.PathLike):
            yield from self._uri(os.fspath(source))
        else:
            for i, item in enumerate(source):
                yield self._one(i, item)

    def _one(self, index: int, item: ImageLike) -> Result:
        path = None if isinstance(item, np.ndarray) else os.fspath(item)
        try:
            return Result(index, path, self.detect(item))
        except ValueError as e:
            return Result(index, path, error=str(e))

    def _uri(self, uri: str) -> Iterator[Result]:
        if GLOB_CHARS.search(uri) and not Path(uri).exists():
            files = sorted(glob.glob(uri, recursive=True), key=_natural)
            if not files:
                raise RecognizerError(f"no file matches {uri}")
            for i, f in enumerate(files):
                yield self._one(i, f)
            return
        if uri.isdigit() or "://" in uri:
            raise RecognizerError(f"{uri}: cameras and streams are live; use `emostream run` for them")
        if kind(uri) == "image":  # read as capture reads one (cv2.imread); unreadable: a Result with error
            if not Path(uri).is_file():
                raise RecognizerError(f"no such file: {uri}")
            yield self._one(0, uri)
            return
        try:
            src = open_source(SourceConfig(uri=uri, id="api", realtime=False))
        except SourceError as e:
            raise RecognizerError(str(e)) from None
        video = not hasattr(src, "last_path")  # folders and images name each frame's file
        index = 0
        try:
            while True:
                try:
                    got = src.read(0.0)
                except Unreadable as e:
                    yield Result(index, getattr(src, "last_path", None), error=str(e))
                    index += 1
                    continue
                if got is None:
                    if src.ended:
                        return
                    continue
                path = uri if video else getattr(src, "last_path", None)
                time_s = index / src.fps if video else None
                yield Result(index, path, self._frame(got[0]), time_s)
                index += 1
        finally:
            src.close()

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> EmotionRecognizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _natural(path: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path)]
