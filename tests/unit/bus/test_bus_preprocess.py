"""Face crops: always size x size, whatever the frame layout and wherever the box lies."""

from __future__ import annotations

import numpy as np
import pytest

from bus.preprocess import crop_face, square_box, to_model_pixels, to_uint8_bgr, zoom


@pytest.mark.parametrize(
    ("frame", "shape"),
    [
        (np.zeros((10, 10), np.uint8), (10, 10, 3)),
        (np.zeros((10, 10, 1), np.uint8), (10, 10, 3)),
        (np.zeros((10, 10, 4), np.uint8), (10, 10, 3)),
        (np.full((10, 10, 3), 65535, np.uint16), (10, 10, 3)),
    ],
)
def test_to_uint8_bgr(frame: np.ndarray, shape: tuple[int, ...]) -> None:
    out = to_uint8_bgr(frame)
    assert out.shape == shape and out.dtype == np.uint8


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4), np.float32),
        np.zeros((2, 2, 2, 2), np.uint8),
    ],
)
def test_to_uint8_bgr_rejects(frame: np.ndarray) -> None:
    with pytest.raises(ValueError):
        to_uint8_bgr(frame)


@pytest.mark.parametrize(
    "box",
    [
        (10, 10, 20, 20),
        (-15, -15, 30, 30),
        (90, 90, 40, 40),
        (-500, -500, 10, 10),
        (0, 0, 100, 100),
        (50, 50, 0.2, 0.2),
    ],
)
@pytest.mark.parametrize(("colour", "ch"), [("grey", 1), ("rgb", 3)])
def test_crop_always_model_sized(box: tuple[float, float, float, float], colour: str, ch: int) -> None:
    frame = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    crop = crop_face(frame, box, 48, colour, margin=0.2)  # type: ignore[arg-type]
    assert crop.shape == (48, 48, ch) and crop.dtype == np.uint8


def test_square_box_is_centred_and_enlarged() -> None:
    x0, y0, x1, y1 = square_box((10, 20, 40, 20), margin=0.5)
    assert x1 - x0 == y1 - y0 == 60 and (x0 + x1) / 2 == 30 and (y0 + y1) / 2 == 30


def test_crop_matches_plain_resize_inside_frame() -> None:
    frame = np.random.default_rng(2).integers(0, 255, (96, 96), dtype=np.uint8)
    assert np.array_equal(crop_face(frame, (0, 0, 96, 96), 48, "grey"), to_model_pixels(frame, 48, "grey"))


@pytest.mark.parametrize("box", [(-1e5, 20, 30, 30), (1e5, 1e5, 30, 30), (40, -99_000, 10, 10), (60, 1e5, 5, 5)])
def test_a_crop_far_outside_the_frame_is_the_edge_crop_without_the_padding(box: tuple[float, ...]) -> None:
    """Found by bench/fuzz.py: a box 1e5 pixels away made copyMakeBorder allocate 41 GB. Edge
    replication gives the same crop wherever the box is beyond the edge, so it is moved there."""
    frame = np.random.default_rng(3).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    x, y, w, h = box
    near = (min(max(x, -w - 1), 101), min(max(y, -h - 1), 101), w, h)  # the same box just past the edge
    assert np.array_equal(crop_face(frame, box, 48, "grey"), crop_face(frame, near, 48, "grey"))  # type: ignore[arg-type]


def test_a_crop_far_larger_than_the_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="far larger"):
        crop_face(np.zeros((100, 100, 3), np.uint8), (0, 0, 5e3, 5e3), 48, "grey")


def _square(ch: int = 1) -> np.ndarray:
    """Two 48x48 crops, black with a 20x20 white square in the middle."""
    x = np.zeros((2, 48, 48, ch), np.uint8)
    x[:, 14:34, 14:34] = 255
    return x


@pytest.mark.parametrize("ch", [1, 3])
def test_zoom_out_shrinks_and_zoom_in_enlarges_the_face_about_the_centre(ch: int) -> None:
    x = _square(ch)
    assert zoom(x, 1.0) is x and zoom(x[:0], 1.2).shape == (0, 48, 48, ch)
    side = {f: float((zoom(x, f)[0, :, :, 0] > 127).sum()) ** 0.5 for f in (0.8, 0.9, 1.1, 1.25)}
    for f, s in side.items():
        out = zoom(x, f)
        assert out.shape == x.shape and out.dtype == np.uint8
        assert s == pytest.approx(20 / f, abs=1.5)  # the square's side scales by 1 / factor
        centre = np.argwhere(out[0, :, :, 0] > 127).mean(axis=0)
        np.testing.assert_allclose(centre, [23.5, 23.5], atol=0.6)  # about the crop's centre
        np.testing.assert_array_equal(out[0], out[1])  # each crop alone
    # zooming out replicates the crop's edge: a face at the border keeps its border pixels
    edge = np.zeros((1, 48, 48, 1), np.uint8)
    edge[:, :, :4] = 200
    assert (zoom(edge, 1.2)[0, :, 0, 0] == 200).all()


def test_a_zoom_too_small_to_move_a_pixel_is_the_crop_itself() -> None:
    x = _square()
    np.testing.assert_array_equal(zoom(x, 1.01), x)
    np.testing.assert_array_equal(zoom(x, 0.99), x)
