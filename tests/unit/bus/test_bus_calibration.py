"""Temperature scaling and the expected calibration error (bus.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from bus.calibration import FLOOR, apply_temperature, ece, fit_temperature, nll


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample(n: int, sharpen: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the 'model' says softmax(sharpen * z): over-confident for sharpen > 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 0.8, (n, 7))  # keeps the distorted probabilities above FLOOR (int8 zeros)
    truth = _softmax(z)
    labels = np.array([rng.choice(7, p=p) for p in truth])
    return _softmax(sharpen * z).astype(np.float32), labels


def test_temperature_one_is_the_identity_and_ranking_never_changes() -> None:
    p, _ = _sample(200, 1.0)
    assert apply_temperature(p, 1.0) is p
    for t in (0.5, 2.0, 5.0):
        q = apply_temperature(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(q.argmax(axis=1), p.argmax(axis=1))
    assert (apply_temperature(p, 2.0).max(axis=1) <= p.max(axis=1) + 1e-6).all()  # T > 1 softens
    assert (apply_temperature(p, 0.5).max(axis=1) >= p.max(axis=1) - 1e-6).all()  # T < 1 sharpens


def test_int8_zeros_are_floored_not_impossible() -> None:
    p = np.array([[1.0, 0.0, 0.0]], np.float32)  # what a dequantised int8 softmax can give
    q = apply_temperature(p, 2.0)
    assert np.isfinite(q).all() and q[0, 1] > 0 and q[0, 0] > q[0, 1]
    assert q[0, 1] == pytest.approx(np.sqrt(FLOOR) / (1 + 2 * np.sqrt(FLOOR)), rel=1e-4)


@pytest.mark.parametrize("sharpen", [0.5, 1.0, 2.0])
def test_fit_recovers_the_temperature_that_undoes_the_distortion(sharpen: float) -> None:
    p, y = _sample(20000, sharpen)
    t = fit_temperature(p, y)
    assert t == pytest.approx(sharpen, rel=0.08)
    assert nll(apply_temperature(p, t), y) <= nll(p, y) + 1e-9


def test_ece_small_when_calibrated_large_when_over_confident_and_fixed_by_the_fit() -> None:
    calibrated, y = _sample(20000, 1.0, seed=1)
    over, _ = _sample(20000, 2.5, seed=1)
    assert ece(calibrated, y) < 0.02
    assert ece(over, y) > 0.1
    assert ece(apply_temperature(over, fit_temperature(over, y)), y) < 0.02


def test_ece_by_hand() -> None:
    # two bins used: 0.9 confidence right once and wrong once (|0.5 - 0.9| = 0.4), 0.5 right (|1 - 0.5|)
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    y = np.array([0, 1, 0])
    assert ece(p, y) == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.5)


def test_fit_needs_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        fit_temperature(np.zeros((0, 7)), np.zeros(0, np.int64))
