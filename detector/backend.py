"""Which face detector backend runs the BlazeFace models: ``litert`` (default; :mod:`detector.blazeface`,
MediaPipe's decoding on the LiteRT interpreter, 1.1-1.2 ms less per frame) or ``mediapipe`` (the
MediaPipe Tasks FaceDetector, :mod:`detector.faces`). Both find the same faces
(tests/unit/detector/test_detector_blazeface.py; docs/detector.md).

The seam both backends share lives here: :class:`BackendError`, the shipped model names
(:func:`model_path`) and the ``max_faces`` rule (:func:`limit_faces`); MediaPipe is imported only by
:mod:`detector.faces`, only when that backend is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bus.codec import Face
from bus.paths import shipped_models

BACKENDS = ("litert", "mediapipe")
MODELS_DIR = shipped_models()  # the repository's models/, or the installed wheel's copy
NAMED_MODELS = {
    "full_range": "face_detection_full_range_sparse.tflite",
    "short_range": "face_detection_short_range.tflite",
}


class BackendError(RuntimeError):
    """The detector model cannot be found or loaded, or its backend is not installed (start-up failure)."""


def model_path(name: str) -> Path:
    """``full_range`` / ``short_range`` -> the shipped model; anything else is a path (cwd, then the
    shipped files' folder; a path from a config file is already absolute, :mod:`bus.config`)."""
    if name in NAMED_MODELS:
        path = MODELS_DIR / NAMED_MODELS[name]
    else:
        path = Path(name)
        if not path.is_absolute() and not path.exists():
            path = MODELS_DIR.parent / path
    if not path.is_file():
        raise BackendError(f"detector model not found: {path}")
    return path


def limit_faces(faces: list[Face], max_faces: int) -> tuple[list[Face], int]:
    """The ``max_faces`` best-scoring faces sorted left to right, and how many were left out."""
    kept = sorted(faces, key=lambda f: -f.score)[:max_faces] if len(faces) > max_faces else faces
    return sorted(kept, key=lambda f: (f.box[0], f.box[1])), len(faces) - len(kept)


def open_backend(backend: str, model: str, min_confidence: float, max_faces: int) -> Any:
    """A started backend (``detect(bgr) -> list[Face]``, ``excess``, ``model``, ``close``).
    Raises :class:`BackendError` when the model cannot be loaded."""
    if backend == "litert":
        from detector.blazeface import BlazeFaceBackend

        return BlazeFaceBackend(model, min_confidence, max_faces)
    if backend == "mediapipe":
        from detector.faces import FaceBackend

        return FaceBackend(model, min_confidence, max_faces)
    raise ValueError(f"unknown detector backend {backend!r} (one of {', '.join(BACKENDS)})")
