"""The sequential reference and the classifier alone: the stages' own cores in this one process.

Reference: for each frame, cv2 decodes it (as capture does), :func:`detector.worker.step` finds the
faces with the detector's backend (``[detector] backend``, :func:`detector.backend.open_backend`) and
cuts the crops, and :func:`classifier.worker.step` labels them with :class:`~classifier.model.EmotionModel` -- the same
calls the stage processes make, without the bus (no encode, no sockets, no decode). Each repeat runs
the same frames: the first ``frames`` of the clip, looped when the clip is shorter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.pipeline import CLASSIFIER_MODEL
from bench.procs import BenchError
from bus.codec import Frame
from bus.config import ClassifierConfig, DetectorConfig
from bus.preprocess import to_uint8_bgr
from bus.runtime import single_threaded_opencv
from bus.sidecar import load_spec
from capture.sources import open_video
from classifier.model import EmotionModel
from classifier.worker import step as classify_step
from detector.backend import open_backend
from detector.worker import step as detect_step
from emostream.launch import ROOT


def looped(path: Path, frames: int) -> Iterator[np.ndarray]:
    """The first ``frames`` frames of ``path``, starting over at its end (as capture's ``loop``)."""
    cap = open_video(str(path))
    try:
        n = 0
        while n < frames:
            ok, raw = cap.read()
            if not ok or raw is None:
                if n == 0:
                    raise BenchError(f"no frames could be read from {path}")
                cap.release()
                cap = open_video(str(path))
                continue
            n += 1
            yield to_uint8_bgr(raw)
    finally:
        cap.release()


def reference(clip: Path, model: str, frames: int, repeats: int) -> dict[str, Any]:
    """Frames per second (median of ``repeats``) and CPU ms per frame of decode -> detect -> classify."""
    single_threaded_opencv()  # as every stage does (bus.runtime)
    classifier_path = ROOT / CLASSIFIER_MODEL
    spec = load_spec(classifier_path)
    emotions = EmotionModel(classifier_path, threads=1)
    fps, cpu_ms, faces = [], [], 0
    with open_backend(DetectorConfig().backend, model, 0.6, 32) as backend:
        for _ in range(repeats):
            faces = 0
            t0, c0 = time.perf_counter(), time.process_time()
            for seq, image in enumerate(looped(clip, frames)):
                now = time.time()
                msg = Frame(src="ref", seq=seq, ts=now, t={"capture": now}, pixels=image)
                out = classify_step(
                    detect_step(msg, backend, spec, DetectorConfig().align),
                    emotions,
                    ClassifierConfig().uncertain_below,
                )
                if out.kind != "frame":
                    raise BenchError(
                        f"the reference dropped frame {seq}: {out.reason if out.kind == 'drop' else out.kind}"
                    )
                faces += len(out.faces)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            fps.append(frames / wall)
            cpu_ms.append(cpu * 1000.0 / frames)
    return {
        "clip": clip.name,
        "model": model,
        "frames": frames,
        "repeats": repeats,
        "fps": round(statistics.median(fps), 1),
        "fps_each": [round(f, 1) for f in fps],
        "cpu_ms_per_frame": round(statistics.median(cpu_ms), 2),
        "faces_per_frame": round(faces / frames, 2),
    }


def classifier_alone(batches: tuple[int, ...] = (1, 8), calls: int = 200) -> dict[str, Any]:
    """Milliseconds per face of :meth:`EmotionModel.classify` at each batch size (median of ``calls``)."""
    model = EmotionModel(ROOT / CLASSIFIER_MODEL, threads=1)
    rng = np.random.default_rng(0)
    rows = []
    for n in batches:
        crops = rng.integers(0, 256, (n, model.size, model.size, model.channels), dtype=np.uint8)
        for _ in range(10):  # resize the interpreter to n and warm it
            model.classify(crops)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            model.classify(crops)
            times.append((time.perf_counter() - t0) * 1000.0)
        per_call = statistics.median(times)
        rows.append({"batch": n, "ms_per_call": round(per_call, 3), "ms_per_face": round(per_call / n, 3)})
    return {"model": CLASSIFIER_MODEL, "threads": 1, "calls": calls, "batches": rows}
