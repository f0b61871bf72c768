"""Which face detector backend runs the BlazeFace models: ``litert`` (default; :mod:`detector.blazeface`,
MediaPipe's decoding on the LiteRT interpreter, 1.1-1.2 ms less per frame) or ``mediapipe`` (the
MediaPipe Tasks FaceDetector, :mod:`detector.faces`). Both find the same faces
(tests/unit/detector/test_detector_blazeface.py; docs/detector.md)."""

from __future__ import annotations

from typing import Any

BACKENDS = ("litert", "mediapipe")


def open_backend(backend: str, model: str, min_confidence: float, max_faces: int) -> Any:
    """A started backend (``detect(bgr) -> list[Face]``, ``excess``, ``model``, ``close``).
    Raises :class:`detector.faces.BackendError` when the model cannot be loaded."""
    if backend == "litert":
        from detector.blazeface import BlazeFaceBackend

        return BlazeFaceBackend(model, min_confidence, max_faces)
    if backend == "mediapipe":
        from detector.faces import FaceBackend

        return FaceBackend(model, min_confidence, max_faces)
    raise ValueError(f"unknown detector backend {backend!r} (one of {', '.join(BACKENDS)})")
