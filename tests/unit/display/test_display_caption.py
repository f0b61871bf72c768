"""display.draw.caption: one label per face (overlay and web page), and the uncertain overlay."""

from __future__ import annotations

import numpy as np
import pytest

from bus.codec import Face
from display.draw import UNCERTAIN, annotate, caption, colour
from display.track import Tracked

LABELS = ["angry", "happy", "neutral"]


@pytest.mark.parametrize(
    ("face", "tracked", "below", "text", "uncertain", "smoothed"),
    [
        (Face((0, 0, 9, 9), 0.93), None, None, "face 93%", False, False),
        (Face((0, 0, 9, 9), 0.9, [], "happy", [0.1, 0.7, 0.2]), None, None, "happy 70%", False, False),
        (
            Face((0, 0, 9, 9), 0.9, [], "happy", [0.3, 0.4, 0.3], True),
            None,
            0.45,
            "uncertain (happy?) 40%",
            True,
            False,
        ),
        # the smoothed label kept by hysteresis: its own probability, not the top one (was max = 32 %)
        (
            Face((0, 0, 9, 9), 0.9, [], "angry", [0.5, 0.2, 0.3]),
            Tracked(12, [0.32, 0.43, 0.25], "neutral"),
            None,
            "#12 neutral 25%",
            False,
            True,
        ),
        # smoothed numbers: uncertain by the threshold, whatever the raw flag said
        (
            Face((0, 0, 9, 9), 0.9, [], "happy", [0.2, 0.6, 0.2], False),
            Tracked(3, [0.3, 0.42, 0.28], "happy"),
            0.45,
            "#3 uncertain (happy?) 42%",
            True,
            True,
        ),
        (
            Face((0, 0, 9, 9), 0.9, [], "happy", [0.3, 0.4, 0.3], True),
            Tracked(3, [0.1, 0.8, 0.1], "happy"),
            0.45,
            "#3 happy 80%",
            False,
            True,
        ),
        (Face((0, 0, 9, 9), 0.9, [], "happy", [0.1, 0.8, 0.1]), Tracked(None), None, "happy 80%", False, False),
    ],
)
def test_caption(face, tracked, below, text, uncertain, smoothed):
    cap = caption(face, LABELS, tracked, below)
    assert (cap.text, cap.uncertain, cap.smoothed) == (text, uncertain, smoothed)


def test_an_uncertain_face_is_drawn_grey_and_dashed():
    img = np.full((200, 300, 3), 255, np.uint8)
    sure = annotate(img, [Face((50, 60, 100, 100), 0.9, [], "happy", [0.1, 0.8, 0.1], False)], LABELS)
    unsure = annotate(img, [Face((50, 60, 100, 100), 0.9, [], "happy", [0.3, 0.4, 0.3], True)], LABELS)
    left = slice(70, 150), slice(48, 53)  # the box's left edge, below the label
    assert (sure[left].reshape(-1, 3) == colour("happy")).all(axis=1).any()
    assert not (unsure[left].reshape(-1, 3) == colour("happy")).all(axis=1).any()
    edge = unsure[left].reshape(-1, 3)
    grey = (edge == UNCERTAIN).all(axis=1)
    assert grey.any() and not grey.all()  # dashed: grey and gaps


def test_a_light_neutral_box_has_a_dark_outline_on_a_white_wall():
    img = np.full((200, 300, 3), 255, np.uint8)
    out = annotate(img, [Face((50, 60, 100, 100), 0.9, [], "neutral", [0.1, 0.1, 0.8])], LABELS)
    column = out[100, 44:56]
    assert (column.sum(axis=1) < 60).any()  # a near-black line next to the grey one
