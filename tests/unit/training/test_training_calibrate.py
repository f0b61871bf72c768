"""training.calibrate: the ECE sampling noise alone gives (issue 10's bar sits near it); the fit, with and
without the mirror image, and the class bias, written into the sidecar the runtime reads; the CK+48
cross-dataset check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from click.testing import CliRunner

from bus.calibration import apply_calibration, ece, fit_prior_tau, prior_bias
from bus.sidecar import load_spec
from tests.unit.training.test_training_fer import random_fer_csv
from training.__main__ import cli
from training.calibrate import RULES, ZOOM_GRID, ZOOM_RULE, calibrate, cross_dataset, ece_floor, pick_zoom
from training.data import Dataset
from training.data.ck import CK_LABELS
from training.evaluate import tflite_predict


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


@pytest.fixture
def case(tiny: dict[str, Path], tmp_path: Path) -> tuple[Path, Dataset, Dataset]:
    """A copy of the tiny int8 model (its sidecar gets rewritten) and random stand-ins for the two test splits."""
    model = _copy(tiny["int8"], tmp_path)
    classes = list(load_spec(model).labels)
    return model, _split(300, 1, classes), _split(300, 2, classes)


def test_calibrate_fits_in_the_mode_it_writes_and_refitting_changes_nothing(
    case: tuple[Path, Dataset, Dataset],
) -> None:
    model, val, test = case
    dry = calibrate(model, val, test, write=False, mirror=True)
    assert load_spec(model).mirror is False and load_spec(model).temperature == 1.0  # dry run: untouched
    # by default the temperature is fitted for the top class's confidence; the NLL's is reported beside it
    by_nll = calibrate(model, val, test, write=False, mirror=True, objective="nll")
    # (random labels: the top-label fit flattens the tiny model to the bound, 20, in either mode; the NLL's not)
    plain = calibrate(model, val, test, write=False, mirror=False, objective="nll")
    assert dry["mirror"] and not plain["mirror"] and by_nll["temperature"] != plain["temperature"]
    assert "top-label log loss" in dry["fitted_on"] and "NLL" in by_nll["fitted_on"]
    assert by_nll["temperature"] == pytest.approx(dry["temperature_other"]["temperature"], rel=1e-3)
    assert dry["temperature"] == pytest.approx(by_nll["temperature_other"]["temperature"], rel=1e-3)
    assert by_nll["ece_test_after"] == pytest.approx(dry["temperature_other"]["ece_test_after"], abs=1e-4)

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


COUNTS = np.array([4000, 400, 4000, 7000, 5000, 3000, 5000])  # FER2013-like: the second class rare


def test_class_bias_fitted_on_val_written_kept_on_refit_and_removed_with_tau_zero(
    case: tuple[Path, Dataset, Dataset],
) -> None:
    model, val, test = case
    with pytest.raises(ValueError, match="needs the training split's class counts"):
        calibrate(model, val, test, prior_tau=0.5)
    with pytest.raises(ValueError, match=r"prior tau 1.5 is not in \[0, 1\]"):
        calibrate(model, val, test, prior_tau=1.5, train_counts=COUNTS)

    fixed = calibrate(model, val, test, prior_tau=0.5, train_counts=COUNTS)
    spec = load_spec(model)
    np.testing.assert_allclose(spec.class_bias, prior_bias(COUNTS, 0.5), atol=1e-4)
    assert fixed["prior_tau"] == 0.5 and spec.temperature == pytest.approx(fixed["temperature"])
    assert fixed["class_prior"]["disgust"] == pytest.approx(400 / COUNTS.sum(), abs=1e-4)
    # what the report says is what the runtime now gives
    pixels = test.images[..., None]
    runtime = tflite_predict(model, pixels)
    raw = tflite_predict(model, pixels, calibrated=False)
    np.testing.assert_allclose(runtime, apply_calibration(raw, spec.temperature, np.array(spec.class_bias)), atol=1e-5)
    assert fixed["accuracy_test"] == pytest.approx(float((runtime.argmax(1) == test.labels).mean()), abs=1e-4)
    assert fixed["accuracy_test_without_bias"] == pytest.approx(float((raw.argmax(1) == test.labels).mean()), abs=1e-4)

    kept = calibrate(model, val, test, train_counts=COUNTS)  # default: the sidecar's tau
    assert kept["prior_tau"] == 0.5 and kept["temperature"] == pytest.approx(fixed["temperature"], rel=1e-3)

    auto = calibrate(model, val, test, prior_tau="auto", train_counts=COUNTS)
    raw_val = tflite_predict(model, val.images[..., None], calibrated=False)
    assert auto["prior_tau"] == fit_prior_tau(raw_val, val.labels, COUNTS)[0]
    grid = auto["prior_tau_accuracy_val"]
    assert len(grid) == 11 and grid[str(auto["prior_tau"])] == max(grid.values()) == auto["accuracy_val"]
    assert json.loads(model.with_suffix(".json").read_text())["calibration"]["prior_tau_rule"].startswith("the most")

    with pytest.raises(ValueError, match="neither 'auto', 'no-cost' nor a number"):
        calibrate(model, val, test, prior_tau="best", train_counts=COUNTS)  # type: ignore[arg-type]
    free = calibrate(model, val, test, prior_tau="no-cost", train_counts=COUNTS)
    assert free["prior_tau"] == fit_prior_tau(raw_val, val.labels, COUNTS, rule="no-cost")[0]
    grid = free["prior_tau_accuracy_val"]
    assert grid[str(free["prior_tau"])] >= grid["0.0"]
    assert all(a < grid["0.0"] for g, a in grid.items() if float(g) > free["prior_tau"])
    assert json.loads(model.with_suffix(".json").read_text())["calibration"]["prior_tau_rule"] == RULES["no-cost"]
    refit = calibrate(model, val, test, train_counts=COUNTS)  # the sidecar's tau: how it was picked stays
    cal = json.loads(model.with_suffix(".json").read_text())["calibration"]
    assert refit["prior_tau"] == free["prior_tau"] and cal["prior_tau_rule"] == RULES["no-cost"]
    assert cal["prior_tau_accuracy_val"] == free["prior_tau_accuracy_val"]

    none = calibrate(model, val, test, prior_tau=0.0, train_counts=COUNTS)
    cal = json.loads(model.with_suffix(".json").read_text())["calibration"]
    assert none["prior_tau"] == 0.0
    assert not {"class_bias", "class_prior", "prior_tau_rule", "prior_tau_accuracy_val"} & set(cal)
    assert load_spec(model).class_bias == ()


def test_cross_dataset_on_ck_leaves_contempt_out_and_applies_the_calibration(
    case: tuple[Path, Dataset, Dataset],
) -> None:
    model, val, test = case
    ck = _split(140, 3, CK_LABELS)
    contempt = CK_LABELS.index("contempt")
    shared = int((ck.labels != contempt).sum())

    plain = cross_dataset(model, ck)
    assert plain["images"] == shared and "contempt" not in plain["classes"] and plain["prior_tau"] == 0.0
    assert plain["accuracy"] == plain["accuracy_without_bias"]

    result = calibrate(model, val, test, prior_tau=1.0, train_counts=COUNTS)
    from_sidecar = cross_dataset(model, ck)
    given = cross_dataset(model, ck, calibration=result)  # a dry run passes the fit instead
    assert from_sidecar == given and given["prior_tau"] == 1.0
    assert given["accuracy_without_bias"] == plain["accuracy"]
    # the figures are those of the fitted bias and temperature on the CK+ images of the shared classes
    names = list(load_spec(model).labels)
    keep = ck.labels != contempt
    y = np.array([names.index(CK_LABELS[i]) for i in ck.labels[keep]])
    raw = tflite_predict(model, ck.images[keep][..., None], calibrated=False)
    p = apply_calibration(raw, result["temperature"], np.array(result["class_bias"]))
    assert given["accuracy"] == pytest.approx(float((p.argmax(1) == y).mean()), abs=1e-4)
    assert given["ece"] == pytest.approx(ece(p, y), abs=1e-4) != plain["ece"]
    assert (p.argmax(1) != raw.argmax(1)).any()  # the bias of tau = 1 moved some labels: the check has teeth


def test_the_sidecar_tau_is_the_default_and_must_be_a_number(case: tuple[Path, Dataset, Dataset]) -> None:
    model, val, test = case
    with pytest.raises(ValueError, match="7 classes"):
        calibrate(model, val, test, prior_tau=0.5, train_counts=COUNTS[:3])
    side = model.with_suffix(".json")
    d = json.loads(side.read_text())
    d["calibration"] = {"temperature": 1.0, "class_bias": [0.1] * 7}  # a bias with no tau beside it
    side.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"calibration\.prior_tau is None: give the class bias's tau"):
        calibrate(model, val, test, train_counts=COUNTS)
    d["calibration"]["prior_tau"] = "strong"
    side.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"calibration\.prior_tau is 'strong'"):
        calibrate(model, val, test, train_counts=COUNTS)


def test_calibrate_cli_takes_the_training_counts_and_refuses_a_bad_tau(
    case: tuple[Path, Dataset, Dataset], tmp_path: Path
) -> None:
    model = case[0]
    training = [0] * 9 + [1] + [2, 3, 3, 4, 5, 6]  # class 0 common, class 1 rare (PublicTest: one of each)
    data = random_fer_csv(tmp_path / "fer2013.csv", training=training)
    runner = CliRunner()
    result = runner.invoke(cli, ["calibrate", str(model), "--data", str(data), "--prior-tau", "0.3"])
    assert result.exit_code == 0, result.output
    spec = load_spec(model)
    counts = np.array([9, 1, 1, 2, 1, 1, 1])
    np.testing.assert_allclose(spec.class_bias, prior_bias(counts, 0.3), atol=1e-4)  # Training's, not the others'
    assert spec.class_bias[0] < 0 < spec.class_bias[1]
    assert json.loads(result.stdout)["calibration"]["prior_tau"] == 0.3
    for bad in ("2", "-0.1", "some"):
        result = runner.invoke(cli, ["calibrate", str(model), "--data", str(data), "--prior-tau", bad])
        assert result.exit_code == 2 and "is neither 'auto', 'no-cost' nor a number in [0, 1]" in result.output


def test_pick_zoom_takes_the_most_accurate_and_on_a_tie_the_closest_to_one() -> None:
    assert pick_zoom({0.9: 0.70, 1.0: 0.69, 1.05: 0.71}) == 1.05
    assert pick_zoom({0.9: 0.71, 1.0: 0.70, 1.05: 0.71, 1.2: 0.71}) == 1.05  # |log 1.05| < |log 0.9|
    assert pick_zoom({0.95: 0.70, 1.0: 0.70}) == 1.0
    with pytest.raises(ValueError, match="no zoom"):
        pick_zoom({})


def test_mirror_zoom_auto_is_picked_on_val_written_and_used_by_the_runtime(
    case: tuple[Path, Dataset, Dataset],
) -> None:
    model, val, test = case
    with pytest.raises(ValueError, match="needs the mirror view"):
        calibrate(model, val, test, mirror=False, mirror_zoom=1.1)
    result = calibrate(model, val, test, mirror=True, mirror_zoom="auto")
    grid = result["mirror_zoom_accuracy_val"]
    assert list(grid) == [str(z) for z in ZOOM_GRID] and result["mirror_zoom_rule"] == ZOOM_RULE
    zoom = result["mirror_zoom"]
    assert grid[str(zoom)] == max(grid.values()) == result["accuracy_val"]  # no bias: the argmax is the raw one
    spec = load_spec(model)
    assert spec.mirror and spec.mirror_zoom == zoom
    # what the runtime now does on val is what the fit scored
    x = val.images[..., None]
    assert float((tflite_predict(model, x).argmax(1) == val.labels).mean()) == pytest.approx(
        result["accuracy_val"], abs=1e-4
    )
    # a refit from the sidecar keeps the zoom and its record; a given zoom replaces both
    again = calibrate(model, val, test)
    assert (
        again["mirror_zoom"] == zoom
        and "mirror_zoom_accuracy_val" in json.loads(model.with_suffix(".json").read_text())["calibration"]
    )
    calibrate(model, val, test, mirror_zoom=1.0)
    d = json.loads(model.with_suffix(".json").read_text())
    assert "mirror_zoom" not in d["input"] and "mirror_zoom_accuracy_val" not in d["calibration"]
    assert load_spec(model).mirror_zoom == 1.0
    # off with the mirror: the zoom goes too
    calibrate(model, val, test, mirror=True, mirror_zoom=0.9)
    calibrate(model, val, test, mirror=False)
    assert "mirror_zoom" not in json.loads(model.with_suffix(".json").read_text())["input"]


def test_calibrate_cli_refuses_a_bad_mirror_zoom(case: tuple[Path, Dataset, Dataset], tmp_path: Path) -> None:
    model = case[0]
    data = random_fer_csv(tmp_path / "fer2013.csv")
    runner = CliRunner()
    for bad in ("3", "0", "near"):
        result = runner.invoke(cli, ["calibrate", str(model), "--data", str(data), "--mirror", "--mirror-zoom", bad])
        assert result.exit_code == 2 and "is neither 'auto' nor a number in [0.5, 2.0]" in result.output
    result = runner.invoke(cli, ["calibrate", str(model), "--data", str(data), "--mirror", "--mirror-zoom", "1.1"])
    assert result.exit_code == 0, result.output
    assert load_spec(model).mirror_zoom == 1.1
