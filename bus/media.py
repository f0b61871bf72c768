"""Which files are still images: the one list every stage and tool uses (capture reads a file with
these suffixes as one frame, a folder source takes only these files, the display shows an image's
faces without smoothing over time). Every suffix is one OpenCV's ``cv2.imread`` decodes (its
documented formats); whether this build has the codec is checked when the file is read."""

from __future__ import annotations

IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
    ".pnm", ".pfm", ".jp2", ".exr", ".hdr", ".pic", ".sr", ".ras", ".avif",
)  # fmt: skip


def is_image_name(name: str) -> bool:
    """``name`` (a path or file name) ends with an image suffix, in any case."""
    return name.lower().endswith(IMAGE_SUFFIXES)
