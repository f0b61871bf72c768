"""Calibration and cross-dataset checks of an exported int8 model, run through the runtime's own code.

- :func:`fit_mirror_zoom`: the zoom of the mirror view (``input.mirror_zoom``), picked by accuracy on
  PublicTest from ``ZOOM_GRID``; before the class bias and the temperature, which are fitted for it.
- :func:`calibrate`: fit the class bias (optional: post-hoc logit adjustment for the training prior,
  its strength ``tau`` picked by accuracy) and then the temperature (by default for the top class's
  confidence, the number the product shows) on FER2013 PublicTest (the int8
  model's dequantised outputs, exactly what the classifier sees), report accuracy, per-class recall and
  the top-class ECE (15 bins) on PrivateTest before and after (with :func:`ece_floor`, what sampling
  noise alone gives on that many images), and write them into the sidecar's ``calibration`` (the
  classifier applies them, ``bus.calibration``).
- :func:`cross_dataset`: a FER2013 model on all CK+48 images of the six classes both datasets share
  (contempt left out), as they are, no CK+ training: accuracy (argmax over all the model's classes, so
  a *neutral* answer is wrong), per-class recall and ECE.

No TensorFlow: the int8 model runs on LiteRT through ``classifier.model.EmotionModel``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bus.calibration import (
    OBJECTIVES,
    Objective,
    apply_calibration,
    ece,
    fit_prior_tau,
    fit_temperature,
    prior_bias,
    smoothed_prior,
)
from bus.preprocess import grey_to_model_pixels
from bus.sidecar import ModelSpec, load_spec, sidecar_path
from training.data import Dataset
from training.evaluate import metrics, tflite_predict

log = logging.getLogger("training.calibrate")
# --prior-tau's fitted values -> the rule of ``fit_prior_tau`` they use
FIT_RULES: dict[str, Literal["best", "no-cost"]] = {"auto": "best", "no-cost": "no-cost"}
# how a fitted tau was picked on PublicTest, as the sidecar records it
RULES = {"best": "the most accurate, on a tie the smallest", "no-cost": "the largest no less accurate than none"}
UNCERTAIN_GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
ZOOM_GRID = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)
ZOOM_RULE = "the most accurate, on a tie the closest to 1"


def _raw_probs(
    path: Path, data: Dataset, spec: ModelSpec, mirror: bool | None = None, mirror_zoom: float | None = None
) -> np.ndarray:
    """The model's probabilities without its sidecar class bias and temperature (not undone afterwards: a
    temperature below 1 pushes small probabilities under ``bus.calibration.FLOOR``, so undoing it is not
    exact)."""
    pixels = grey_to_model_pixels(data.images, spec.size, spec.colour)
    return tflite_predict(path, pixels, mirror=mirror, calibrated=False, mirror_zoom=mirror_zoom)


def pick_zoom(scores: dict[float, float]) -> float:
    """The zoom of the highest accuracy in ``scores`` (zoom -> accuracy); on a tie the one closest to 1."""
    if not scores:
        raise ValueError("no zoom to pick from")
    return min(scores, key=lambda z: (-scores[z], abs(np.log(z))))


def fit_mirror_zoom(
    path: Path, val: Dataset, spec: ModelSpec, grid: tuple[float, ...] = ZOOM_GRID
) -> tuple[float, dict[float, float], np.ndarray]:
    """The ``input.mirror_zoom`` of ``grid`` under which the model, run on each face and its zoomed mirror
    (no class bias, no temperature), is most accurate on ``val`` (:func:`pick_zoom`), every zoom's
    accuracy, and the probabilities on ``val`` at the zoom picked (for the fits that follow). The two views
    of a face, the crop and its mirror a little closer or further, differ by more than the flip alone, so
    their mean can be right more often at the same cost (one batch of two)."""
    probs = {float(z): _raw_probs(path, val, spec, mirror=True, mirror_zoom=z) for z in grid}
    scores = {z: float((p.argmax(1) == val.labels).mean()) for z, p in probs.items()}
    zoom = pick_zoom(scores)
    return zoom, scores, probs[zoom]


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


def _sidecar_tau(path: Path, spec: ModelSpec) -> float:
    """The ``prior_tau`` the sidecar's class bias was fitted with (0 without a bias)."""
    tau = spec.calibration.get("prior_tau", None if spec.class_bias else 0.0)
    if not isinstance(tau, int | float) or isinstance(tau, bool):
        raise ValueError(f"{path}: calibration.prior_tau is {tau!r}: give the class bias's tau (--prior-tau)")
    return float(tau)


def calibrate(
    path: Path,
    val: Dataset,
    test: Dataset,
    write: bool = True,
    mirror: bool | None = None,
    prior_tau: float | Literal["auto", "no-cost"] | None = None,
    train_counts: np.ndarray | None = None,
    mirror_zoom: float | Literal["auto"] | None = None,
    objective: Objective = "top",
) -> dict[str, Any]:
    """Fit on ``val``, report on ``test``; the labels of the sidecar's dataset (FER2013 or FER+).
    ``mirror`` (default: the sidecar's ``input.mirror``) runs the model on each image and its mirror,
    as the classifier will. ``prior_tau`` (default: the sidecar's ``calibration.prior_tau``, else 0) is
    the strength of the class bias ``-tau * log(prior)``, the prior from ``train_counts`` (images per
    class of the training split); ``"auto"`` picks the most accurate on ``val``, ``"no-cost"`` the largest
    that costs no accuracy on ``val`` against no bias (:func:`bus.calibration.fit_prior_tau`).
    ``mirror_zoom`` (default: the sidecar's ``input.mirror_zoom``; only with ``mirror``) zooms the mirror
    view; ``"auto"`` picks it on ``val`` first (:func:`fit_mirror_zoom`), the bias and temperature follow.
    With ``write`` all of it goes into the sidecar with the temperature fitted after the bias. ``objective``:
    what the temperature minimises on ``val`` (:func:`bus.calibration.fit_temperature`; default the
    top-label log loss, the confidence the product shows); the other objective's temperature and ECE
    are reported beside it (``temperature_other``)."""
    spec = load_spec(path)
    if list(spec.labels) != val.classes:
        raise ValueError(f"{path}: labels {list(spec.labels)} differ from the dataset's {val.classes}")
    mirror = spec.mirror if mirror is None else mirror
    from_sidecar = prior_tau is None  # then how that tau was picked stays on record
    if prior_tau is None:
        prior_tau = _sidecar_tau(path, spec)
    rule = FIT_RULES.get(prior_tau) if isinstance(prior_tau, str) else None  # None: a given tau
    if isinstance(prior_tau, str) and rule is None:
        raise ValueError(f"prior tau {prior_tau!r} is neither 'auto', 'no-cost' nor a number")
    if not isinstance(prior_tau, str) and not 0.0 <= prior_tau <= 1.0:
        raise ValueError(f"prior tau {prior_tau} is not in [0, 1]")
    counts = np.zeros(len(val.classes)) if train_counts is None else np.asarray(train_counts)
    if len(counts) != len(val.classes):
        raise ValueError(f"{len(counts)} training class counts for {len(val.classes)} classes")
    if prior_tau != 0.0 and not counts.any():
        raise ValueError("a class bias needs the training split's class counts")
    zoom_scores: dict[float, float] = {}
    pv: np.ndarray | None = None  # val's probabilities, from the zoom's fit where there is one
    if not mirror:
        if mirror_zoom not in (None, 1.0):
            raise ValueError("a zoomed mirror view (mirror_zoom) needs the mirror view (--mirror)")
        zoom = 1.0
    elif mirror_zoom == "auto":
        zoom, zoom_scores, pv = fit_mirror_zoom(path, val, spec)
    else:
        zoom = spec.mirror_zoom if mirror_zoom is None else float(mirror_zoom)
    if pv is None:
        pv = _raw_probs(path, val, spec, mirror, zoom)
    pt = _raw_probs(path, test, spec, mirror, zoom)
    if rule is not None:
        tau, scores = fit_prior_tau(pv, val.labels, counts, rule=rule)
    else:
        tau, scores = float(prior_tau), {}
    bias = prior_bias(counts, tau) if tau > 0 else None
    biased_v = apply_calibration(pv, 1.0, bias)  # both temperatures are fitted after the bias
    t = fit_temperature(biased_v, val.labels, objective)
    other: Objective = "nll" if objective == "top" else "top"
    t_other = fit_temperature(biased_v, val.labels, other)
    cal_v, cal_t = apply_calibration(pv, t, bias), apply_calibration(pt, t, bias)
    m = metrics(test.labels, cal_t.argmax(1), test.classes)
    result: dict[str, Any] = {
        "temperature": round(t, 4),
        "mirror": mirror,
        "mirror_zoom": zoom,
        "prior_tau": tau,
        "accuracy_val": round(float((cal_v.argmax(1) == val.labels).mean()), 4),
        "accuracy_test": round(float((cal_t.argmax(1) == test.labels).mean()), 4),
        "accuracy_test_without_bias": round(float((pt.argmax(1) == test.labels).mean()), 4),
        "macro_f1_test": round(m["macro_f1"], 4),
        "recall_test": {c: m["per_class"][c]["recall"] for c in test.classes},
        "fitted_on": f"{'FER+' if spec.dataset == 'ferplus' else 'FER2013'} PublicTest "
        f"({OBJECTIVES[objective]}, int8 outputs)",
        "ece_bins": 15,
        "ece_test_before": round(ece(pt, test.labels), 4),
        "ece_test_after": round(ece(cal_t, test.labels), 4),
        "ece_val_before": round(ece(pv, val.labels), 4),
        "ece_val_after": round(ece(cal_v, val.labels), 4),
        "temperature_other": {
            "fitted_by": OBJECTIVES[other],
            "temperature": round(t_other, 4),
            "ece_test_after": round(ece(apply_calibration(pt, t_other, bias), test.labels), 4),
            "ece_val_after": round(ece(apply_calibration(pv, t_other, bias), val.labels), 4),
        },
        "ece_test_if_perfectly_calibrated": ece_floor(cal_t),
        "test_split": "PrivateTest",
        "uncertain_on_test": uncertain_table(cal_t, test.labels),
    }
    if zoom_scores:
        result["mirror_zoom_rule"] = ZOOM_RULE
        result["mirror_zoom_accuracy_val"] = {str(z): round(a, 4) for z, a in zoom_scores.items()}
    if rule is not None:
        result["prior_tau_rule"] = RULES[rule]
        result["prior_tau_accuracy_val"] = {str(g): round(a, 4) for g, a in scores.items()}
    if bias is not None:
        prior = smoothed_prior(counts)  # the prior the bias is made of
        result["class_prior"] = {c: round(float(v), 4) for c, v in zip(test.classes, prior, strict=True)}
        result["class_bias"] = [round(float(b), 4) for b in bias]
    log.info(
        "%s%s: class bias tau %g; accuracy PublicTest %.4f, PrivateTest %.4f; T = %.3f (%s); "
        "ECE on PrivateTest %.4f -> %.4f (T by %s: %.3f, ECE %.4f)",
        path,
        f" with its mirror (zoom {zoom:g})" if mirror else "",
        tau,
        result["accuracy_val"],
        result["accuracy_test"],
        t,
        OBJECTIVES[objective],
        result["ece_test_before"],
        result["ece_test_after"],
        OBJECTIVES[other],
        t_other,
        result["temperature_other"]["ece_test_after"],
    )
    if write:
        d = json.loads(sidecar_path(path).read_text())
        fitted_here: tuple[str, ...] = ("class_bias", "class_prior")  # gone where this fit has none
        if not from_sidecar:
            fitted_here += ("prior_tau_rule", "prior_tau_accuracy_val")
        if mirror_zoom is not None or not mirror:
            fitted_here += ("mirror_zoom_rule", "mirror_zoom_accuracy_val")
        old = {k: v for k, v in d.get("calibration", {}).items() if k not in fitted_here}
        d["calibration"] = {**old, **result}
        d["input"]["mirror"] = mirror
        d["input"].pop("mirror_zoom", None)
        if zoom != 1.0:
            d["input"]["mirror_zoom"] = zoom
        sidecar_path(path).write_text(json.dumps(d, indent=2))
        load_spec(path)  # still a sidecar the runtime accepts
    return result


def cross_dataset(
    path: Path, ck: Dataset, mirror: bool | None = None, calibration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """FER-trained ``path`` on CK+48: the images of the classes the model knows (contempt left out);
    ``mirror`` as in :func:`calibrate`; ``calibration`` (a result of :func:`calibrate`, for a dry run)
    instead of the sidecar's temperature and class bias."""
    spec = load_spec(path)
    names = list(spec.labels)
    shared = [c for c in ck.classes if c in names]
    keep = np.isin(np.array(ck.classes)[ck.labels], shared)
    data = ck.subset(np.flatnonzero(keep))
    y = np.array([names.index(ck.classes[i]) for i in data.labels], np.int64)
    if calibration is None:
        bias = spec.class_bias or None
        t, tau = spec.temperature, spec.calibration.get("prior_tau") if bias else 0.0
    else:
        bias = calibration.get("class_bias")
        t, tau = calibration["temperature"], calibration["prior_tau"]
    zoom = spec.mirror_zoom if calibration is None else calibration.get("mirror_zoom", 1.0)
    raw = _raw_probs(path, data, spec, mirror, zoom)
    p = apply_calibration(raw, t, None if bias is None else np.asarray(bias))
    m = metrics(y, p.argmax(1), names)
    result = {
        "images": len(y),
        "classes": shared,
        "accuracy": round(m["accuracy"], 4),
        "accuracy_without_bias": round(float((raw.argmax(1) == y).mean()), 4),
        "recall": {c: m["per_class"][c]["recall"] for c in shared},
        "ece": round(ece(p, y), 4),
        "temperature": t,
        "prior_tau": tau,
        "mirror": spec.mirror if mirror is None else mirror,
        "mirror_zoom": zoom,
        "protocol": "all CK+48 images of the classes FER2013 shares, as they are; argmax over all model classes",
    }
    log.info(
        "%s on CK+48 (%d images, no CK+ training): accuracy %.4f, ECE %.4f", path, len(y), m["accuracy"], result["ece"]
    )
    return result
