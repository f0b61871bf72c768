from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from bus.preprocess import crop_face
from classifier.__main__ import main

ROOT = Path(__file__).resolve().parents[3]


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
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["image"] for x in lines] == paths
    for x, shape in zip(lines, [(100, 80), (48, 48), (30, 60)], strict=True):
        assert x["box"] == [0, 0, shape[1], shape[0]] and x["score"] == 0.0 and x["kp"] == []  # the whole image
        assert isinstance(x["uncertain"], bool)
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


def _run(*args: str) -> tuple[list[dict[str, object]], str]:
    result = CliRunner().invoke(main, ["--config", str(ROOT / "bus.toml"), *args])
    assert result.exit_code == 0, result.output
    return [json.loads(x) for x in result.stdout.splitlines()], result.stderr


def test_a_photo_is_not_taken_for_a_face_crop(shared_data: Path) -> None:
    photo = str(shared_data / "media/images/faces/two_people.jpg")
    lines, err = _run("--image", photo)
    assert "two_people.jpg is not a face crop: 2 face(s) found; classifying each detected face" in err
    assert [(x["image"], x["face"]) for x in lines] == [(photo, 0), (photo, 1)]
    assert all(len(x["box"]) == 4 and x["label"] == max(x["probs"], key=x["probs"].get) for x in lines)  # type: ignore[arg-type,call-overload]
    assert all(isinstance(x["uncertain"], bool) for x in lines)
    whole, err = _run("--image", photo, "--no-detect")
    h, w = cv2.imread(photo).shape[:2]
    assert err == "" and len(whole) == 1 and "face" not in whole[0]
    assert {k: whole[0][k] for k in ("box", "score", "kp")} == {"box": [0, 0, w, h], "score": 0.0, "kp": []}
    assert set(whole[0]) == {"image", "box", "score", "kp", "label", "probs", "uncertain"}  # bus.codec.Face.to_json


def test_a_face_crop_is_classified_whole(shared_data: Path, tmp_path: Path) -> None:
    from detector.backend import open_backend

    img = cv2.imread(str(shared_data / "media/images/faces/obama.jpg"))
    with open_backend("litert", "full_range", 0.6, 4) as det:
        (face,) = det.detect(img)
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), cv2.cvtColor(crop_face(img, face.box, 96, "rgb", 0.2), cv2.COLOR_RGB2BGR))
    lines, err = _run("--image", str(crop))
    h, w = cv2.imread(str(crop)).shape[:2]
    assert err == "" and len(lines) == 1 and "face" not in lines[0] and lines[0]["box"] == [0, 0, w, h]


def test_no_face_found_is_said(shared_data: Path) -> None:
    brick = str(shared_data / "media/images/no_faces/brick.png")
    lines, err = _run("--image", brick)
    assert len(lines) == 1 and "finds no face; classified as one face crop" in err
