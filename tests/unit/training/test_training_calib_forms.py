"""The calibration-forms study (training.calib_forms; models/README.md, "the students' calibration") on
synthetic probabilities whose miscalibration is known."""

from __future__ import annotations

import numpy as np

from bus.calibration import ece
from training.calib_forms import apply_per_class, fit_per_class, reliability, softmax, study

NAMES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): softmax(z) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, 7))
    z[np.arange(n), rng.integers(0, 7, n)] += 1.5
    labels = np.array([rng.choice(7, p=p) for p in softmax(z)])
    return z, labels


def test_per_class_temperature_recovers_a_class_of_its_own() -> None:
    z, y = _sample(6000, 0)
    pred = z.argmax(axis=1)
    # the model is over-confident (x2) on the faces it calls class 6 only, right elsewhere
    scale = np.where(pred == 6, 2.0, 1.0)[:, None]
    p = softmax(z * scale).astype(np.float32)
    temps = fit_per_class(p, y, 7)
    assert abs(temps[6] - 2.0) < 0.3
    assert np.all(np.abs(temps[:6] - 1.0) < 0.25)
    fixed = apply_per_class(p, temps)
    assert (fixed.argmax(axis=1) == p.argmax(axis=1)).all()  # a temperature never changes the label
    assert ece(fixed, y) < ece(p, y) / 2


def test_reliability_bins_count_each_face_once() -> None:
    z, y = _sample(3000, 1)
    p = softmax(z)
    rows = reliability(p, y, least=1)
    assert sum(r["faces"] for r in rows) == len(y)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    # perfectly calibrated: each well-filled bin's accuracy within sampling noise of its confidence
    for r in rows:
        if r["faces"] >= 200:
            assert abs(r["accuracy"] - r["confidence"]) < 4 * np.sqrt(0.25 / r["faces"]) + 0.01


def test_study_fits_on_val_and_sees_a_global_under_confidence_fixed_by_one_temperature() -> None:
    zv, yv = _sample(3000, 2)
    zt, yt = _sample(3000, 3)
    under = 0.6  # both views under-confident alike: one temperature of 0.6 undoes it
    val = (softmax(under * zv), softmax(under * zv))
    test = (softmax(under * zt), softmax(under * zt))
    out = study(val, test, yv, yt, NAMES, halves=2, steps=(0.05, 0.1))
    assert abs(out["temperature"]["T"] - under) < 0.06
    assert out["temperature"]["ece_test"] < 0.03
    for form in ("per_view", "geometric", "t_entropy", "t_top", "t_margin", "per_class", "top_label"):
        assert out[form]["ece_test"] < 0.04, form
    assert abs(out["top_label"]["T"] - under) < 0.1  # the same distortion, seen through the top class alone
    assert len(out["per_class_halves"]) == 2
    assert all(h["top_label_test"] < 0.04 for h in out["per_class_halves"])
    assert set(out["by_class_test"]) <= set(NAMES)
