"""Pure drawing: a frame and its classified faces -> an annotated copy (boxes, label, probabilities).

Consumes a BGR uint8 image and ``bus.codec.Face`` objects (``label``/``probs`` in ``labels`` order)
and, optionally, each face's :class:`display.track.Tracked` (then the overlay shows ``#id``, the
smoothed label and the smoothed probabilities); produces a new image, the input is never modified.
Boxes may lie partly outside the frame.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from bus.codec import MAX_COORD, Face
from display.track import Tracked

# BGR; the usual emotion colours, and a stable hash colour for labels of other models.
COLOURS: dict[str, tuple[int, int, int]] = {
    "angry": (40, 40, 220),
    "disgust": (40, 140, 40),
    "fear": (160, 60, 160),
    "happy": (0, 215, 255),
    "sad": (200, 110, 30),
    "surprise": (0, 140, 255),
    "neutral": (170, 170, 170),
    "contempt": (100, 60, 130),
}
UNLABELLED = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
DETAIL_MIN_BOX = 90  # px: faces at least this tall also get one probability bar per label


def colour(label: str | None) -> tuple[int, int, int]:
    """BGR colour of an emotion label (stable for unknown labels)."""
    if label is None:
        return UNLABELLED
    if label.lower() in COLOURS:
        return COLOURS[label.lower()]
    h = zlib.crc32(label.encode("utf-8"))
    return (64 + (h & 0x7F), 64 + ((h >> 8) & 0x7F), 64 + ((h >> 16) & 0x7F))


def hex_colour(label: str | None) -> str:
    """``#rrggbb`` of :func:`colour`, for the web page."""
    b, g, r = colour(label)
    return f"#{r:02x}{g:02x}{b:02x}"


def _text(s: str) -> str:
    """OpenCV's Hershey fonts draw printable ASCII only."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in s)[:40]


def _label_text(img: np.ndarray, text: str, x: int, y: int, fg: tuple[int, int, int], scale: float, thick: int) -> None:
    (tw, tht), base = cv2.getTextSize(text, FONT, scale, thick)
    height = tht + base + 2
    x = max(0, min(img.shape[1] - tw - 4, x))  # keep the label on screen when the box is not
    y = max(height, min(img.shape[0], y))
    cv2.rectangle(img, (x, y - height), (x + tw + 4, y), fg, cv2.FILLED)
    cv2.putText(img, text, (x + 2, y - base), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)


def annotate(
    image: np.ndarray,
    faces: Sequence[Face],
    labels: Sequence[str] | None,
    tracked: Sequence[Tracked] | None = None,
) -> np.ndarray:
    """A copy of ``image`` with each face's box, ``[#track] label pct`` and (large faces) probability
    bars; with ``tracked`` (one per face) the label and bars are the smoothed ones."""
    out: np.ndarray = np.array(image, dtype=np.uint8, copy=True)
    if out.ndim == 2 or out.shape[2] == 1:
        out = np.asarray(cv2.cvtColor(out, cv2.COLOR_GRAY2BGR))
    scale = max(0.4, min(out.shape[:2]) / 900.0)
    th = max(1, int(round(scale * 2)))
    for i, face in enumerate(faces):
        if not all(math.isfinite(v) and abs(v) <= MAX_COORD for v in face.box):
            continue  # nothing to draw (decode refuses these; a faces file given to --faces may not)
        x, y, w, h = (int(round(v)) for v in face.box)
        if x >= out.shape[1] or y >= out.shape[0] or x + w <= 0 or y + h <= 0:
            continue  # wholly off the frame: nothing to point at
        label, probs, prefix = face.label, face.probs, ""
        if tracked is not None:
            t = tracked[i]
            prefix = "" if t.track is None else f"#{t.track} "
            if t.smoothed is not None:
                label, probs = t.smoothed_label, t.smoothed
        fg = colour(label)
        cv2.rectangle(out, (x, y), (x + w, y + h), fg, th)
        if label is not None and probs and all(map(math.isfinite, probs)):
            text = f"{prefix}{label} {100 * max(probs):.0f}%"
        else:
            text = f"{prefix}face {100 * face.score:.0f}%" if math.isfinite(face.score) else f"{prefix}face"
        _label_text(out, _text(text), x, y, fg, scale, th)
        if labels and probs and len(probs) == len(labels) and h >= DETAIL_MIN_BOX:
            _bars(out, labels, probs, x + w + 4, y, scale * 0.7)
    return out


def _bars(img: np.ndarray, labels: Sequence[str], probs: Sequence[float], x: int, y: int, scale: float) -> None:
    (_, lh), base = cv2.getTextSize("Ag", FONT, scale, 1)
    step, width = lh + base + 3, int(60 * scale / 0.4)
    for i, (lab, p) in enumerate(zip(labels, probs, strict=True)):
        yy = y + (i + 1) * step
        cv2.rectangle(img, (x, yy - lh), (x + int(width * max(0.0, min(1.0, p))), yy), colour(lab), cv2.FILLED)
        cv2.putText(img, _text(f"{lab} {100 * p:.0f}"), (x + width + 3, yy), FONT, scale, colour(lab), 1, cv2.LINE_AA)
