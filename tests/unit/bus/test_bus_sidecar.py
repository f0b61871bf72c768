from __future__ import annotations

import json
from pathlib import Path

import pytest

from bus.sidecar import ModelSpec, SidecarError, load_spec

ROOT = Path(__file__).resolve().parents[3]


def test_roundtrip(tmp_path: Path) -> None:
    spec = ModelSpec("m", ("a", "b"), 48, "grey", crop_margin=0.1, dataset="x", metrics={"acc": 1})
    (tmp_path / "m.json").write_text(json.dumps(spec.to_json()))
    assert load_spec(tmp_path / "m.tflite") == spec
    assert "class_bias" not in spec.to_json()["calibration"]  # none: not written
    biased = ModelSpec("m", ("a", "b"), 48, "grey", temperature=0.8, class_bias=(0.5, -0.5))
    (tmp_path / "m.json").write_text(json.dumps(biased.to_json()))
    assert load_spec(tmp_path / "m.tflite") == biased
    assert "mirror_zoom" not in biased.to_json()["input"]  # 1: the plain mirror, not written
    zoomed = ModelSpec("m", ("a", "b"), 48, "grey", mirror=True, mirror_zoom=1.05)
    (tmp_path / "m.json").write_text(json.dumps(zoomed.to_json()))
    assert load_spec(tmp_path / "m.tflite") == zoomed


_ZOOMED = '{"labels": ["a"], "input": {"size": 48, "colour": "grey", "mirror": true, "mirror_zoom": %s}}'
_BIASED = '{"labels": ["a", "b"], "input": {"size": 48, "colour": "grey"}, "calibration": {"class_bias": %s}}'


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "model sidecar not found: .*m.json$"),
        ("{", "not valid JSON"),
        ('{"labels": ["a"]}', "missing or invalid field"),
        ('{"labels": [], "input": {"size": 48, "colour": "grey"}}', "labels must be"),
        ('{"labels": ["a"], "input": {"size": 48, "colour": "hsv"}}', "colour"),
        ('{"labels": ["a"], "input": {"size": 48, "colour": "grey", "scaling": "x/127.5-1"}}', "scaling"),
        ('{"labels": ["a"], "input": {"size": 4096, "colour": "grey"}}', "size"),
        (_BIASED % "[0.1]", r"class_bias must be a list of 2 numbers, one per label"),
        (_BIASED % '{"a": 1}', r"class_bias must be a list of 2 numbers"),
        (_BIASED % '[0.1, "x"]', r"class_bias values must be numbers in \[-10.0, 10.0\]"),
        (_BIASED % "[0.1, true]", r"class_bias values must be numbers"),
        (_BIASED % "[0.1, 1e9]", r"class_bias values must be numbers"),
        (_BIASED % "[0.1, NaN]", r"class_bias values must be numbers"),
        (_ZOOMED % '"1.1"', r"input.mirror_zoom must be a number in \[0.5, 2.0\], got '1.1'"),
        (_ZOOMED % "3", r"input.mirror_zoom must be a number in \[0.5, 2.0\], got 3"),
        (_ZOOMED % "NaN", r"input.mirror_zoom must be a number"),
        (_ZOOMED % "true", r"input.mirror_zoom must be a number"),
    ],
)
def test_bad_sidecars(tmp_path: Path, content: str | None, match: str) -> None:
    (tmp_path / "m.tflite").write_bytes(b"model")
    if content is not None:
        (tmp_path / "m.json").write_text(content)
    with pytest.raises(SidecarError, match=match):
        load_spec(tmp_path / "m.tflite")


def test_a_missing_model_is_not_reported_as_a_missing_sidecar(tmp_path: Path) -> None:
    """Issue 11 case 17: with neither file there, it said 'model sidecar not found'."""
    with pytest.raises(SidecarError, match=f"^model file not found: {tmp_path / 'm.tflite'}$"):
        load_spec(tmp_path / "m.tflite")
    with pytest.raises(SidecarError, match=f"^model sidecar not found: {tmp_path / 'm.json'}$"):
        load_spec(tmp_path / "m.json")


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.json")))
def test_shipped_sidecars_are_valid(path: Path) -> None:
    if "." in path.stem:  # <name>.cv.json, <name>.report.json: results beside a model, not its sidecar
        pytest.skip(f"{path.name} is not a sidecar")
    spec = load_spec(path)
    assert (ROOT / "models" / f"{path.stem}.tflite").is_file() and spec.labels
