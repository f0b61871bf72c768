"""Temperature scaling, the class bias (logit adjustment) and the expected calibration error (bus.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from bus.calibration import (
    FLOOR,
    apply_calibration,
    ece,
    fit_prior_tau,
    fit_temperature,
    nll,
    prior_bias,
    top_label_nll,
)


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
    assert apply_calibration(p, 1.0) is p
    for t in (0.5, 2.0, 5.0):
        q = apply_calibration(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(q.argmax(axis=1), p.argmax(axis=1))
    assert (apply_calibration(p, 2.0).max(axis=1) <= p.max(axis=1) + 1e-6).all()  # T > 1 softens
    assert (apply_calibration(p, 0.5).max(axis=1) >= p.max(axis=1) - 1e-6).all()  # T < 1 sharpens


def test_int8_zeros_are_floored_not_impossible() -> None:
    p = np.array([[1.0, 0.0, 0.0]], np.float32)  # what a dequantised int8 softmax can give
    q = apply_calibration(p, 2.0)
    assert np.isfinite(q).all() and q[0, 1] > 0 and q[0, 0] > q[0, 1]
    assert q[0, 1] == pytest.approx(np.sqrt(FLOOR) / (1 + 2 * np.sqrt(FLOOR)), rel=1e-4)


@pytest.mark.parametrize("sharpen", [0.5, 1.0, 2.0])
def test_fit_recovers_the_temperature_that_undoes_the_distortion(sharpen: float) -> None:
    p, y = _sample(20000, sharpen)
    t = fit_temperature(p, y)
    assert t == pytest.approx(sharpen, rel=0.08)
    assert nll(apply_calibration(p, t), y) <= nll(p, y) + 1e-9
    top = fit_temperature(p, y, "top")  # the top class alone carries less of the signal: a looser match
    assert top == pytest.approx(sharpen, rel=0.15)
    assert top_label_nll(apply_calibration(p, top), y) <= top_label_nll(p, y) + 1e-9


def test_top_label_fit_keeps_the_shown_confidence_right_where_the_nll_fit_does_not() -> None:
    """The top class is right exactly as often as it says; when it is wrong the answer is the class the
    model gave least. The NLL, which scores that class too, softens every face to raise it; the top-label
    fit leaves the shown confidence as it is."""
    rng = np.random.default_rng(5)
    c = rng.uniform(0.55, 0.95, 20000)
    p = np.stack([c, 0.98 * (1 - c), 0.02 * (1 - c)], axis=1).astype(np.float32)
    y = np.where(rng.random(len(c)) < c, 0, 2)
    assert ece(p, y) < 0.02
    t_nll, t_top = fit_temperature(p, y, "nll"), fit_temperature(p, y, "top")
    assert t_nll > 1.2 and t_top == pytest.approx(1.0, abs=0.05)
    assert ece(apply_calibration(p, t_top), y) < 0.02 < 0.05 < ece(apply_calibration(p, t_nll), y)
    assert top_label_nll(p, y) == pytest.approx(-np.mean(np.where(y == 0, np.log(c), np.log(1 - c))), rel=1e-5)


def test_ece_small_when_calibrated_large_when_over_confident_and_fixed_by_the_fit() -> None:
    calibrated, y = _sample(20000, 1.0, seed=1)
    over, _ = _sample(20000, 2.5, seed=1)
    assert ece(calibrated, y) < 0.02
    assert ece(over, y) > 0.1
    assert ece(apply_calibration(over, fit_temperature(over, y)), y) < 0.02


def test_ece_by_hand() -> None:
    # two bins used: 0.9 confidence right once and wrong once (|0.5 - 0.9| = 0.4), 0.5 right (|1 - 0.5|)
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    y = np.array([0, 1, 0])
    assert ece(p, y) == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.5)


def test_fit_needs_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        fit_temperature(np.zeros((0, 7)), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="unknown temperature objective 'ece'"):
        fit_temperature(np.full((2, 2), 0.5), np.zeros(2, np.int64), "ece")  # type: ignore[arg-type]


def test_class_bias_is_added_to_the_log_probabilities_before_the_temperature() -> None:
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], np.float32)
    b = np.array([0.0, 1.0, -1.0])
    for t in (1.0, 0.5, 2.0):
        z = (np.log(p) + b) / t
        expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(apply_calibration(p, t, b), expected, rtol=1e-5)
    assert apply_calibration(p, 1.0, b).argmax(axis=1).tolist() == [1, 2]  # unlike T, it can change the label
    np.testing.assert_allclose(apply_calibration(p, 2.0, np.zeros(3)), apply_calibration(p, 2.0), rtol=1e-6)


def test_prior_bias_favours_rare_classes_in_proportion_to_tau() -> None:
    counts = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965])  # FER2013 Training
    assert np.allclose(prior_bias(counts, 0.0), 0.0)
    b = prior_bias(counts, 1.0)
    assert b.mean() == pytest.approx(0.0, abs=1e-12) and b.argmax() == 1 and b.argmin() == 3
    np.testing.assert_allclose(prior_bias(counts, 0.4), 0.4 * b)
    # tau = 1 turns a posterior under the training prior into one under a uniform prior: p / prior
    prior = (counts + 1) / (counts + 1).sum()
    p = np.full((1, 7), 1 / 7)
    np.testing.assert_allclose(apply_calibration(p, 1.0, b)[0], (1 / prior) / (1 / prior).sum(), rtol=1e-5)
    assert np.isfinite(prior_bias(np.array([10, 0, 5]), 1.0)).all()  # a class never seen: smoothed


def test_fit_prior_tau_picks_the_most_accurate_and_on_a_tie_the_smallest() -> None:
    counts = np.array([90, 10])  # class 1 is rare in training ...
    # ... and every image's network output leans to class 0 by a margin only a bias of > 1.0 overturns
    p = np.tile(np.array([[0.75, 0.25]]), (10, 1))
    labels = np.array([1] * 6 + [0] * 4)  # most of these are class 1: a strong enough bias wins
    full = prior_bias(counts, 1.0)
    needed = np.log(0.75 / 0.25) / (full[1] - full[0])  # the tau at which the bias matches the margin
    tau, scores = fit_prior_tau(p, labels, counts)
    assert tau > needed and tau == pytest.approx(np.ceil(needed * 10) / 10)  # the smallest that flips them
    assert scores[tau] == max(scores.values()) and len(scores) == 11
    assert fit_prior_tau(p, np.zeros(10, np.int64), counts)[0] == 0.0  # nothing to gain: none
    with pytest.raises(ValueError, match="no samples"):
        fit_prior_tau(np.zeros((0, 2)), np.zeros(0, np.int64), counts)


def test_fit_prior_tau_no_cost_picks_the_largest_tau_as_accurate_as_none() -> None:
    counts = np.array([90, 10])
    margin = np.log(0.75 / 0.25) / (prior_bias(counts, 1.0)[1] - prior_bias(counts, 1.0)[0])  # tau that flips
    p = np.tile(np.array([[0.75, 0.25]]), (10, 1))
    # half of the images are class 1: flipping them all to 1 costs nothing (5 right either way) ...
    even = np.array([1] * 5 + [0] * 5)
    tau, scores = fit_prior_tau(p, even, counts, rule="no-cost")
    assert tau == 1.0 and scores[1.0] == scores[0.0] == 0.5
    assert fit_prior_tau(p, even, counts)[0] == 0.0  # "best": on a tie the smallest
    # ... where the flip costs accuracy, the largest tau below the flip (no label changed yet)
    mostly_0 = np.array([1] * 3 + [0] * 7)
    tau, scores = fit_prior_tau(p, mostly_0, counts, rule="no-cost")
    assert tau < margin < tau + 0.1 + 1e-9 and scores[tau] == 0.7 and scores[1.0] == 0.3
    # ... and where it gains, the largest tau that gains (here every tau past the flip)
    mostly_1 = np.array([1] * 7 + [0] * 3)
    assert fit_prior_tau(p, mostly_1, counts, rule="no-cost")[0] == 1.0
    with pytest.raises(ValueError, match="tau = 0"):
        fit_prior_tau(p, even, counts, grid=(0.5, 1.0), rule="no-cost")
    with pytest.raises(ValueError, match="unknown rule"):
        fit_prior_tau(p, even, counts, rule="no_cost")  # type: ignore[arg-type]


def test_fit_prior_tau_no_cost_looks_past_a_dip() -> None:
    """A curve that dips below tau 0 and comes back: the largest free tau, not the last before the dip."""
    counts = np.array([90, 10])
    gap = prior_bias(counts, 1.0)[1] - prior_bias(counts, 1.0)[0]
    # image i leans to class 0 by a margin that a bias of tau > i/10 + 0.05 overturns
    margins = np.exp((np.arange(10) / 10 + 0.05) * gap)
    p = np.stack([margins / (1 + margins), 1 / (1 + margins)], axis=1)
    labels = np.array([0, 1, 1, 0, 1, 1, 1, 1, 1, 1])  # tau 0.1 flips a 0 (the dip), later ones gain back
    tau, scores = fit_prior_tau(p, labels, counts, rule="no-cost")
    assert scores[0.1] < scores[0.0] == 0.2 and scores[1.0] == 0.8
    assert tau == 1.0
