"""Classifier-specific input/output conversion; the face crop itself is ``bus.preprocess``.

Consumes uint8 model pixels (N x S x S x C, made by ``bus.preprocess.crop_face``) and produces the
model's input tensor; consumes the model's output tensor and produces probabilities.

Input quantisation for an integer input with scale ``s`` and zero point ``z`` follows the float rule
``x / 255`` (``bus.preprocess.SCALING``): ``q = clip(round((x / 255) / s) + z)``, rounding half away
from zero before adding the zero point, as TFLite's quantize does. Only 256 inputs exist, so the rule is tabulated once; when the table is
exactly ``x - 128`` (int8, s ~= 1/255, z = -128: what the exporter produces) a bit flip does the job.
"""

from __future__ import annotations

import numpy as np

from bus.preprocess import scale


def quantize_table(scale_: float, zero_point: int, dtype: type[np.integer] | np.dtype) -> np.ndarray:
    """The 256-entry table uint8 pixel -> quantised input value in ``dtype``."""
    if scale_ <= 0:
        raise ValueError(f"input quantisation scale must be > 0, got {scale_}")
    info = np.iinfo(dtype)
    v = (np.arange(256, dtype=np.float64) / 255.0) / scale_
    q = np.floor(v + 0.5) + zero_point  # v >= 0: half away from zero, then the zero point (as TFLite)
    return np.clip(q, info.min, info.max).astype(dtype)


class InputQuantizer:
    """uint8 pixels -> the model's input tensor (float32 ``x/255``, or int8/uint8 quantised)."""

    def __init__(self, dtype: type[np.generic] | np.dtype, scale_: float = 0.0, zero_point: int = 0):
        self.dtype = np.dtype(dtype)
        self.table: np.ndarray | None = None
        self.fast = False
        if self.dtype == np.float32:
            return
        if self.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
            raise ValueError(f"unsupported model input type {self.dtype} (expected float32, int8 or uint8)")
        self.table = quantize_table(scale_, zero_point, self.dtype)
        self.fast = self.dtype == np.int8 and bool(
            np.array_equal(self.table.astype(np.int16), np.arange(256, dtype=np.int16) - 128)
        )

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.uint8:
            raise ValueError(f"model pixels must be uint8, got {pixels.dtype}")
        if self.table is None:
            return scale(pixels)
        if self.fast:
            return np.bitwise_xor(pixels, np.uint8(0x80)).view(np.int8)  # x - 128, exactly
        return self.table[pixels]


def dequantize(out: np.ndarray, scale_: float, zero_point: int) -> np.ndarray:
    """The model's output tensor -> float32 (integer outputs use their scale and zero point)."""
    if np.issubdtype(out.dtype, np.integer):
        return ((out.astype(np.float32) - np.float32(zero_point)) * np.float32(scale_)).astype(np.float32)
    return out.astype(np.float32)


def normalise(probs: np.ndarray) -> np.ndarray:
    """Rows of non-negative scores -> rows summing to 1 (a row of zeros becomes uniform)."""
    p = np.clip(probs.astype(np.float32), 0.0, None)
    total = p.sum(axis=-1, keepdims=True)
    uniform = np.full_like(p, 1.0 / max(1, p.shape[-1]))
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform).astype(np.float32)
