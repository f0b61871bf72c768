"""The real MediaPipe backend on the shared media (skipped when the media is absent)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.backend import MODELS_DIR, BackendError, model_path
from detector.faces import FaceBackend

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module", params=["full_range", "short_range"])
def backend(request: pytest.FixtureRequest) -> Iterator[FaceBackend]:
    with FaceBackend(request.param, min_confidence=0.6, max_faces=32) as b:
        yield b


def image(shared_data: Path, rel: str) -> np.ndarray:
    img = cv2.imread(str(shared_data / "media/images" / rel))
    assert img is not None
    return img


def test_two_people_gives_two_faces_left_to_right(backend: FaceBackend, shared_data: Path) -> None:
    faces = backend.detect(image(shared_data, "faces/two_people.jpg"))
    assert len(faces) == 2
    assert faces[0].box[0] < faces[1].box[0]
    for f in faces:
        x, y, w, h = f.box
        assert 100 < w < 250 and 100 < h < 250 and 0.6 <= f.score <= 1.0
        assert len(f.kp) == 6 and all(x - w < kx < x + 2 * w and y - h < ky < y + 2 * h for kx, ky in f.kp)


@pytest.mark.parametrize("name", ["no_faces/chelsea.png", "no_faces/brick.png"])
def test_no_face_images_give_no_faces(backend: FaceBackend, shared_data: Path, name: str) -> None:
    assert backend.detect(image(shared_data, name)) == []


def test_full_range_finds_a_small_face_low_in_a_tall_frame(shared_data: Path) -> None:
    """Decoding the 192 x 192 model with the 128 x 128 model's anchors would only see the top of the frame."""
    canvas = np.zeros((1024, 512, 3), np.uint8)
    canvas[512:] = image(shared_data, "faces/astronaut.png")
    with FaceBackend("full_range", 0.6, 32) as b:
        faces = b.detect(canvas)
    assert len(faces) == 1 and 550 < faces[0].box[1] < 650


def test_max_faces_keeps_the_best_and_counts_the_rest(shared_data: Path) -> None:
    with FaceBackend("full_range", 0.6, max_faces=1) as b:
        faces = b.detect(image(shared_data, "faces/two_people.jpg"))
        assert len(faces) == 1 and b.excess == 1 and faces[0].score > 0.9


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("full_range", MODELS_DIR / "face_detection_full_range_sparse.tflite"),
        ("short_range", MODELS_DIR / "face_detection_short_range.tflite"),
        ("models/face_detection_short_range.tflite", MODELS_DIR / "face_detection_short_range.tflite"),
        ("nowhere/model.tflite", BackendError),
    ],
)
def test_model_path(name: str, expected: Path | type[Exception]) -> None:
    if isinstance(expected, Path):
        assert model_path(name).resolve() == expected
    else:
        with pytest.raises(expected):
            model_path(name)


def test_a_file_that_is_not_a_model_is_a_backend_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(BackendError, match="cannot load detector model"):
        FaceBackend(str(bad), 0.6, 32)


def test_bad_frames_raise_value_error(backend: FaceBackend) -> None:
    with pytest.raises(ValueError):
        backend.detect(np.zeros((10, 10), np.uint8))


def test_mediapipe_is_imported_without_tensorflow() -> None:
    code = (
        "import sys; from detector.faces import _import_mediapipe; _import_mediapipe(); "
        "sys.exit(any(m.split('.')[0] == 'tensorflow' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0


def test_the_mediapipe_backend_without_mediapipe_says_how_to_install_it() -> None:
    """mediapipe is an optional extra: choosing its backend without it is one line (a BackendError,
    which the stages turn into exit 2), not a traceback."""
    code = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "mediapipe":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
from detector.backend import BackendError, open_backend
try:
    open_backend("mediapipe", "full_range", 0.6, 8)
except BackendError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == (
        "[detector] backend = \"mediapipe\" needs the mediapipe package: pip install 'emostream[mediapipe]'\n"
    )
