from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier.model import EmotionModel, ModelError


def crops(n: int, seed: int = 0, size: int = 48, ch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, ch), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["int8", "float"])
@pytest.mark.parametrize("n", [0, 1, 8])
def test_batch_gives_one_distribution_per_face(tiny, kind, n):
    model = EmotionModel(tiny[kind])
    probs = model.classify(crops(n))
    assert probs.shape == (n, 7)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_batch_equals_faces_one_by_one_and_resizes_back(tiny):
    model = EmotionModel(tiny["int8"])
    batch = crops(8, seed=1)
    together = model.classify(batch)
    alone = np.concatenate([model.classify(batch[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(model.classify(batch), together, atol=1e-6)  # 8 -> 1 -> 8 again


def test_int8_model_uses_the_fast_path_and_reports_itself(tiny):
    model = EmotionModel(tiny["int8"])
    assert model.quantize.fast
    assert model.info["input"] == "int8"
    assert model.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert (model.size, model.channels) == (48, 1)


def test_int8_agrees_with_float_model(tiny):
    batch = crops(4, seed=2)
    q = EmotionModel(tiny["int8"]).classify(batch)
    f = EmotionModel(tiny["float"]).classify(batch)
    np.testing.assert_allclose(q, f, atol=0.02)  # quantisation error only


def test_wrong_crop_shape_is_a_value_error(tiny):
    with pytest.raises(ValueError, match="do not fit"):
        EmotionModel(tiny["int8"]).classify(crops(1, size=64))


def _copy(src: Path, dst_dir: Path, sidecar: bool = True) -> Path:
    dst = dst_dir / "m.tflite"
    shutil.copy(src, dst)
    if sidecar:
        shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def _edit_sidecar(path: Path, **inp: object) -> None:
    side = path.with_suffix(".json")
    d = json.loads(side.read_text())
    labels = inp.pop("labels", None)
    if labels is not None:
        d["labels"] = labels
    d["input"].update(inp)
    side.write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("break_it", "error"),
    [
        (lambda p: _edit_sidecar(p, size=64), r"input shape \[1, 48, 48, 1\] does not match the sidecar"),
        (lambda p: _edit_sidecar(p, colour="rgb"), "does not match the sidecar"),
        (lambda p: _edit_sidecar(p, labels=["a", "b", "c"]), "one score per sidecar label"),
        (lambda p: p.with_suffix(".json").unlink(), "sidecar not found"),
        (lambda p: p.with_suffix(".json").write_text("{not json"), "not valid JSON"),
        (lambda p: p.write_bytes(b"not a flatbuffer" * 10), "not a loadable TFLite model"),
        (lambda p: p.write_bytes(p.read_bytes()[:500]), "not a loadable TFLite model"),
        (lambda p: p.unlink(), "model file not found"),
    ],
    ids=["size", "colour", "labels", "no-sidecar", "bad-sidecar", "garbage", "truncated", "no-model"],
)
def test_load_errors_are_model_errors(tiny, tmp_path, break_it, error):
    path = _copy(tiny["int8"], tmp_path)
    break_it(path)
    with pytest.raises(ModelError, match=error):
        EmotionModel(path)


def test_a_model_that_refuses_batches_is_run_face_by_face(tiny, caplog):
    model = EmotionModel(tiny["int8"])
    batch = crops(3, seed=3)
    expected = model.classify(batch)
    model = EmotionModel(tiny["int8"])
    resize = model._it.resize_tensor_input

    def fixed_batch(index, shape, *args, **kwargs):
        if shape[0] != 1:
            raise RuntimeError("fixed batch")
        return resize(index, shape, *args, **kwargs)

    model._it.resize_tensor_input = fixed_batch
    with caplog.at_level("WARNING", logger="classifier.model"):
        np.testing.assert_allclose(model.classify(batch), expected, atol=1e-6)
        np.testing.assert_allclose(model.classify(batch), expected, atol=1e-6)
    assert not model.batching
    assert caplog.text.count("cannot take a batch of 3") == 1


def test_mirror_is_the_mean_over_each_crop_and_its_mirror_before_the_temperature(tiny, tmp_path):
    path = _copy(tiny["int8"], tmp_path)
    ramp = np.linspace(0, 255, 48)[None, None, :, None] * np.array([1.0, 0.6, 0.3])[:, None, None, None]
    batch = np.broadcast_to(ramp, (3, 48, 48, 1)).astype(np.uint8)  # dark left, bright right: not symmetric
    plain = EmotionModel(path)
    raw, raw_mirrored = plain.classify(batch), plain.classify(batch[:, :, ::-1])
    assert not np.allclose(raw, raw_mirrored, atol=1e-3)  # the tiny model is not symmetric

    _edit_sidecar(path, mirror=True)
    model = EmotionModel(path)
    assert model.mirror and model.info["mirror"]
    np.testing.assert_allclose(model.classify(batch), (raw + raw_mirrored) / 2, atol=1e-6)
    assert model.classify(batch[:0]).shape == (0, 7)
    # One face alone gives what it gives in the batch (a batch of 2 for one face, 6 for three).
    np.testing.assert_allclose(model.classify(batch[1:2]), model.classify(batch)[1:2], atol=1e-6)
    # The override, as training's calibration uses it: off gives the plain model.
    np.testing.assert_allclose(EmotionModel(path, mirror=False).classify(batch), raw, atol=1e-6)

    from bus.calibration import apply_calibration

    d = json.loads(path.with_suffix(".json").read_text())
    d["calibration"] = {"temperature": 0.5}
    path.with_suffix(".json").write_text(json.dumps(d))
    np.testing.assert_allclose(
        EmotionModel(path).classify(batch), apply_calibration((raw + raw_mirrored) / 2, 0.5), atol=1e-5
    )


def test_mirror_zoom_zooms_the_mirror_view_only(tiny, tmp_path):
    from bus.preprocess import zoom

    path = _copy(tiny["int8"], tmp_path)
    batch = crops(3, seed=2)
    plain = EmotionModel(path)
    raw, raw_zoomed_mirror = plain.classify(batch), plain.classify(zoom(batch, 1.1)[:, :, ::-1])
    _edit_sidecar(path, mirror=True, mirror_zoom=1.1)
    model = EmotionModel(path)
    assert model.mirror_zoom == 1.1 and model.info["mirror_zoom"] == 1.1
    np.testing.assert_allclose(model.classify(batch), (raw + raw_zoomed_mirror) / 2, atol=1e-6)
    # the override, as calibration's grid uses it; without the mirror the zoom does nothing
    plain_mirror = (raw + plain.classify(batch[:, :, ::-1])) / 2
    np.testing.assert_allclose(EmotionModel(path, mirror_zoom=1.0).classify(batch), plain_mirror, atol=1e-6)
    np.testing.assert_allclose(EmotionModel(path, mirror=False).classify(batch), raw, atol=1e-6)


def test_class_bias_from_the_sidecar_is_applied_before_the_temperature(tiny, tmp_path):
    from bus.calibration import apply_calibration

    path = _copy(tiny["int8"], tmp_path)
    batch = crops(4, seed=5)
    raw = EmotionModel(path).classify(batch)
    bias = [0.0, 2.0, 0.0, 0.0, 0.0, -2.0, 0.0]
    d = json.loads(path.with_suffix(".json").read_text())
    d["calibration"] = {"temperature": 0.7, "class_bias": bias}
    path.with_suffix(".json").write_text(json.dumps(d))
    model = EmotionModel(path)
    np.testing.assert_allclose(model.classify(batch), apply_calibration(raw, 0.7, np.array(bias)), atol=1e-5)
    assert model.info["class_bias"] and not EmotionModel(tiny["int8"]).info["class_bias"]


def test_mirror_must_be_a_boolean(tiny, tmp_path):
    path = _copy(tiny["int8"], tmp_path)
    _edit_sidecar(path, mirror="yes")
    with pytest.raises(ModelError, match=r"input\.mirror must be true or false, got 'yes'"):
        EmotionModel(path)
