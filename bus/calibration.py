"""Probability calibration: one temperature per model, fitted offline, applied at run time.

Consumes class probabilities (N x K, rows summing to 1, as the int8 model outputs them after
dequantisation) and produces probabilities of the same shape. Temperature scaling (Guo et al., 2017)
divides the log-probabilities by ``T`` before the softmax: the ranking (and so the label) never
changes, only how sure the model says it is. ``T`` is fitted by minimising the negative log-likelihood
on a held-out split (FER2013 PublicTest) and kept in the model's sidecar (``bus.sidecar``); the
classifier applies it (``classifier.model``), training fits and reports it (``training.calibrate``).

numpy only: the runtime stages import this module, training does too, so both apply the same rule.
"""

from __future__ import annotations

import numpy as np

# An int8 probability is a multiple of 1/256: zero means "below half a step", not impossible.
FLOOR = 1.0 / 512
ECE_BINS = 15
T_RANGE = (0.05, 20.0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T), row-wise; ``T == 1`` returns the input unchanged (no copy)."""
    if temperature == 1.0:
        return probs
    logp = np.log(np.maximum(np.asarray(probs, np.float64), FLOOR)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    p = np.maximum(probs[np.arange(len(labels)), labels], 1e-12)
    return float(-np.log(p).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in ``T_RANGE`` that minimises the NLL of ``labels`` (golden-section search on log T;
    the NLL is convex in 1/T for fixed log-probabilities, so the search finds the optimum)."""
    if len(labels) == 0:
        raise ValueError("no samples to fit a temperature on")
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    g = (np.sqrt(5) - 1) / 2

    def f(log_t: float) -> float:
        return nll(apply_temperature(probs, float(np.exp(log_t))), labels)

    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(np.exp((lo + hi) / 2))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class: sum over ``bins`` equal-width confidence bins of
    (bin share) x |accuracy - mean confidence| (Naeini et al., 2015; Guo et al., 2017)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)
