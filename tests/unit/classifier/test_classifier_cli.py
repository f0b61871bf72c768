from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from classifier.__main__ import main


def test_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "--image" in result.output and "--instance" in result.output


def test_image_mode_prints_one_json_line_per_image(tiny, tmp_path):
    paths = []
    for i, shape in enumerate([(100, 80, 3), (48, 48), (30, 60, 4)]):
        p = tmp_path / f"face{i}.png"
        cv2.imwrite(str(p), np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8))
        paths.append(str(p))
    args = ["--model", str(tiny["int8"])] + [a for p in paths for a in ("--image", p)]
    result = CliRunner().invoke(main, args, env={"BUS_CONFIG": ""})
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines()]
    assert [x["image"] for x in lines] == paths
    for x in lines:
        assert set(x["probs"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
        assert x["label"] == max(x["probs"], key=x["probs"].get)
        assert sum(x["probs"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--model", "/nonexistent/m.tflite"], "classifier: model file not found: /nonexistent/m.tflite"),
        (["--instance", "5"], "--instance 5"),
        (["--config", "/nonexistent/bus.toml"], "config file not found"),
    ],
)
def test_startup_errors_exit_2_with_one_line(args, error, tmp_path):
    result = CliRunner().invoke(main, args, env={"BUS_CONFIG": ""})
    assert result.exit_code == 2
    assert error in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unreadable_image_exits_2(tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = CliRunner().invoke(main, ["--model", str(tiny["int8"]), "--image", str(bad)], env={"BUS_CONFIG": ""})
    assert result.exit_code == 2
    assert "cannot read image" in result.output
