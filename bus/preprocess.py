"""Face preprocessing: the one place where a face becomes model input.

Consumes a frame (H x W, H x W x 1, x 3 BGR or x 4 BGRA; uint8 or uint16) and a face box in pixels;
produces a square ``size x size`` uint8 crop in the model's colour mode ("grey" -> H x W x 1,
"rgb" -> H x W x 3). The runtime detector and the training loaders both call these functions, so the
pixels a model is trained on and the pixels it sees in production are made the same way. Also a
frame's grey scene-cut thumbnail (:func:`thumbnail`), made by the display or, for a display that gets
no pixels, by the detector.

Pixel scaling to the model's float input is ``x / 255`` (``SCALING``); an int8 model whose input
quantisation is scale 1/255, zero point -128 therefore takes ``uint8 - 128`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from bus.codec import THUMB

Colour = Literal["grey", "rgb"]
SCALING = "x/255"


def to_uint8_bgr(frame: np.ndarray) -> np.ndarray:
    """Any supported frame layout/depth -> contiguous uint8 H x W x 3 BGR. Raises ValueError otherwise."""
    if frame.ndim not in (2, 3) or frame.size == 0:
        raise ValueError(f"unsupported frame shape {frame.shape}")
    if frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"unsupported frame dtype {frame.dtype}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    channels = frame.shape[2]
    if channels == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if channels == 3:
        return np.ascontiguousarray(frame)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"unsupported channel count {channels}")


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A frame's grey scene-cut thumbnail: :data:`bus.codec.THUMB` (48x64) uint8, sampled and averaged. The
    display's scene-cut detection compares these (:class:`display.track.Follow`); the detector makes
    them for a display that gets no pixels (``thumb`` on the wire), so both make them here.

    Cheap, as the detector is the pipeline's slowest stage: every 5th pixel of a VGA frame (nearest
    neighbour to twice the thumbnail's size), then grey and 2x2 area averages: 0.015 ms against 0.095
    for an area average over every pixel, with the same scene cuts on every research video (the
    largest difference inside a shot 7.2 against 6.9, the smallest cut 17.4 against 17.1)."""
    h, w = THUMB
    sampled = cv2.resize(image, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    grey = sampled if sampled.ndim == 2 else cv2.cvtColor(sampled, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA).reshape(THUMB)


def square_box(box: tuple[float, float, float, float], margin: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) -> a square (x0, y0, x1, y1) centred on the box, side = max(w, h) * (1 + margin)."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = round(cx - side / 2.0)
    y0 = round(cy - side / 2.0)
    s = max(1, round(side))
    return x0, y0, x0 + s, y0 + s


MAX_CROP_SCALE = 2  # a crop side over this many frame sides (+ CROP_SLACK px) is refused: its allocation
CROP_SLACK = 1024


MAX_ALIGN_DEG = 45.0  # beyond this the eye keypoints are not trusted (profile faces, bad detections)
MIN_ALIGN_DEG = 8.0  # below this a face counts as upright and is not resampled (CK+48: any less cost accuracy)


def eye_angle(kp: Sequence[tuple[float, float]]) -> float:
    """Roll of a face in degrees from BlazeFace's keypoints (0: the subject's right eye, 1: left eye):
    the angle of the eye line against the horizontal, positive when the image-right eye is lower.
    0 without two keypoints, beyond ``MAX_ALIGN_DEG`` or within ``MIN_ALIGN_DEG`` (upright enough:
    rotating would only resample the pixels; measured in models/README.md)."""
    if len(kp) < 2:
        return 0.0
    (xr, yr), (xl, yl) = kp[0], kp[1]
    if not all(np.isfinite(v) for v in (xr, yr, xl, yl)) or (xr, yr) == (xl, yl):
        return 0.0
    deg = float(np.degrees(np.arctan2(yl - yr, xl - xr)))
    return deg if MIN_ALIGN_DEG <= abs(deg) <= MAX_ALIGN_DEG else 0.0


def crop_face(
    frame: np.ndarray,
    box: tuple[float, float, float, float],
    size: int,
    colour: Colour,
    margin: float = 0.0,
    angle: float = 0.0,
) -> np.ndarray:
    """Square crop around ``box`` resized to ``size``; parts outside the frame are edge-replicated.

    The box may lie partly (or wholly) outside the frame; the crop is always ``size x size``. With
    ``angle`` (degrees, :func:`eye_angle`) the crop is first rotated about the box centre by that
    angle, so a tilted face comes out with its eyes level; it is rotated at the frame's resolution
    and then resized exactly as an upright crop is.
    A crop wholly outside the frame is moved up to its edge first (the same replicated pixels,
    without allocating the padding in between: a box 1e5 pixels away asked for 41 GB); one whose
    side is over ``MAX_CROP_SCALE`` times the frame's larger side (plus ``CROP_SLACK`` pixels, for
    tiny frames) raises ValueError.
    """
    bgr = to_uint8_bgr(frame)
    fh, fw = bgr.shape[:2]
    x0, y0, x1, y1 = square_box(box, margin)
    if x1 - x0 > MAX_CROP_SCALE * max(fw, fh) + CROP_SLACK:
        raise ValueError(f"face box {box} is far larger than the {fw}x{fh} frame")
    if angle:
        return to_model_pixels(_rotated_crop(bgr, box, margin, angle), size, colour)
    x0, x1 = (x0 - x1, 0) if x1 < 0 else (fw, fw + x1 - x0) if x0 > fw else (x0, x1)
    y0, y1 = (y0 - y1, 0) if y1 < 0 else (fh, fh + y1 - y0) if y0 > fh else (y0, y1)
    cx0, cy0 = max(0, min(fw - 1, x0)), max(0, min(fh - 1, y0))
    cx1, cy1 = max(cx0 + 1, min(fw, x1)), max(cy0 + 1, min(fh, y1))
    patch = bgr[cy0:cy1, cx0:cx1]
    top, bottom, left, right = (max(0, p) for p in (cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1))
    if top or bottom or left or right:
        patch = cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return to_model_pixels(patch, size, colour)


def _rotated_crop(bgr: np.ndarray, box: tuple[float, float, float, float], margin: float, angle: float) -> np.ndarray:
    x0, y0, x1, y1 = square_box(box, margin)
    side = x1 - x0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    # Rotate about the box centre, then move that centre to the middle of a side x side output.
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[0, 2] += side / 2.0 - cx
    m[1, 2] += side / 2.0 - cy
    return cv2.warpAffine(bgr, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def to_model_pixels(image: np.ndarray, size: int, colour: Colour) -> np.ndarray:
    """An image (any layout :func:`to_uint8_bgr` takes) -> uint8 ``size x size x C`` in ``colour``."""
    bgr = to_uint8_bgr(image)
    h, w = bgr.shape[:2]
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    if (h, w) != (size, size):
        bgr = cv2.resize(bgr, (size, size), interpolation=interp)
    if colour == "grey":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    if colour == "rgb":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unknown colour mode {colour!r}")


def grey_to_model_pixels(grey: np.ndarray, size: int, colour: Colour) -> np.ndarray:
    """Batch of uint8 grey images (N x H x W) -> N x size x size x C, as :func:`to_model_pixels`."""
    return (
        np.stack([to_model_pixels(g, size, colour) for g in grey])
        if len(grey)
        else np.zeros((0, size, size, 1 if colour == "grey" else 3), np.uint8)
    )


def zoom(crops: np.ndarray, factor: float) -> np.ndarray:
    """uint8 N x S x S x C model pixels -> the same crops seen from a little further (``factor`` > 1: the
    crop edge-replicated by ``round(S * (factor - 1) / 2)`` pixels a side, then shrunk back to S) or closer
    (< 1: the centre ``round(S * factor)`` pixels, enlarged to S). 1: the crops themselves. The classifier's
    second view of each face (sidecar ``input.mirror_zoom``); it works on the crop, not the frame, so a
    FER2013 image and a live face get the same view."""
    if factor == 1.0 or len(crops) == 0:
        return crops
    s = crops.shape[1]
    out = np.empty_like(crops)
    if factor > 1.0:
        p = round(s * (factor - 1.0) / 2.0)
        if p == 0:
            return crops
        for i, crop in enumerate(crops):  # cv2 per crop: a tenth of the time np.pad takes on one 48x48 face
            padded = cv2.copyMakeBorder(crop, p, p, p, p, cv2.BORDER_REPLICATE)
            out[i] = cv2.resize(padded, (s, s), interpolation=cv2.INTER_AREA).reshape(out.shape[1:])
        return out
    c = max(1, round(s * factor))
    if c == s:
        return crops
    o = (s - c) // 2
    for i, crop in enumerate(crops):
        out[i] = cv2.resize(crop[o : o + c, o : o + c], (s, s), interpolation=cv2.INTER_LINEAR).reshape(out.shape[1:])
    return out


def scale(pixels: np.ndarray) -> np.ndarray:
    """uint8 model pixels -> float32 model input in [0, 1] (the ``SCALING`` rule)."""
    return pixels.astype(np.float32) / 255.0
