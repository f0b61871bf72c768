"""The shipped model (once training has exported it) loads, agrees with its sidecar and batches."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bus.preprocess import to_model_pixels
from classifier.model import EmotionModel

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "fer2013_emonet.tflite"


@pytest.fixture(scope="module")
def shipped() -> EmotionModel:
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} not exported yet")
    return EmotionModel(SHIPPED)


def test_shipped_model_classifies_a_batch_of_real_faces(shipped, shared_data):
    paths = sorted((shared_data / "media" / "images" / "faces").iterdir())
    images = [cv2.imread(str(p)) for p in paths]
    crops = np.stack([to_model_pixels(img, shipped.size, shipped.spec.colour) for img in images if img is not None])
    probs = shipped.classify(crops)
    assert probs.shape == (len(crops), len(shipped.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(shipped.classify(crops[:1]), probs[:1], atol=1e-6)  # batch == alone
