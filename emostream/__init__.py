"""emostream: real-time facial emotion recognition.

Three lines for the common case (the pipeline's own detector, crop and classifier code, in this
process; no sockets, no TensorFlow)::

    from emostream import EmotionRecognizer
    faces = EmotionRecognizer().detect("photo.jpg")  # or a uint8 BGR numpy array
    print([(f.label, f.box) for f in faces])

``EmotionRecognizer().analyze(source)`` yields one :class:`Result` per video frame, or per image of
a folder, glob or list. The ``emostream`` command (:mod:`emostream.cli`) runs the pipeline,
analyses files, trains and benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"  # the one place it is written: pyproject.toml reads it ([tool.setuptools.dynamic])

if TYPE_CHECKING:
    from emostream.api import EmotionRecognizer, FaceResult, Result

__all__ = ["EmotionRecognizer", "FaceResult", "Result", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `emostream --help` and `--version` need neither OpenCV nor LiteRT.
    if name in ("EmotionRecognizer", "FaceResult", "Result"):
        from emostream import api

        return getattr(api, name)
    raise AttributeError(f"module 'emostream' has no attribute {name!r}")
