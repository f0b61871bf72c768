"""Probability calibration: a class bias and one temperature per model, fitted offline, applied at run time.

Consumes class probabilities (N x K, rows summing to 1, as the int8 model outputs them after
dequantisation) and produces probabilities of the same shape: ``softmax((log(p) + b) / T)``.

- ``b``, the class bias (optional; none by default), is post-hoc logit adjustment (Menon et al., 2021):
  ``b = -tau * log(prior)`` with the class shares of the training split. A model trained on FER2013
  learns its skewed prior (disgust 1.5 % of the images, happy 25 %) and so under-calls rare classes on
  faces from elsewhere; ``tau`` (0: none, 1: the full correction for a uniform prior) is picked on a
  held-out split (:func:`fit_prior_tau`). Unlike ``T`` it can change the label: that is its purpose.
- ``T``, temperature scaling (Guo et al., 2017), divides the (adjusted) log-probabilities before the
  softmax: the ranking never changes, only how sure the model says it is. ``T`` is fitted after ``b`` on
  the held-out split (FER2013 PublicTest) by one of two objectives (:func:`fit_temperature`): the
  negative log-likelihood of the labels (``"nll"``, Guo et al.), which scores the whole distribution, or
  the log loss of the top class's probability as the chance that the top class is right (``"top"``,
  :func:`top_label_nll`): the one number the product shows and its uncertain state is judged by, made
  calibrated on its own (top-label calibration, Gupta & Ramdas, 2022). Where a model's other classes
  are calibrated differently from its top class the two disagree, and only the second is about what a
  user reads.

Both are kept in the model's sidecar (``bus.sidecar``); the classifier applies them
(``classifier.model``), training fits and reports them (``training.calibrate``).

numpy only: the runtime stages import this module, training does too, so both apply the same rule.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# An int8 probability is a multiple of 1/256: zero means "below half a step", not impossible.
FLOOR = 1.0 / 512
ECE_BINS = 15
T_RANGE = (0.05, 20.0)
BIAS_LIMIT = 10.0  # a sanity bound on |b| per class (log-probabilities span -log(512), about 6.2)
TAU_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1


def apply_calibration(probs: np.ndarray, temperature: float = 1.0, bias: np.ndarray | None = None) -> np.ndarray:
    """softmax((log(p) + bias) / T), row-wise; ``T == 1`` with no bias returns the input unchanged (no copy)."""
    if temperature == 1.0 and bias is None:
        return probs
    logp = np.log(np.maximum(np.asarray(probs, np.float64), FLOOR))
    if bias is not None:
        logp = logp + np.asarray(bias, np.float64)
    logp /= temperature
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def smoothed_prior(counts: np.ndarray) -> np.ndarray:
    """Class shares of the per-class training ``counts``, add-one smoothed (a class never seen is not 0)."""
    c = np.asarray(counts, np.float64) + 1.0
    return c / c.sum()


def prior_bias(counts: np.ndarray, tau: float) -> np.ndarray:
    """``-tau * log(prior)`` for the per-class training ``counts`` (:func:`smoothed_prior`), shifted to
    mean 0 (a constant added to every class changes nothing)."""
    b = -tau * np.log(smoothed_prior(counts))
    return b - b.mean()


def fit_prior_tau(
    probs: np.ndarray,
    labels: np.ndarray,
    counts: np.ndarray,
    grid: tuple[float, ...] = TAU_GRID,
    rule: Literal["best", "no-cost"] = "best",
) -> tuple[float, dict[float, float]]:
    """A ``tau`` of ``grid`` for :func:`prior_bias`, picked by accuracy on ``labels``, and the accuracy of
    every ``tau`` of the grid. ``rule="best"``: the highest accuracy, on a tie the smallest ``tau`` (the
    least change). ``rule="no-cost"``: the largest ``tau`` whose accuracy is no lower than with no bias
    (the grid's first ``tau``, 0): the bias as close to a balanced classifier (``tau = 1``, Menon et al.,
    2021) as the split allows without losing accuracy on it; for faces from elsewhere, whose prior is not
    the training split's. The temperature does not move the argmax, so ``tau`` is fitted first."""
    if len(labels) == 0:
        raise ValueError("no samples to fit a class bias on")
    if rule not in ("best", "no-cost"):
        raise ValueError(f"unknown rule {rule!r}: 'best' or 'no-cost'")
    if not grid or grid[0] != 0.0:
        raise ValueError("the grid needs tau = 0 (no bias) first")
    logp = np.log(np.maximum(np.asarray(probs, np.float64), FLOOR))
    scores = [float(((logp + prior_bias(counts, t)).argmax(axis=1) == labels).mean()) for t in grid]
    free = [i for i, s in enumerate(scores) if s >= scores[0]]  # no less accurate than no bias
    pick = max(free, key=lambda i: grid[i]) if rule == "no-cost" else int(np.argmax(scores))  # argmax: first best
    return grid[pick], dict(zip(grid, scores, strict=True))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    p = np.maximum(probs[np.arange(len(labels)), labels], 1e-12)
    return float(-np.log(p).mean())


def top_label_nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean log loss of the top class's probability read as the chance that the top class is right (a
    proper scoring rule for that confidence alone: its minimum over a family is the member whose shown
    confidence is calibrated, bin-free, unlike the ECE)."""
    conf = np.clip(np.asarray(probs, np.float64).max(axis=1), 1e-12, 1.0 - 1e-12)
    right = probs.argmax(axis=1) == labels
    return float(-np.where(right, np.log(conf), np.log1p(-conf)).mean())


Objective = Literal["top", "nll"]
OBJECTIVES: dict[str, str] = {"top": "top-label log loss", "nll": "NLL"}  # as the sidecar records the fit


def fit_temperature(probs: np.ndarray, labels: np.ndarray, objective: Objective = "nll") -> float:
    """The ``T`` in ``T_RANGE`` that minimises ``objective`` on ``labels``: ``"nll"`` (:func:`nll`) or
    ``"top"`` (:func:`top_label_nll`). A grid of 61 steps on log T, then golden-section search between
    the best step's neighbours (the NLL is convex in 1/T; the top-label loss need not be, so the grid
    brackets its best basin first)."""
    if len(labels) == 0:
        raise ValueError("no samples to fit a temperature on")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown temperature objective {objective!r}: one of {', '.join(OBJECTIVES)}")
    loss = nll if objective == "nll" else top_label_nll

    def f(log_t: float) -> float:
        return loss(apply_calibration(probs, float(np.exp(log_t))), labels)

    steps = np.linspace(np.log(T_RANGE[0]), np.log(T_RANGE[1]), 61)
    best = int(np.argmin([f(float(x)) for x in steps]))
    lo, hi = float(steps[max(best - 1, 0)]), float(steps[min(best + 1, len(steps) - 1)])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(np.exp((lo + hi) / 2))


def confidence_bins(conf: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The bin (0 to ``bins - 1``) of each confidence among ``bins`` equal-width bins of [0, 1], each bin
    closed on the right: (lo, hi], the first [0, hi]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class: sum over ``bins`` equal-width confidence bins of
    (bin share) x |accuracy - mean confidence| (Naeini et al., 2015; Guo et al., 2017)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = confidence_bins(conf, bins)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)
