"""training.calibrate.ece_floor: the ECE sampling noise alone gives (issue 10's bar sits near it)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from bus.calibration import ece
from training.calibrate import ece_floor


def _probs(n: int, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(0, 1.5, (n, 7))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_floor_is_what_a_perfectly_calibrated_model_scores_and_shrinks_with_more_images() -> None:
    p = _probs(3589)
    floor = ece_floor(p, draws=100)
    assert floor["p5"] < floor["median"] < floor["p95"]
    # one more draw of labels from the probabilities themselves: a perfect model's ECE lands in the band
    rng = np.random.default_rng(7)
    labels = (rng.random((len(p), 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    assert floor["p5"] / 2 < ece(p, labels) < floor["p95"] * 2
    big = ece_floor(_probs(4 * 3589, seed=1), draws=50)
    assert 0.35 < big["median"] / floor["median"] < 0.7  # about 1/sqrt(4)
    assert ece_floor(p, draws=20, seed=3) == ece_floor(p, draws=20, seed=3)
