"""The Python API on the shipped models and the shared media: same code as the stages, in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.backend import open_backend
from emostream import EmotionRecognizer, FaceResult, Result
from emostream.api import RecognizerError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def recognizer() -> Iterator[EmotionRecognizer]:
    with EmotionRecognizer() as r:
        yield r


def test_three_lines_on_a_photo_of_two_people(recognizer: EmotionRecognizer, shared_data: Path) -> None:
    photo = shared_data / "media/images/faces/two_people.jpg"
    faces = recognizer.detect(photo)
    assert len(faces) == 2 and faces[0].box[0] < faces[1].box[0]  # left to right
    for f in faces:
        assert isinstance(f, FaceResult) and list(f.probs) == list(recognizer.labels)
        assert f.label == max(f.probs, key=f.probs.__getitem__)
        assert sum(f.probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert len(f.keypoints) == 6 and 0.6 <= f.score <= 1.0
        assert f.uncertain == (max(f.probs.values()) < recognizer.config.classifier.uncertain_below)
    # the same faces as the detector stage's own backend, and the same answer for the array
    with open_backend("litert", "full_range", 0.6, 32) as det:
        boxes = [d.box for d in det.detect(cv2.imread(str(photo)))]
    assert [f.box for f in faces] == boxes
    assert recognizer.detect(cv2.imread(str(photo))) == faces
    grey = cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE)
    assert len(recognizer.detect(grey)) == 2


def test_no_face_and_unreadable(recognizer: EmotionRecognizer, shared_data: Path, tmp_path: Path) -> None:
    assert recognizer.detect(shared_data / "media/images/no_faces/brick.png") == []
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="cannot read image"):
        recognizer.detect(bad)
    with pytest.raises(ValueError, match="unsupported"):
        recognizer.detect(np.zeros((4, 4, 3), np.float32))


def test_analyze_folder_glob_list_and_video(recognizer: EmotionRecognizer, shared_data: Path, tmp_path: Path) -> None:
    faces_dir = shared_data / "media/images/faces"
    folder = list(recognizer.analyze(faces_dir))
    assert [(Path(r.path or "").name, len(r.faces)) for r in folder] == [
        ("astronaut.png", 1),
        ("biden.jpg", 1),
        ("obama.jpg", 1),
        ("two_people.jpg", 2),
    ]
    assert [r.index for r in folder] == [0, 1, 2, 3]
    globbed = list(recognizer.analyze(str(faces_dir / "*.jpg")))
    assert [Path(r.path or "").name for r in globbed] == ["biden.jpg", "obama.jpg", "two_people.jpg"]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    listed = list(recognizer.analyze([faces_dir / "obama.jpg", bad, cv2.imread(str(faces_dir / "biden.jpg"))]))
    assert [(r.index, len(r.faces), r.error is not None) for r in listed] == [
        (0, 1, False),
        (1, 0, True),
        (2, 1, False),
    ]
    assert listed[2].path is None
    video = shared_data / "media/videos/head-pose-face-detection-male.mp4"
    frames = list(recognizer.analyze(video))
    assert len(frames) == 62 and all(len(r.faces) == 1 and r.path == str(video) for r in frames)
    assert frames[30].time_s == pytest.approx(30 / cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS))
    assert isinstance(frames[0], Result)
    with pytest.raises(RecognizerError, match="no file matches"):
        list(recognizer.analyze(str(tmp_path / "*.jpg")))
    with pytest.raises(RecognizerError, match="live"):
        list(recognizer.analyze("0"))


def test_model_and_config_errors(tmp_path: Path) -> None:
    with pytest.raises(RecognizerError, match="model file not found"):
        EmotionRecognizer(model=tmp_path / "none.tflite")
    with pytest.raises(RecognizerError, match="detector model not found"):
        EmotionRecognizer(detector=str(tmp_path / "none.tflite"))
    (tmp_path / "bus.toml").write_text("[detector]\nmodle = 1\n")
    with pytest.raises(RecognizerError, match="unknown key 'modle'"):
        EmotionRecognizer(config=tmp_path / "bus.toml")


def test_uncertain_follows_the_threshold(shared_data: Path) -> None:
    photo = shared_data / "media/images/faces/two_people.jpg"
    for below in (0.0, 0.5, 1.0):
        with EmotionRecognizer(uncertain_below=below) as r:
            faces = r.detect(photo)
        assert [f.uncertain for f in faces] == [max(f.probs.values()) < below for f in faces]
    assert [f.uncertain for f in faces] == [True, True]
    with pytest.raises(RecognizerError, match="uncertain_below"):
        EmotionRecognizer(uncertain_below=1.5)
    with pytest.raises(RecognizerError, match="min_confidence"):
        EmotionRecognizer(min_confidence=0.0)


def test_no_tensorflow_no_mediapipe(shared_data: Path, tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from emostream import EmotionRecognizer\n"
        f"faces = EmotionRecognizer().detect({str(shared_data / 'media/images/faces/obama.jpg')!r})\n"
        "print(json.dumps([len(faces), 'tensorflow' in sys.modules, 'mediapipe' in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [1, False, False]
