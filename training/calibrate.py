"""Calibration and cross-dataset checks of an exported int8 model, run through the runtime's own code.

- :func:`calibrate`: fit the temperature on FER2013 PublicTest (the int8 model's dequantised outputs,
  exactly what the classifier sees), report the top-class ECE (15 bins) on PrivateTest before and after
  (with :func:`ece_floor`, what sampling noise alone gives on that many images), and write it into the
  sidecar's ``calibration`` (the classifier applies it, ``bus.calibration``).
- :func:`cross_dataset`: a FER2013 model on all CK+48 images of the six classes both datasets share
  (contempt left out), as they are, no CK+ training: accuracy (argmax over all the model's classes, so
  a *neutral* answer is wrong), per-class recall and ECE.

No TensorFlow: the int8 model runs on LiteRT through ``classifier.model.EmotionModel``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bus.calibration import apply_temperature, ece, fit_temperature
from bus.preprocess import grey_to_model_pixels
from bus.sidecar import ModelSpec, load_spec, sidecar_path
from training.data import Dataset
from training.evaluate import metrics, tflite_predict

log = logging.getLogger("training.calibrate")
UNCERTAIN_GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def _raw_probs(path: Path, data: Dataset, spec: ModelSpec, mirror: bool | None = None) -> np.ndarray:
    """The model's probabilities without its sidecar temperature (not undone afterwards: a temperature
    below 1 pushes small probabilities under ``bus.calibration.FLOOR``, so undoing it is not exact)."""
    pixels = grey_to_model_pixels(data.images, spec.size, spec.colour)
    return tflite_predict(path, pixels, mirror=mirror, calibrated=False)


def uncertain_table(probs: np.ndarray, labels: np.ndarray) -> list[dict[str, float]]:
    """For thresholds on the top probability: share of faces flagged uncertain, accuracy of the
    flagged and of the rest (what picking ``[classifier] uncertain_below`` trades)."""
    top, right = probs.max(1), probs.argmax(1) == labels
    rows = []
    for t in UNCERTAIN_GRID:
        low = top < t
        rows.append(
            {
                "below": t,
                "share_uncertain": round(float(low.mean()), 4),
                "accuracy_uncertain": round(float(right[low].mean()), 4) if low.any() else float("nan"),
                "accuracy_confident": round(float(right[~low].mean()), 4) if (~low).any() else float("nan"),
            }
        )
    return rows


def ece_floor(probs: np.ndarray, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """The ECE a perfectly calibrated model with these probabilities would score on this many images:
    labels drawn from the probabilities themselves, ``draws`` times (median and 5th/95th percentiles).
    On 3,589 images the sampling noise alone is about 0.019 (issue 10's bar is 0.02)."""
    p = np.asarray(probs, np.float64)
    cum = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    rng = np.random.default_rng(seed)
    scores = [ece(p, (rng.random((len(p), 1)) > cum).sum(axis=1)) for _ in range(draws)]
    return {q: round(float(np.percentile(scores, v)), 4) for q, v in (("p5", 5), ("median", 50), ("p95", 95))}


def calibrate(
    path: Path, val: Dataset, test: Dataset, write: bool = True, mirror: bool | None = None
) -> dict[str, Any]:
    """Fit on ``val``, report on ``test``; the labels of the sidecar's dataset (FER2013 or FER+).
    ``mirror`` (default: the sidecar's ``input.mirror``) runs the model on each image and its mirror,
    as the classifier will; with ``write`` it goes into the sidecar with the temperature fitted so."""
    spec = load_spec(path)
    if list(spec.labels) != val.classes:
        raise ValueError(f"{path}: labels {list(spec.labels)} differ from the dataset's {val.classes}")
    mirror = spec.mirror if mirror is None else mirror
    pv, pt = _raw_probs(path, val, spec, mirror), _raw_probs(path, test, spec, mirror)
    t = fit_temperature(pv, val.labels)
    cal = apply_temperature(pt, t)
    result = {
        "temperature": round(t, 4),
        "mirror": mirror,
        "accuracy_val": round(float((pv.argmax(1) == val.labels).mean()), 4),
        "accuracy_test": round(float((pt.argmax(1) == test.labels).mean()), 4),
        "fitted_on": f"{'FER+' if spec.dataset == 'ferplus' else 'FER2013'} PublicTest (NLL, int8 outputs)",
        "ece_bins": 15,
        "ece_test_before": round(ece(pt, test.labels), 4),
        "ece_test_after": round(ece(cal, test.labels), 4),
        "ece_val_before": round(ece(pv, val.labels), 4),
        "ece_val_after": round(ece(apply_temperature(pv, t), val.labels), 4),
        "ece_test_if_perfectly_calibrated": ece_floor(cal),
        "test_split": "PrivateTest",
        "uncertain_on_test": uncertain_table(cal, test.labels),
    }
    log.info(
        "%s%s: accuracy PublicTest %.4f, PrivateTest %.4f; T = %.3f; ECE on PrivateTest %.4f -> %.4f",
        path,
        " with its mirror" if mirror else "",
        result["accuracy_val"],
        result["accuracy_test"],
        t,
        result["ece_test_before"],
        result["ece_test_after"],
    )
    if write:
        d = json.loads(sidecar_path(path).read_text())
        d["calibration"] = {**d.get("calibration", {}), **result}
        d["input"]["mirror"] = mirror
        sidecar_path(path).write_text(json.dumps(d, indent=2))
        load_spec(path)  # still a sidecar the runtime accepts
    return result


def cross_dataset(path: Path, ck: Dataset, mirror: bool | None = None) -> dict[str, Any]:
    """FER-trained ``path`` on CK+48: the images of the classes the model knows (contempt left out);
    ``mirror`` as in :func:`calibrate`."""
    spec = load_spec(path)
    names = list(spec.labels)
    shared = [c for c in ck.classes if c in names]
    keep = np.isin(np.array(ck.classes)[ck.labels], shared)
    data = ck.subset(np.flatnonzero(keep))
    y = np.array([names.index(ck.classes[i]) for i in data.labels], np.int64)
    p = tflite_predict(path, grey_to_model_pixels(data.images, spec.size, spec.colour), mirror=mirror)
    m = metrics(y, p.argmax(1), names)
    result = {
        "images": len(y),
        "classes": shared,
        "accuracy": round(m["accuracy"], 4),
        "recall": {c: m["per_class"][c]["recall"] for c in shared},
        "ece": round(ece(p, y), 4),
        "temperature": spec.temperature,
        "mirror": spec.mirror if mirror is None else mirror,
        "protocol": "all CK+48 images of the classes FER2013 shares, as they are; argmax over all model classes",
    }
    log.info(
        "%s on CK+48 (%d images, no CK+ training): accuracy %.4f, ECE %.4f", path, len(y), m["accuracy"], result["ece"]
    )
    return result
