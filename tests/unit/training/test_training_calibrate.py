"""training.calibrate: the ECE sampling noise alone gives (issue 10's bar sits near it); the fit, with and
without the mirror image, written into the sidecar the runtime reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from bus.calibration import ece
from bus.sidecar import load_spec
from training.calibrate import calibrate, ece_floor
from training.data import Dataset


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


def _copy(model: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m.tflite"
    shutil.copy(model, dst)
    shutil.copy(model.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _split(n: int, seed: int, classes: list[str]) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), rng.integers(0, len(classes), n), classes)


def test_calibrate_fits_in_the_mode_it_writes_and_refitting_changes_nothing(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    model = _copy(tiny["int8"], tmp_path)
    classes = list(load_spec(model).labels)
    val, test = _split(300, 1, classes), _split(300, 2, classes)

    dry = calibrate(model, val, test, write=False, mirror=True)
    assert load_spec(model).mirror is False and load_spec(model).temperature == 1.0  # dry run: untouched
    plain = calibrate(model, val, test, write=False, mirror=False)
    assert dry["mirror"] and not plain["mirror"] and dry["temperature"] != plain["temperature"]

    first = calibrate(model, val, test, mirror=True)
    spec = load_spec(model)
    assert spec.mirror is True and spec.temperature == pytest.approx(first["temperature"])
    assert json.loads(model.with_suffix(".json").read_text())["calibration"]["accuracy_val"] == first["accuracy_val"]
    assert first["temperature"] == dry["temperature"]
    # Fitted again on a sidecar that has its temperature already: the network's own probabilities are
    # used, not the calibrated ones undone, so the fit is the same (it was not, for T < 1, before).
    again = calibrate(model, val, test)
    assert again["mirror"] is True
    assert again["temperature"] == pytest.approx(first["temperature"], rel=1e-3)
    assert again["ece_test_before"] == pytest.approx(first["ece_test_before"], abs=1e-4)
