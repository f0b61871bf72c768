"""The two-view fine-tune's second view is the runtime's (models/README.md, "a fine-tune on the two views")."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from bus.preprocess import zoom
from training.two_view import second_view


def test_second_view_is_the_mirror_zoomed_out_as_the_classifier_makes_it() -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (4, 48, 48, 1), dtype=np.uint8)
    crops[1] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None]  # a ramp: the flip must show
    runtime = zoom(crops[:, :, ::-1].copy(), 1.05).astype(np.float32) / 255.0
    got = second_view(crops.astype(np.float32) / 255.0).numpy()
    assert got.shape == crops.shape
    # TensorFlow's area resize against OpenCV's: the same view up to rounding
    assert np.abs(got - runtime).max() < 1 / 255
    assert np.abs(got[1] - crops[1].astype(np.float32) / 255.0).mean() > 0.2  # mirrored, not the crop itself
