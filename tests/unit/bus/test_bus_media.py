"""bus.media: one list of image suffixes, the one capture uses to tell an image from a video."""

from __future__ import annotations

import pytest

from bus.media import IMAGE_SUFFIXES, is_image_name
from capture.sources import kind


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_image_suffix_is_an_image_source_in_any_case(suffix: str) -> None:
    assert kind(f"/no/such/a{suffix}") == kind(f"/no/such/a{suffix.upper()}") == "image"


@pytest.mark.parametrize(
    ("name", "image"),
    [("a.JPG", True), ("x/y.tiff", True), ("a.mp4", False), ("a.jpg.mkv", False), ("jpg", False), ("a.gif", False)],
)
def test_is_image_name(name: str, image: bool) -> None:
    assert is_image_name(name) is image
