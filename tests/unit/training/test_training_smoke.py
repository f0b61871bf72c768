"""Smoke training through the real CLI: train 1 epoch, cross-validate, export int8, check the round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.unit.training.test_training_ck import make_ck
from tests.unit.training.test_training_fer import rows, write

ROOT = Path(__file__).resolve().parents[3]
pytest.importorskip("tensorflow")


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.timeout(900)  # 2-fold CV + export: ~100 s alone, 300+ s on a loaded 2-core machine
def test_ck_smoke_train_export_roundtrip(tmp_path: Path) -> None:
    data = make_ck(tmp_path / "ck")
    out, models = tmp_path / "run", tmp_path / "models"
    args = [
        "--source",
        "ck",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--folds",
        "2",
        "--batch",
        "16",
        "--out",
        str(out),
        "--models-dir",
        str(models),
        "--mixed",
        "off",
    ]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2-fold subject-independent" in first.stdout
    tflite, sidecar = models / "ck_emonet.tflite", models / "ck_emonet.json"
    spec = json.loads(sidecar.read_text())
    assert spec["labels"][1] == "contempt" and spec["input"] == {
        "size": 48,
        "colour": "grey",
        "scaling": "x/255",
        "crop_margin": 0.0,
        "mirror": False,
    }
    cv = json.loads((models / "ck_emonet.cv.json").read_text())
    assert len(cv["folds"]) == 2 and 0 <= cv["mean_accuracy"] <= 1
    assert (out / "all" / "eval-float" / "confusion.png").stat().st_size > 1000
    assert json.loads((out / "fold0" / "eval" / "report.json").read_text())["confusion"]

    # Float vs int8 on one batch: the exported graph matches the Keras model.
    import keras

    from training.data.ck import load_ck
    from training.evaluate import tflite_predict
    from training.train import predict

    model = keras.models.load_model(out / "all" / "final.keras")
    x = load_ck(data).images[:32, ..., None]
    p_float, p_int8 = predict(model, x, tta=False), tflite_predict(tflite, x)
    assert p_int8.shape == p_float.shape == (32, 7)
    # A 1-epoch model on random pixels is near-uniform, so argmax agreement says little: compare the
    # probabilities themselves (int8 output resolution is 1/256).
    assert np.abs(p_float - p_int8).mean() < 0.02
    assert np.abs(p_float - p_int8).max() < 0.1

    second = run_cli(*args)  # without --retrain the weights are reused
    assert second.returncode == 0 and "reusing weights" in second.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "ck", "--data", "/nonexistent"], "image folder not found"),
        (["--source", "fer", "--data", "/nonexistent"], "FER2013 data not found"),
        ([], "--source is required"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    result = run_cli(*args, "--mixed", "off", timeout=120)
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.parametrize("sub", [[], ["evaluate"], ["export"]])
def test_help(sub: list[str]) -> None:
    result = run_cli(*sub, "--help", timeout=60)
    assert result.returncode == 0 and "Usage" in result.stdout


# --keep-head / --lr: option checks in-process (CliRunner), the pipelines with training stubbed out, and
# one real 1-epoch fit of a narrow emonet.


def invoke(*args: str):
    from click.testing import CliRunner

    from training.__main__ import cli

    return CliRunner().invoke(cli, [*args, "--mixed", "off"])


@pytest.fixture(scope="module")
def init_models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Narrow emonets (width 4) saved as .keras, by number of outputs."""
    import keras

    from training.models import emonet

    keras.mixed_precision.set_global_policy("float32")
    root = tmp_path_factory.mktemp("init")
    paths = {}
    for n in (7, 8):
        paths[n] = root / f"emonet{n}.keras"
        emonet(n, width=4).save(paths[n])
    return paths


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep-head"], "--keep-head needs --init"),
        (["--lr", "0"], "--lr must be in (0, 1)"),
        (["--lr", "5"], "--lr must be in (0, 1)"),
        (["--lr", "-1e-3"], "--lr must be in (0, 1)"),
    ],
)
def test_keep_head_and_lr_usage_errors(args: list[str], message: str) -> None:
    result = invoke("--source", "ck", "--data", "/nonexistent", *args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    ("source", "extra", "lr"),
    [
        ("fer", [], 2e-3),
        ("fer", ["--lr", "5e-4"], 5e-4),
        ("ck", [], 2e-3),
        ("ck", ["--init", "INIT"], 1e-3),
        ("ck", ["--init", "INIT", "--keep-head", "--lr", "3e-4"], 3e-4),
    ],
)
def test_lr_and_keep_head_reach_every_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, extra: list[str], lr: float
) -> None:
    import training.evaluate
    import training.export
    import training.pipelines

    calls: list[tuple[float, Path | None, bool]] = []

    def fake_train(model_name, train, val, out, cfg, retrain, init, keep_head=False):
        calls.append((cfg.lr, init, keep_head))
        return object(), True

    monkeypatch.setattr(training.pipelines, "_load_or_train", fake_train)
    monkeypatch.setattr(training.evaluate, "evaluate_model", lambda *a, **k: {"accuracy": 0.5, "accuracy_no_tta": 0.5})
    monkeypatch.setattr(training.evaluate, "plot_history", lambda *a, **k: None)
    monkeypatch.setattr(training.export, "export_and_check", lambda *a, **k: {"summary": "exported"})
    data = make_ck(tmp_path / "ck") if source == "ck" else write(tmp_path / "fer2013.csv", rows(3))
    init = tmp_path / "init.keras"
    init.write_bytes(b"")  # never loaded: training is stubbed
    extra = [str(init) if a == "INIT" else a for a in extra]
    result = invoke("--source", source, "--data", str(data), "--folds", "2", "--out", str(tmp_path / "run"), *extra)
    assert result.exit_code == 0, result.output
    keep = "--keep-head" in extra
    # CK+: two folds and the model on all subjects, all with the same learning rate and head choice
    assert calls == [(lr, init if "--init" in extra else None, keep)] * (3 if source == "ck" else 1)


def test_keep_head_continues_from_the_init_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, init_models: dict[int, Path]
) -> None:
    import keras

    import training.pipelines
    from training.data import Dataset
    from training.data.ck import CK_LABELS
    from training.train import TrainConfig, fit

    init_kernel = keras.models.load_model(init_models[7]).get_layer("probs").get_weights()[0]
    at_start: dict[bool, np.ndarray] = {}

    def fit_spy(model, train, val, out, cfg, size, colour):
        at_start[keep] = model.get_layer("probs").get_weights()[0].copy()
        if keep:  # one real epoch on the kept head; the fresh-head case needs only its start
            fit(model, train, val, out, cfg, size, colour)

    monkeypatch.setattr(training.pipelines, "fit", fit_spy)
    rng = np.random.default_rng(0)
    train = Dataset(rng.integers(0, 255, (14, 48, 48), dtype=np.uint8), np.arange(14) % 7, CK_LABELS)
    cfg = TrainConfig(epochs=1, batch=14, lr=1e-3, verbose=0)
    for keep in (True, False):
        model, trained = training.pipelines._load_or_train(
            "emonet", train, None, tmp_path / f"keep{keep}", cfg, False, init_models[7], keep
        )
        assert trained and model.output_shape[-1] == 7
    assert (tmp_path / "keepTrue" / "final.keras").is_file()
    np.testing.assert_array_equal(at_start[True], init_kernel)  # the init's head, not a fresh one
    assert not np.allclose(at_start[False], init_kernel)  # without --keep-head: a new softmax layer


def test_keep_head_class_count_mismatch(tmp_path: Path, init_models: dict[int, Path]) -> None:
    from training.data import Dataset
    from training.data.ck import CK_LABELS
    from training.pipelines import _load_or_train
    from training.train import TrainConfig

    train = Dataset(np.zeros((7, 48, 48), np.uint8), np.arange(7), CK_LABELS)
    with pytest.raises(ValueError, match=r"--keep-head: .* has 8 outputs, the dataset 7 classes"):
        _load_or_train("emonet", train, None, tmp_path / "run", TrainConfig(), False, init_models[8], True)
    assert not (tmp_path / "run").exists()
    # Through the CLI: a one-line error, exit code 1.
    data = make_ck(tmp_path / "ck")
    result = invoke(
        "--source", "ck", "--data", str(data), "--folds", "2", "--out", str(tmp_path / "cli"),
        "--init", str(init_models[8]), "--keep-head",
    )  # fmt: skip
    assert result.exit_code == 1 and "Error: --keep-head:" in result.output and "8 outputs" in result.output


def test_an_interrupted_run_resumes_without_its_init(tmp_path: Path, init_models: dict[int, Path]) -> None:
    """A run started from weights that are gone (a fresh clone with the run's committed checkpoint only)
    resumes from its last.keras; --init is read only to start a run."""
    import shutil

    from training.data import Dataset
    from training.data.ck import CK_LABELS
    from training.pipelines import _load_or_train
    from training.train import TrainConfig, read_progress

    init = tmp_path / "init.keras"
    shutil.copy(init_models[7], init)
    rng = np.random.default_rng(0)
    train = Dataset(rng.integers(0, 255, (14, 48, 48), dtype=np.uint8), np.arange(14) % 7, CK_LABELS)
    out = tmp_path / "run"
    _load_or_train("emonet", train, None, out, TrainConfig(epochs=1, batch=14, verbose=0), False, init, True)
    (out / "final.keras").unlink()  # stopped after epoch 1 of 2
    init.unlink()
    data = make_ck(tmp_path / "ck")
    # from the CLI: a missing --init is a usage error unless --out holds the interrupted run
    result = invoke("--source", "ck", "--data", str(data), "--out", str(tmp_path / "new"), "--init", str(init))
    assert result.exit_code == 2 and "no such file" in result.output and "--init" in result.output
    model, trained = _load_or_train(
        "emonet", train, None, out, TrainConfig(epochs=2, batch=14, verbose=0), False, init, True
    )
    assert trained and read_progress(out)[0] == 2 and (out / "final.keras").is_file()
    assert model.count_params() == keras_params(init_models[7])  # the init's network (width 4), not a new one
    with pytest.raises(ValueError, match="File not found"):  # --retrain starts over: it needs the init
        _load_or_train("emonet", train, None, out, TrainConfig(epochs=1, batch=14, verbose=0), True, init, True)


def keras_params(path: Path) -> int:
    import keras

    return int(keras.models.load_model(path, compile=False).count_params())


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_ensemble_then_distilled_student_leaves_shipped_models_alone(
    tmp_path: Path, init_models: dict[int, Path]
) -> None:
    """Teachers' soft labels (`ensemble`) -> a distilled student (`--distill`) with default options: the
    export lands in the run folder with a fitted temperature, and models/ stays byte-for-byte the same."""
    shipped = ROOT / "models"
    before = _tree_digest(shipped)
    csv = write(tmp_path / "fer2013.csv", rows(6))
    npz = tmp_path / "teachers" / "soft.npz"
    preds = tmp_path / "preds"
    teacher = str(init_models[7])
    ens = run_cli("ensemble", teacher, teacher, "--data", str(csv), "--out", str(npz), "--predictions", str(preds))
    assert ens.returncode == 0, ens.stderr[-3000:]
    report = json.loads(npz.with_suffix(".json").read_text())
    assert len(report["teachers"]) == 2 and 0 <= report["ensemble_PrivateTest"] <= 1
    # the saved predictions stand for the teacher: same figures, no model needed; --select keeps one copy
    (saved,) = preds.glob("*.npz")
    again = tmp_path / "again.npz"
    ens = run_cli("ensemble", str(saved), teacher, "--data", str(csv), "--out", str(again), "--select")
    assert ens.returncode == 0, ens.stderr[-3000:]
    second = json.loads(again.with_suffix(".json").read_text())
    assert [t["test"] for t in second["teachers"]] == [t["test"] for t in report["teachers"]]
    assert len(second["selected"]) == 1 and second["ensemble_PublicTest"] == report["ensemble_PublicTest"]
    with np.load(npz) as z:
        assert z["soft"].dtype == np.float16 and z["soft"].shape == (6, 7) and z["rows"].tolist() == list(range(6))
    out = tmp_path / "student"
    args = ["--source", "fer", "--data", str(csv), "--init", str(init_models[7]), "--keep-head", "--epochs", "1"]
    student = run_cli(*args, "--distill", str(npz), "--out", str(out), "--mixed", "off")
    assert student.returncode == 0, student.stderr[-3000:]
    assert "argmax agrees with the label" in student.stderr
    side = json.loads((out / "models" / "fer2013_emonet.json").read_text())
    assert side["metrics"]["distilled_from"] == str(npz)
    assert 0.05 <= side["calibration"]["temperature"] <= 20 and "ece_test_after" in side["calibration"]
    assert _tree_digest(shipped) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "fer", "--ship", "--no-export"], "--ship exports into models/"),
        (["--source", "fer", "--ferplus-blend", "2"], "--ferplus-blend must be in"),
        (["--source", "ck", "--distill", "pyproject.toml"], "--distill takes FER2013 teacher soft labels"),
        (["--source", "fer", "--mix-alpha", "0"], "--mix-alpha must be in"),
    ],
)
def test_recipe_option_errors(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.output
