"""The classifier applies the sidecar's temperature and flags uncertain faces (issue 10)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bus.calibration import apply_calibration
from bus.codec import Face, Frame, Message, decode, encode
from bus.sidecar import SidecarError, load_spec
from classifier.model import EmotionModel
from classifier.worker import step

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "models" / "fer2013_emonet.tflite"


class Fixed:
    """A fake model whose faces get the given probability rows."""

    labels = ("angry", "happy", "neutral")
    size, channels = 8, 1

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = np.array(rows, np.float32)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        return self.rows[: len(crops)]


def frame(n: int) -> Message:
    return Frame(
        src="s",
        seq=1,
        ts=1.0,
        faces=[Face((0.0, 0.0, 4.0, 4.0), 0.9) for _ in range(n)],
        crops=np.zeros((n, 8, 8, 1), np.uint8),
        pixels=np.zeros((4, 4, 3), np.uint8),
    )


@pytest.mark.parametrize(
    ("rows", "below", "uncertain"),
    [
        ([[0.26, 0.25, 0.49]], 0.5, [True]),  # label kept (neutral), flagged
        ([[0.26, 0.25, 0.49]], 0.45, [False]),
        ([[0.1, 0.8, 0.1], [0.4, 0.3, 0.3]], 0.45, [False, True]),
        ([[0.34, 0.33, 0.33]], 0.0, [False]),  # 0 = never uncertain
    ],
)
def test_uncertain_flag_keeps_the_label(rows: list[list[float]], below: float, uncertain: list[bool]) -> None:
    out = step(frame(len(rows)), Fixed(rows), below)
    assert [f.uncertain for f in out.faces] == uncertain
    assert [f.label for f in out.faces] == [Fixed.labels[int(np.argmax(r))] for r in rows]
    assert out.uncertain_below == below
    back = decode(encode(out))  # and it crosses the wire
    assert [f.uncertain for f in back.faces] == uncertain and back.uncertain_below == below


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    if not SHIPPED.is_file():
        pytest.skip("the shipped model is not in this checkout")
    dst = tmp_path / "m.tflite"
    shutil.copy(SHIPPED, dst)
    shutil.copy(SHIPPED.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _set_temperature(path: Path, t: float) -> None:
    side = path.with_suffix(".json")
    d = json.loads(side.read_text())
    d["calibration"] = {**d.get("calibration", {}), "temperature": t}
    side.write_text(json.dumps(d))


def test_runtime_applies_the_sidecar_temperature_and_class_bias(shipped_copy: Path) -> None:
    crops = np.random.default_rng(0).integers(0, 255, (6, 48, 48, 1), dtype=np.uint8)
    bias = EmotionModel(shipped_copy).class_bias  # the shipped model's, if it has one
    plain = EmotionModel(shipped_copy)
    plain.temperature, plain.class_bias = 1.0, None
    raw = plain.classify(crops)  # the network's own probabilities
    _set_temperature(shipped_copy, 2.5)
    model = EmotionModel(shipped_copy)
    assert model.spec.temperature == 2.5
    got = model.classify(crops)
    np.testing.assert_allclose(got, apply_calibration(raw, 2.5, bias), atol=1e-6)
    softened = apply_calibration(raw, 1.0, bias)
    assert (got.max(1) < softened.max(1)).all() and (got.argmax(1) == softened.argmax(1)).all()


@pytest.mark.parametrize("t", [0.0, -1.0, 100.0])
def test_absurd_temperature_is_a_sidecar_error(shipped_copy: Path, t: float) -> None:
    _set_temperature(shipped_copy, t)
    with pytest.raises(SidecarError, match=r"calibration\.temperature"):
        load_spec(shipped_copy)
