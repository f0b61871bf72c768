from __future__ import annotations

import numpy as np
import pytest

from bus.codec import Face
from display.draw import COLOURS, annotate, colour, hex_colour

LABELS = ["angry", "happy", "neutral"]


def face(box, label="happy", probs=(0.1, 0.8, 0.1)):
    return Face(box, 0.9, [], label, list(probs) if probs is not None else None)


@pytest.mark.parametrize(
    ("shape", "faces"),
    [
        ((240, 320, 3), []),
        ((240, 320, 3), [face((100, 60, 120, 120))]),  # big: gets probability bars
        ((240, 320, 3), [face((-40, -30, 100, 100))]),  # partly outside, top-left
        ((240, 320, 3), [face((280, 200, 100, 100))]),  # partly outside, bottom-right
        ((240, 320, 3), [face((1000, 1000, 50, 50))]),  # wholly outside
        ((240, 320, 3), [face((10 * i, 7 * i, 30, 30)) for i in range(30)]),  # 30 faces
        ((240, 320, 3), [face((10, 10, 50, 50), label=None, probs=None)]),  # not classified yet
        ((240, 320, 3), [face((10, 10, 50, 50), label="<script>é", probs=(0.2, 0.3, 0.5))]),
        ((240, 320, 1), [face((10, 10, 50, 50))]),  # grey frame
        ((2, 2, 3), [face((0, 0, 1, 1))]),  # tiny frame
    ],
    ids=["none", "one", "outside-tl", "outside-br", "off-frame", "thirty", "unlabelled", "odd-label", "grey", "tiny"],
)
def test_annotate(shape, faces):
    image = np.full(shape, 50, np.uint8)
    before = image.copy()
    out = annotate(image, faces, LABELS)
    assert out.shape == (*shape[:2], 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)  # the input is never modified
    visible = any(x < shape[1] and y < shape[0] and x + w > 0 and y + h > 0 for x, y, w, h in (f.box for f in faces))
    assert (out != 50).any() == visible


def test_annotate_accepts_a_read_only_image():
    image = np.zeros((100, 100, 3), np.uint8)
    image.flags.writeable = False
    assert annotate(image, [face((10, 10, 20, 20))], LABELS).flags.writeable


def test_box_is_drawn_in_the_label_colour():
    out = annotate(np.zeros((200, 200, 3), np.uint8), [face((50, 100, 60, 60), label="sad")], LABELS)
    assert tuple(out[130, 50]) == COLOURS["sad"]  # left edge of the box, below the label


@pytest.mark.parametrize(
    ("label", "expected"),
    [("happy", COLOURS["happy"]), ("Happy", COLOURS["happy"]), (None, (255, 255, 255))],
)
def test_colour(label, expected):
    assert colour(label) == expected


def test_unknown_labels_get_a_stable_distinct_colour():
    assert colour("bored") == colour("bored")
    assert colour("bored") != colour("sleepy")
    assert hex_colour("happy") == "#ffd700"


@pytest.mark.parametrize(
    "bad",
    [
        Face((0.0, 0.0, float("inf"), 10.0), 0.9),
        Face((0.0, 0.0, 1e30, 10.0), 0.9, [], "happy", [0.5, 0.5]),
        Face((float("nan"), 0.0, 10.0, 10.0), 0.9),
        Face((1.0, 1.0, 5.0, 5.0), float("nan"), [], "happy", [float("nan"), 0.5]),
    ],
)
def test_absurd_numbers_are_not_drawn_and_do_not_raise(bad: Face) -> None:
    """Issue 11 case 2: an 8x8 frame with a face box [0, 0, inf, 10] or 1e30 raised OverflowError."""
    img = np.zeros((8, 8, 3), np.uint8)
    out = annotate(img, [bad, face((1, 1, 4, 4))], ["sad", "happy"])
    assert out.shape == img.shape and out.any()
