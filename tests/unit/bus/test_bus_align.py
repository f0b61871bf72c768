"""Face alignment in bus.preprocess: a tilted face comes out with its eyes level."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bus.preprocess import MAX_ALIGN_DEG, MIN_ALIGN_DEG, crop_face, eye_angle


def tilted_face(angle_deg: float, size: int = 400) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A light grey 'face' with two dark eye blobs whose line is tilted by ``angle_deg`` (image-right
    eye lower for a positive angle); returns the frame and the BlazeFace-order keypoints (right, left)."""
    img = np.full((size, size, 3), 200, np.uint8)
    c = np.array([size / 2, size / 2])
    half = 60.0
    a = np.radians(angle_deg)
    d = np.array([np.cos(a), np.sin(a)]) * half
    right, left = c - d - [0, 30], c + d - [0, 30]
    for x, y in (right, left):
        cv2.circle(img, (round(x), round(y)), 14, (20, 20, 20), -1, lineType=cv2.LINE_AA)
    return img, [(float(right[0]), float(right[1])), (float(left[0]), float(left[1]))]


def blob_rows(crop: np.ndarray) -> tuple[float, float]:
    """Rows of the centroids of the dark pixels in the left and right halves of a grey crop."""
    g = crop[:, :, 0].astype(float)
    dark = g < 110
    _h, w = dark.shape
    rows = []
    for half in (dark[:, : w // 2], dark[:, w // 2 :]):
        ys, _ = np.nonzero(half)
        assert len(ys), "eye blob lost in the crop"
        rows.append(float(ys.mean()))
    return rows[0], rows[1]


@pytest.mark.parametrize("angle", [-30.0, -12.0, 10.0, 25.0])
def test_eye_angle_measures_the_tilt(angle: float) -> None:
    _, kp = tilted_face(angle)
    assert eye_angle(kp) == pytest.approx(angle, abs=0.5)


@pytest.mark.parametrize("angle", [0.0, 3.0, -5.0, MIN_ALIGN_DEG - 0.5])
def test_upright_enough_faces_are_not_rotated(angle: float) -> None:
    _, kp = tilted_face(angle)
    assert eye_angle(kp) == 0.0


@pytest.mark.parametrize("angle", [-30.0, -12.0, 10.0, 25.0])
def test_a_rotated_face_comes_out_level(angle: float) -> None:
    img, kp = tilted_face(angle)
    box = (100.0, 100.0, 200.0, 200.0)
    plain = crop_face(img, box, 96, "grey", 0.2)
    aligned = crop_face(img, box, 96, "grey", 0.2, eye_angle(kp))
    before = abs(np.subtract(*blob_rows(plain)))
    after = abs(np.subtract(*blob_rows(aligned)))
    assert before > 5  # the eyes of the plain crop are visibly off level
    assert after < 1.0  # and level once aligned
    assert aligned.shape == plain.shape == (96, 96, 1)


def test_no_rotation_is_the_plain_crop() -> None:
    img, _ = tilted_face(0.0)
    box = (100.0, 100.0, 200.0, 200.0)
    np.testing.assert_array_equal(crop_face(img, box, 48, "grey", 0.2, 0.0), crop_face(img, box, 48, "grey", 0.2))


@pytest.mark.parametrize(
    "kp",
    [
        [],
        [(1.0, 1.0)],
        [(5.0, 5.0), (5.0, 5.0)],
        [(0.0, 0.0), (float("nan"), 3.0)],
        [(0.0, 0.0), (10.0, 10.0 * np.tan(np.radians(MAX_ALIGN_DEG + 5)))],  # steeper than trusted
    ],
)
def test_untrusted_keypoints_mean_no_rotation(kp: list[tuple[float, float]]) -> None:
    assert eye_angle(kp) == 0.0


def test_box_outside_the_frame_still_gives_a_full_crop() -> None:
    img, kp = tilted_face(20.0, size=120)
    crop = crop_face(img, (-50.0, -40.0, 150.0, 150.0), 48, "grey", 0.2, eye_angle(kp))
    assert crop.shape == (48, 48, 1)
