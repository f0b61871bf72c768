"""The MediaPipe face detector backend: the only module of the pipeline that imports MediaPipe.

Consumes uint8 BGR frames; produces :class:`bus.codec.Face` lists (box ``x, y, w, h`` and six
keypoints in pixels, score), at most ``max_faces`` of them (the best scores kept, the excess
counted in ``excess``), sorted left to right.

Models are MediaPipe's BlazeFace graphs (see ``models/MEDIAPIPE_LICENSE.md``): ``full_range``
(192 x 192 input, 2304 anchors, faces up to ~5 m) and ``short_range`` (128 x 128, 896 anchors,
faces within ~2 m). Neither file carries Tasks metadata; the Tasks FaceDetector still decodes both
correctly (checked against a reference decoding with the full-range anchors, and by a test with a
face in the lower half of the frame, where wrong anchors find nothing).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from bus.codec import Face
from bus.runtime import native_stderr
from detector.backend import BackendError, limit_faces, model_path


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """MediaPipe imports ``tensorflow.tools.docs`` when TensorFlow happens to be installed (only to
    decorate its docs; it falls back on ModuleNotFoundError). That costs seconds and hundreds of MB,
    and runtime stages must never load TensorFlow, so it is hidden while MediaPipe is imported."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _import_mediapipe() -> tuple[Any, Any, Any]:
    hide = "tensorflow" not in sys.modules
    finder = _NoTensorFlow()
    if hide:
        sys.meta_path.insert(0, finder)
    try:
        import mediapipe
        from mediapipe.tasks.python import BaseOptions, vision
    except ModuleNotFoundError as e:
        if e.name is None or e.name.partition(".")[0] != "mediapipe":
            raise
        raise BackendError(
            "[detector] backend = \"mediapipe\" needs the mediapipe package: pip install 'emostream[mediapipe]'"
        ) from None
    finally:
        if hide:
            sys.meta_path.remove(finder)
    return mediapipe, BaseOptions, vision


class FaceBackend:
    """MediaPipe Tasks FaceDetector in IMAGE mode."""

    def __init__(self, model: str, min_confidence: float, max_faces: int):
        path = model_path(model)
        self.model, self.max_faces, self.excess = path.name, max_faces, 0
        self._mp, base_options, vision = _import_mediapipe()
        options = vision.FaceDetectorOptions(
            base_options=base_options(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=min_confidence,
        )
        notices: list[str] = []
        try:
            with native_stderr(notices):
                self._detector = vision.FaceDetector.create_from_options(options)
                self._detector.detect(self._image(np.zeros((64, 64, 3), np.uint8)))  # warm-up: first call allocates
        except (RuntimeError, ValueError) as e:
            detail = next((n for n in reversed(notices) if "rror" in n), str(e))
            raise BackendError(f"cannot load detector model {path}: {detail}") from None

    def _image(self, bgr: np.ndarray) -> Any:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Faces in a uint8 BGR frame, left to right. Raises ValueError/RuntimeError on a bad frame."""
        if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
            raise ValueError(f"expected uint8 H x W x 3, got {bgr.dtype} {bgr.shape}")
        h, w = bgr.shape[:2]
        result = self._detector.detect(self._image(bgr))
        faces = []
        for d in result.detections:
            b = d.bounding_box
            score = d.categories[0].score if d.categories else 0.0
            kp = [(k.x * w, k.y * h) for k in (d.keypoints or [])]
            faces.append(
                Face((float(b.origin_x), float(b.origin_y), float(b.width), float(b.height)), float(score or 0.0), kp)
            )
        kept, excess = limit_faces(faces, self.max_faces)
        self.excess += excess
        return kept

    def close(self) -> None:
        with native_stderr():
            self._detector.close()

    def __enter__(self) -> FaceBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
