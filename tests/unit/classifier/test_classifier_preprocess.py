from __future__ import annotations

import numpy as np
import pytest

from classifier.preprocess import InputQuantizer, dequantize, normalise, quantize_table

PIXELS = np.arange(256, dtype=np.uint8)
EXPORTED_SCALE = 0.003921555820852518  # what TFLite's converter writes for 1/255


@pytest.mark.parametrize(
    ("dtype", "scale", "zero", "expected", "fast"),
    [
        (np.int8, 1 / 255, -128, PIXELS.astype(np.int16) - 128, True),
        (np.int8, EXPORTED_SCALE, -128, PIXELS.astype(np.int16) - 128, True),
        (np.uint8, 1 / 255, 0, PIXELS.astype(np.int16), False),
        (np.int8, 2 / 255, -128, np.floor(PIXELS / 2 + 0.5) - 128, False),  # half away from zero
        (np.int8, 1 / 510, 0, np.minimum(PIXELS.astype(np.int16) * 2, 127), False),  # clipped high
        (np.int8, 1 / 255, -200, np.maximum(PIXELS.astype(np.int16) - 200, -128), False),  # clipped low
    ],
)
def test_quantize_table(dtype, scale, zero, expected, fast):
    q = InputQuantizer(dtype, scale, zero)
    assert q.fast is fast
    out = q(PIXELS.reshape(1, 16, 16, 1))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.reshape(-1).astype(np.int16), np.asarray(expected, np.int16))
    np.testing.assert_array_equal(quantize_table(scale, zero, dtype).astype(np.int16), np.asarray(expected, np.int16))


def test_fast_path_equals_the_rule():
    rule = np.clip(np.round((PIXELS / 255.0) / EXPORTED_SCALE - 128), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(InputQuantizer(np.int8, EXPORTED_SCALE, -128)(PIXELS), rule)


def test_float_input_is_x_over_255():
    out = InputQuantizer(np.float32)(PIXELS)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, PIXELS / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "scale", "pixels", "error"),
    [
        (np.int16, 1 / 255, PIXELS, "unsupported model input type"),
        (np.int8, 0.0, PIXELS, "scale must be > 0"),
        (np.int8, 1 / 255, PIXELS.astype(np.float32), "must be uint8"),
    ],
)
def test_quantizer_errors(dtype, scale, pixels, error):
    with pytest.raises(ValueError, match=error):
        InputQuantizer(dtype, scale, -128)(pixels)


@pytest.mark.parametrize(
    ("raw", "scale", "zero", "expected"),
    [
        (np.array([[-128, 127]], np.int8), 1 / 256, -128, [[0.0, 255 / 256]]),
        (np.array([[0, 255]], np.uint8), 0.5, 0, [[0.0, 127.5]]),
        (np.array([[0.25, 0.75]], np.float32), 0.0, 0, [[0.25, 0.75]]),
    ],
)
def test_dequantize(raw, scale, zero, expected):
    np.testing.assert_allclose(dequantize(raw, scale, zero), expected)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([[1.0, 3.0]], [[0.25, 0.75]]),
        ([[0.0, 0.0]], [[0.5, 0.5]]),
        ([[-1.0, 2.0]], [[0.0, 1.0]]),
        (np.zeros((0, 3)), np.zeros((0, 3))),
    ],
)
def test_normalise(scores, expected):
    np.testing.assert_allclose(normalise(np.asarray(scores, np.float32)), expected)
