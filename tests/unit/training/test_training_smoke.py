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

ROOT = Path(__file__).resolve().parents[3]
pytest.importorskip("tensorflow")


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
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
