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
from dataclasses import dataclass

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


UNCERTAIN = (150, 150, 150)  # BGR: a face whose top probability is below the classifier's threshold


@dataclass(frozen=True)
class Caption:
    """What a face is shown as, on the overlay and the web page alike: one label per face."""

    text: str  # "#3 happy 71%", "#3 uncertain (angry?) 26%", "#3 face 93%"
    label: str | None  # the label shown (kept when uncertain)
    probs: Sequence[float] | None  # the vector the label and the bars come from
    uncertain: bool
    smoothed: bool  # the numbers are the track's smoothed ones (else the classifier's raw ones)


def caption(
    face: Face, labels: Sequence[str] | None, tracked: Tracked | None = None, uncertain_below: float | None = None
) -> Caption:
    """The smoothed label and vector when the face is tracked, else the raw ones; the percentage is
    the shown label's own probability (never another label's). Uncertain: the classifier's flag for
    raw numbers; for smoothed ones the shown label's smoothed probability below ``uncertain_below``."""
    label, probs, prefix, smoothed = face.label, face.probs, "", False
    uncertain = bool(face.uncertain)
    if tracked is not None:
        prefix = "" if tracked.track is None else f"#{tracked.track} "
        if tracked.smoothed is not None:
            label, probs, smoothed = tracked.smoothed_label, tracked.smoothed, True
    if label is None or not probs or not all(map(math.isfinite, probs)):
        score = f" {100 * face.score:.0f}%" if math.isfinite(face.score) else ""
        return Caption(f"{prefix}face{score}", None, None, False, False)
    idx = list(labels).index(label) if labels and label in labels and len(labels) == len(probs) else None
    p = float(probs[idx]) if idx is not None else float(max(probs))
    if smoothed and uncertain_below is not None:
        uncertain = p < uncertain_below
    name = f"uncertain ({label}?)" if uncertain else label
    return Caption(f"{prefix}{name} {100 * p:.0f}%", label, probs, uncertain, smoothed)


def annotate(
    image: np.ndarray,
    faces: Sequence[Face],
    labels: Sequence[str] | None,
    tracked: Sequence[Tracked] | None = None,
    uncertain_below: float | None = None,
) -> np.ndarray:
    """A copy of ``image`` with each face's box, :func:`caption` and (large faces) probability bars;
    with ``tracked`` (one per face) the label and bars are the smoothed ones. An uncertain face is
    drawn grey with a dashed box."""
    out: np.ndarray = np.array(image, dtype=np.uint8, copy=True)
    if out.ndim == 2 or out.shape[2] == 1:
        out = np.asarray(cv2.cvtColor(out, cv2.COLOR_GRAY2BGR))
    scale = max(0.4, min(out.shape[:2]) / 900.0)
    th = max(1, round(scale * 2))
    for i, face in enumerate(faces):
        if not all(math.isfinite(v) and abs(v) <= MAX_COORD for v in face.box):
            continue  # nothing to draw (decode refuses these; a faces file given to --faces may not)
        x, y, w, h = (round(v) for v in face.box)
        if x >= out.shape[1] or y >= out.shape[0] or x + w <= 0 or y + h <= 0:
            continue  # wholly off the frame: nothing to point at
        cap = caption(face, labels, None if tracked is None else tracked[i], uncertain_below)
        fg = UNCERTAIN if cap.uncertain else colour(cap.label)
        if cap.uncertain:
            _dashed_rect(out, x, y, w, h, fg, th)
        else:
            cv2.rectangle(out, (x, y), (x + w, y + h), (0, 0, 0), th + 2)  # dark outline: visible on light walls
            cv2.rectangle(out, (x, y), (x + w, y + h), fg, th)
        _label_text(out, _text(cap.text), x, y, fg, scale, th)
        probs = cap.probs
        if labels and probs and len(probs) == len(labels) and h >= DETAIL_MIN_BOX:
            _bars(out, labels, probs, x + w + 4, y, scale * 0.7)
    return out


def _dashed_rect(img: np.ndarray, x: int, y: int, w: int, h: int, fg: tuple[int, int, int], th: int) -> None:
    dash = max(4, 3 * th)
    for a, b in (
        ((x, y), (x + w, y)),
        ((x + w, y), (x + w, y + h)),
        ((x + w, y + h), (x, y + h)),
        ((x, y + h), (x, y)),
    ):
        n = max(1, int(np.hypot(b[0] - a[0], b[1] - a[1]) // (2 * dash)))
        for k in range(n):
            p0 = (a[0] + (b[0] - a[0]) * (2 * k) // (2 * n), a[1] + (b[1] - a[1]) * (2 * k) // (2 * n))
            p1 = (a[0] + (b[0] - a[0]) * (2 * k + 1) // (2 * n), a[1] + (b[1] - a[1]) * (2 * k + 1) // (2 * n))
            cv2.line(img, p0, p1, fg, th)


def _bars(img: np.ndarray, labels: Sequence[str], probs: Sequence[float], x: int, y: int, scale: float) -> None:
    (_, lh), base = cv2.getTextSize("Ag", FONT, scale, 1)
    step, width = lh + base + 3, int(60 * scale / 0.4)
    for i, (lab, p) in enumerate(zip(labels, probs, strict=True)):
        yy = y + (i + 1) * step
        cv2.rectangle(img, (x, yy - lh), (x + int(width * max(0.0, min(1.0, p))), yy), colour(lab), cv2.FILLED)
        cv2.putText(img, _text(f"{lab} {100 * p:.0f}"), (x + width + 3, yy), FONT, scale, colour(lab), 1, cv2.LINE_AA)
