"""A study of issue 10 (models/README.md, "the students' calibration"), kept so its figures can be made again:
how far post-hoc calibrations richer than the runtime's one temperature bring an int8 FER2013 model's ECE.

Each form is fitted on PublicTest by negative log-likelihood (as ``bus.calibration.fit_temperature`` is) and
scored by ECE on PublicTest and PrivateTest, from the model's two views (the face, its mirror zoomed by
``zoom``) run through the runtime classifier's own code (``classifier.model.EmotionModel``, no temperature):

- ``temperature``: the runtime's rule, one ``T`` on the mean of the two views;
- ``per_view``: that ``T`` on each view before the mean;
- ``geometric``: the mean of the views' log-probabilities instead of their probabilities, then one ``T``;
- ``t_entropy``, ``t_top``, ``t_margin``: ``T = a + b * s`` with ``s`` the entropy, the top probability or
  the top-two log-probability margin of the face (``a``, ``b`` on a grid);
- ``per_class``: one ``T`` per predicted class (the label never changes), also refitted on random halves
  of PublicTest and scored on the other half, against one ``T`` fitted on the same half;
- ``top_label``: one ``T`` as the runtime's, fitted by the top-label log loss instead (``calibrate --fit
  top``, the default since 2026-12-02), also refitted on each random half and scored on PrivateTest.

It also prints the reliability table (confidence bins: faces, mean confidence, accuracy) after one ``T``,
and by predicted class.

  python -m training.calib_forms MODEL.tflite --zoom Z [--data DATA] [--halves N]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bus.calibration import ECE_BINS, FLOOR, apply_calibration, confidence_bins, ece, fit_temperature, nll

Form = Callable[[np.ndarray, float, float], np.ndarray]  # log-probabilities, a, b -> probabilities


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_probs(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(p, np.float64), FLOOR))


def entropy(logp: np.ndarray) -> np.ndarray:
    return -(np.exp(logp) * logp).sum(axis=1, keepdims=True)


def top(logp: np.ndarray) -> np.ndarray:
    return np.exp(logp).max(axis=1, keepdims=True)


def margin(logp: np.ndarray) -> np.ndarray:
    s = np.sort(logp, axis=1)
    return s[:, -1:] - s[:, -2:-1]


def scaled(score: Callable[[np.ndarray], np.ndarray]) -> Form:
    """The form ``softmax(log p / (a + b * score(log p)))``, the temperature kept above 0.05."""
    return lambda logp, a, b: softmax(logp / np.maximum(a + b * score(logp), 0.05))


def fit_grid(
    form: Form, logp: np.ndarray, labels: np.ndarray, steps: tuple[float, float] = (0.01, 0.02)
) -> tuple[float, float]:
    """``(a, b)`` of the NLL-least ``form`` on a grid: a from 0.3 to 1.6, b from -1 to 1, by ``steps``."""
    best = (np.inf, 1.0, 0.0)
    for a in np.arange(0.3, 1.6, steps[0]):
        for b in np.arange(-1.0, 1.0, steps[1]):
            n = nll(form(logp, a, b), labels)
            if n < best[0]:
                best = (n, float(a), float(b))
    return best[1], best[2]


def fit_per_class(probs: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """One temperature per predicted class (1 where a class is never predicted)."""
    pred = probs.argmax(axis=1)
    return np.array(
        [fit_temperature(probs[pred == k], labels[pred == k]) if (pred == k).any() else 1.0 for k in range(classes)]
    )


def apply_per_class(probs: np.ndarray, temps: np.ndarray) -> np.ndarray:
    pred, out = probs.argmax(axis=1), np.empty(probs.shape, np.float32)
    for k, t in enumerate(temps):
        m = pred == k
        out[m] = apply_calibration(probs[m], float(t))
    return out


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, least: int = 20) -> list[dict[str, Any]]:
    """Per confidence bin of ``ece`` (``bus.calibration.confidence_bins``) holding at least ``least`` faces:
    its range, faces, mean confidence, accuracy."""
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = confidence_bins(conf, bins)
    rows = []
    for b in range(bins):
        m = which == b
        if m.sum() >= least:
            rows.append(
                {
                    "bin": f"{b / bins:.2f}-{(b + 1) / bins:.2f}",
                    "faces": int(m.sum()),
                    "confidence": round(float(conf[m].mean()), 3),
                    "accuracy": round(float(right[m].mean()), 3),
                }
            )
    return rows


def by_class(probs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    return {
        n: {
            "faces": int((pred == k).sum()),
            "confidence": round(float(conf[pred == k].mean()), 3),
            "accuracy": round(float((labels[pred == k] == k).mean()), 3),
        }
        for k, n in enumerate(names)
        if (pred == k).any()
    }


def study(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    yv: np.ndarray,
    yt: np.ndarray,
    names: list[str],
    halves: int = 3,
    seed: int = 0,
    steps: tuple[float, float] = (0.01, 0.02),
) -> dict[str, Any]:
    """Every form's ECE on ``val`` (where it is fitted) and ``test``, from each split's two views'
    probabilities (first view, second view); ``steps``: the grid of the two-parameter forms."""
    pv, pt = (val[0] + val[1]) / 2, (test[0] + test[1]) / 2
    out: dict[str, Any] = {}

    def score(name: str, cv: np.ndarray, ct: np.ndarray, **fit: Any) -> None:
        out[name] = {"ece_val": round(ece(cv, yv), 4), "ece_test": round(ece(ct, yt), 4), **fit}

    t = fit_temperature(pv, yv)
    cv, ct = apply_calibration(pv, t), apply_calibration(pt, t)
    score("temperature", cv, ct, T=round(t, 3))
    t_top = fit_temperature(pv, yv, "top")
    score("top_label", apply_calibration(pv, t_top), apply_calibration(pt, t_top), T=round(t_top, 3))
    out["reliability_val"], out["reliability_test"] = reliability(cv, yv), reliability(ct, yt)
    out["by_class_test"] = by_class(ct, yt, names)
    per_view = [(apply_calibration(a, t) + apply_calibration(b, t)) / 2 for a, b in (val, test)]
    score("per_view", *per_view, T=round(t, 3))
    geo_v, geo_t = (softmax((log_probs(a) + log_probs(b)) / 2) for a, b in (val, test))
    tg = fit_temperature(geo_v, yv)
    score("geometric", apply_calibration(geo_v, tg), apply_calibration(geo_t, tg), T=round(tg, 3))
    lv, lt = log_probs(pv), log_probs(pt)
    for name, s in (("t_entropy", entropy), ("t_top", top), ("t_margin", margin)):
        form = scaled(s)
        a, b = fit_grid(form, lv, yv, steps)
        score(name, form(lv, a, b), form(lt, a, b), a=round(a, 2), b=round(b, 2))
    temps = fit_per_class(pv, yv, len(names))
    score("per_class", apply_per_class(pv, temps), apply_per_class(pt, temps), T=[round(float(x), 3) for x in temps])
    rng, splits = np.random.default_rng(seed), []
    for _ in range(halves):
        idx = rng.permutation(len(yv))
        fit, held = idx[: len(idx) // 2], idx[len(idx) // 2 :]
        t1, tk = fit_temperature(pv[fit], yv[fit]), fit_per_class(pv[fit], yv[fit], len(names))
        t_top_half = fit_temperature(pv[fit], yv[fit], "top")
        splits.append(
            {
                "one_T_other_half": round(ece(apply_calibration(pv[held], t1), yv[held]), 4),
                "one_T_test": round(ece(apply_calibration(pt, t1), yt), 4),
                "per_class_other_half": round(ece(apply_per_class(pv[held], tk), yv[held]), 4),
                "per_class_test": round(ece(apply_per_class(pt, tk), yt), 4),
                "top_label_test": round(ece(apply_calibration(pt, t_top_half), yt), 4),
            }
        )
    out["per_class_halves"] = splits
    return out


def views(path: Path, images: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """The int8 model's probabilities (no class bias, no temperature) on grey ``images`` and on their
    mirrors zoomed by ``zoom``, each view alone through the classifier's code (``tflite_predict``)."""
    from bus.preprocess import grey_to_model_pixels
    from bus.preprocess import zoom as zoomed
    from bus.sidecar import load_spec
    from training.evaluate import tflite_predict

    spec = load_spec(path)
    x = grey_to_model_pixels(images, spec.size, spec.colour)
    mirrored = np.ascontiguousarray(zoomed(x, zoom)[:, :, ::-1])
    return (
        tflite_predict(path, x, mirror=False, calibrated=False),
        tflite_predict(path, mirrored, mirror=False, calibrated=False),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="an int8 FER2013 .tflite with its sidecar")
    ap.add_argument("--zoom", type=float, required=True, help="the mirror view's zoom (input.mirror_zoom)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/fer2013"), help="the FER2013 folder")
    ap.add_argument("--halves", type=int, default=3, help="random halves of PublicTest to refit on")
    args = ap.parse_args()
    from training.pipelines import load_source

    splits = load_source("fer", args.data)
    val, test = splits["val"], splits["test"]
    result = study(
        views(args.model, val.images, args.zoom),
        views(args.model, test.images, args.zoom),
        val.labels,
        test.labels,
        val.classes,
        halves=args.halves,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
