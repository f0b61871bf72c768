"""BlazeFace decoded in numpy on LiteRT: anchors, letterbox, decode, weighted NMS, and agreement with
the MediaPipe Tasks backend on the shared media (those tests skip when the media is absent)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from bus.codec import Face
from detector.backend import BACKENDS, MODELS_DIR, BackendError, open_backend
from detector.blazeface import ANCHORS, BlazeFaceBackend, anchor_centres, decode, letterbox, weighted_nms
from detector.faces import FaceBackend

VIDEOS = "media/videos"


@pytest.fixture(scope="module")
def full() -> Iterator[BlazeFaceBackend]:
    with BlazeFaceBackend("full_range", min_confidence=0.6, max_faces=32) as b:
        yield b


@pytest.fixture(scope="module", params=["full_range", "short_range"])
def litert(request: pytest.FixtureRequest) -> Iterator[BlazeFaceBackend]:
    with BlazeFaceBackend(request.param, min_confidence=0.6, max_faces=32) as b:
        yield b


@pytest.fixture(scope="module")
def tasks_full() -> Iterator[FaceBackend]:
    with FaceBackend("full_range", min_confidence=0.6, max_faces=32) as b:
        yield b


def image(shared_data: Path, rel: str) -> np.ndarray:
    img = cv2.imread(str(shared_data / "media/images" / rel))
    assert img is not None, rel
    return img


def frames(path: Path, limit: int | None = None) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    try:
        n = 0
        while limit is None or n < limit:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield frame
    finally:
        cap.release()


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """IoU of two x, y, w, h boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# --- anchors ---------------------------------------------------------------------------------------


def test_anchor_counts_and_range() -> None:
    for size, n in [(192, 2304), (128, 896)]:
        a = anchor_centres(ANCHORS[size])
        assert a.shape == (n, 2)
        assert np.all((a > 0) & (a < 1))


def test_full_range_anchors_are_one_48x48_grid() -> None:
    a = anchor_centres(ANCHORS[192])
    np.testing.assert_allclose(a[0], (0.5 / 48, 0.5 / 48))
    ys, xs = np.mgrid[0:48, 0:48]
    np.testing.assert_allclose(a, np.stack([(xs + 0.5) / 48, (ys + 0.5) / 48], axis=-1).reshape(-1, 2), atol=1e-7)


def test_short_range_anchors_are_16x16_by_2_then_8x8_by_6() -> None:
    a = anchor_centres(ANCHORS[128])
    for n, per_cell, part in [(16, 2, a[:512]), (8, 6, a[512:])]:
        assert len(part) == n * n * per_cell
        ys, xs = np.mgrid[0:n, 0:n]
        grid = np.stack([(xs + 0.5) / n, (ys + 0.5) / n], axis=-1)  # (n, n, 2), row major: x fastest
        expected = np.repeat(grid[:, :, None, :], per_cell, axis=2).reshape(-1, 2)
        np.testing.assert_allclose(part, expected, atol=1e-7)


# --- letterbox -------------------------------------------------------------------------------------


def test_letterbox_landscape_frame() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out, px, py = letterbox(frame, 192)
    assert out.shape == (1, 192, 192, 3) and out.dtype == np.float32
    assert (px, py) == (0.0, 0.125)
    assert np.all(out[0, :24] == 0.0) and np.all(out[0, 168:] == 0.0)
    content = out[0, 24:168]
    assert content.min() >= -1.0 and content.max() <= 1.0
    assert content.std() > 0.1  # the frame is there, not a blank


@pytest.mark.parametrize(("value", "expected"), [(255, 1.0), (0, -1.0)])
def test_letterbox_white_and_black(value: int, expected: float) -> None:
    out, _, _ = letterbox(np.full((480, 640, 3), value, np.uint8), 192)
    np.testing.assert_allclose(out[0, 24:168], expected, atol=1e-6)


def test_letterbox_converts_bgr_to_rgb() -> None:
    blue = np.zeros((100, 100, 3), np.uint8)
    blue[..., 0] = 255  # BGR blue
    out, _, _ = letterbox(blue, 128)
    np.testing.assert_allclose(out[0, 64, 64], (-1.0, -1.0, 1.0), atol=1e-6)


def test_letterbox_reuses_the_buffer_and_clears_the_old_content() -> None:
    white_landscape = np.full((480, 640, 3), 255, np.uint8)
    first, _, _ = letterbox(white_landscape, 192)
    again, _, _ = letterbox(white_landscape, 192, first)
    assert again is first
    portrait, px, py = letterbox(np.full((640, 480, 3), 255, np.uint8), 192, first)
    assert portrait is first
    assert (px, py) == (0.125, 0.0)
    # the old content rows (24..167) are border now in the left and right columns
    assert np.all(portrait[0, :, :24] == 0.0) and np.all(portrait[0, :, 168:] == 0.0)
    np.testing.assert_allclose(portrait[0, :, 24:168], 1.0, atol=1e-6)


# --- decode ----------------------------------------------------------------------------------------


def raw_outputs(logits: list[float], boxes: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    raw_boxes = np.zeros((1, len(logits), 16), np.float32)
    for i, b in enumerate(boxes):
        raw_boxes[0, i, : len(b)] = b
    return raw_boxes, np.asarray(logits, np.float32).reshape(1, -1, 1)


ANCHORS_2 = np.array([[0.25, 0.5], [0.75, 0.5]], np.float32)


@pytest.mark.parametrize(("min_score", "kept"), [(0.5, 1), (0.6, 0)])
def test_decode_logit_zero_is_half(min_score: float, kept: int) -> None:
    raw_boxes, raw_scores = raw_outputs([0.0, -50.0], [[0, 0, 10, 10], [0, 0, 10, 10]])
    boxes, kps, scores = decode(raw_boxes, raw_scores, ANCHORS_2, 100, min_score)
    assert len(boxes) == len(kps) == len(scores) == kept
    if kept:
        assert scores[0] == pytest.approx(0.5)


def test_decode_box_and_keypoints_relative_to_the_anchor() -> None:
    kp = [float(v) for v in range(1, 13)]
    raw_boxes, raw_scores = raw_outputs([-50.0, 5.0], [[0, 0, 1, 1], [10, -20, 40, 30, *kp]])
    boxes, kps, scores = decode(raw_boxes, raw_scores, ANCHORS_2, 100, 0.5)
    assert len(boxes) == 1 and scores[0] == pytest.approx(1 / (1 + np.exp(-5.0)))
    cx, cy, w, h = 0.75 + 0.1, 0.5 - 0.2, 0.4, 0.3
    np.testing.assert_allclose(boxes[0], (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), atol=1e-6)
    np.testing.assert_allclose(kps[0], np.array(kp).reshape(6, 2) / 100 + (0.75, 0.5), atol=1e-6)


def test_decode_huge_logits_do_not_overflow() -> None:
    raw_boxes, raw_scores = raw_outputs([1e4, -1e4], [[0, 0, 10, 10], [0, 0, 10, 10]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            _, _, scores = decode(raw_boxes, raw_scores, ANCHORS_2, 100, 0.0)
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, (1.0, 0.0), atol=1e-12)


def test_decode_nothing_above_the_threshold() -> None:
    raw_boxes, raw_scores = raw_outputs([-5.0, -5.0], [])
    boxes, kps, scores = decode(raw_boxes, raw_scores, ANCHORS_2, 100, 0.5)
    assert boxes.shape == (0, 4) and kps.shape == (0, 6, 2) and scores.shape == (0,)
    assert weighted_nms(boxes, kps, scores) == []


# --- weighted NMS ----------------------------------------------------------------------------------


def test_weighted_nms_merges_overlapping_boxes_by_score() -> None:
    a, b, far = [0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [2.0, 2.0, 3.0, 3.0]  # IoU(a, b) = 0.82
    boxes = np.array([b, far, a])
    kps = np.stack([np.full((6, 2), v) for v in (1.0, 5.0, 2.0)])
    scores = np.array([0.6, 0.7, 0.9])
    out = weighted_nms(boxes, kps, scores)
    assert [s for _, _, s in out] == [pytest.approx(0.9), pytest.approx(0.7)]  # best first
    np.testing.assert_allclose(out[0][0], (0.9 * np.array(a) + 0.6 * np.array(b)) / 1.5)
    np.testing.assert_allclose(out[0][1], np.full((6, 2), (0.9 * 2.0 + 0.6 * 1.0) / 1.5))
    np.testing.assert_allclose(out[1][0], far)
    np.testing.assert_allclose(out[1][1], np.full((6, 2), 5.0))


def test_weighted_nms_keeps_boxes_overlapping_at_most_the_threshold() -> None:
    a, b = [0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0]  # IoU = 1/3 > 0.3: merged at 0.3, kept at 0.4
    boxes, kps, scores = np.array([a, b]), np.zeros((2, 6, 2)), np.array([0.8, 0.7])
    assert len(weighted_nms(boxes, kps, scores)) == 1
    assert len(weighted_nms(boxes, kps, scores, iou=0.4)) == 2


# --- the backend on the shared media ----------------------------------------------------------------


def test_two_people_gives_two_faces_left_to_right(litert: BlazeFaceBackend, shared_data: Path) -> None:
    faces = litert.detect(image(shared_data, "faces/two_people.jpg"))
    assert len(faces) == 2
    assert faces[0].box[0] < faces[1].box[0]
    for f in faces:
        x, y, w, h = f.box
        assert 100 < w < 250 and 100 < h < 250 and 0.6 <= f.score <= 1.0
        assert len(f.kp) == 6 and all(x - w < kx < x + 2 * w and y - h < ky < y + 2 * h for kx, ky in f.kp)


@pytest.mark.parametrize("name", ["astronaut.png", "biden.jpg", "obama.jpg"])
def test_one_face_images(litert: BlazeFaceBackend, shared_data: Path, name: str) -> None:
    img = image(shared_data, f"faces/{name}")
    faces = litert.detect(img)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert x >= 0 and y >= 0 and x + w <= img.shape[1] and y + h <= img.shape[0]


@pytest.mark.parametrize(
    ("video", "limit"), [("asl_signer_concat10.mp4", 60), ("face-demographics-walking-and-pause.gif", None)]
)
def test_full_range_agrees_with_mediapipe_tasks(
    full: BlazeFaceBackend, tasks_full: FaceBackend, shared_data: Path, video: str, limit: int | None
) -> None:
    n, mismatches, ious = 0, [], []
    for i, frame in enumerate(frames(shared_data / VIDEOS / video, limit)):
        n += 1
        ours, theirs = full.detect(frame), tasks_full.detect(frame)
        if len(ours) != len(theirs):
            mismatches.append((i, len(ours), len(theirs)))
            continue
        ious += [iou(a.box, b.box) for a, b in zip(ours, theirs, strict=True)]
    assert n == limit if limit else n > 10
    assert mismatches == [], "(frame, litert faces, Tasks faces)"
    assert ious and float(np.median(ious)) >= 0.9


def test_full_range_finds_no_faces_in_the_bottle_video(full: BlazeFaceBackend, shared_data: Path) -> None:
    counts = [len(full.detect(f)) for f in frames(shared_data / VIDEOS / "bottle-detection.mp4", 100)]
    assert len(counts) == 100 and sum(counts) == 0


def test_max_faces_keeps_the_best_and_counts_the_rest(shared_data: Path) -> None:
    two = image(shared_data, "faces/two_people.jpg")
    with BlazeFaceBackend("full_range", 0.6, max_faces=1) as b:
        assert b.model == "face_detection_full_range_sparse.tflite"
        faces = b.detect(two)
        assert len(faces) == 1 and b.excess == 1
        with BlazeFaceBackend("full_range", 0.6, max_faces=32) as every:
            assert faces[0].score == max(f.score for f in every.detect(two))


# --- letterbox removal (a fake interpreter answering one known detection) ---------------------------


class FakeInterpreter:
    """Answers one detection: ``box`` (xmin, ymin, xmax, ymax in [0, 1] of the square input)."""

    def __init__(self, backend: BlazeFaceBackend, box: tuple[float, float, float, float]):
        size, anchors = backend.size, backend.anchors
        self.boxes_index = backend._boxes
        i = len(anchors) // 2
        cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
        self.raw_boxes = np.zeros((1, len(anchors), 16), np.float32)
        self.raw_boxes[0, i, :4] = ((cx - anchors[i, 0]) * size, (cy - anchors[i, 1]) * size, w * size, h * size)
        self.raw_boxes[0, i, 4:] = np.tile([(cx - anchors[i, 0]) * size, (cy - anchors[i, 1]) * size], 6)
        self.raw_scores = np.full((1, len(anchors), 1), -50.0, np.float32)
        self.raw_scores[0, i, 0] = 50.0

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        pass

    def invoke(self) -> None:
        pass

    def get_tensor(self, index: int) -> np.ndarray:
        return self.raw_boxes if index == self.boxes_index else self.raw_scores


@pytest.mark.parametrize(
    ("h", "w"),
    [
        (480, 640),
        (640, 480),
        (661, 1126),  # odd padding: the extra row is at the bottom
    ],
)
def test_a_detection_covering_the_letterboxed_content_is_the_whole_frame(h: int, w: int) -> None:
    with BlazeFaceBackend("full_range", 0.6, 32) as b:
        frame = np.zeros((h, w, 3), np.uint8)
        _, px, py = letterbox(frame, b.size)
        size = b.size
        scale = size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        content = (px, py, px + nw / size, py + nh / size)  # where letterbox() put the frame
        b._it = FakeInterpreter(b, content)
        faces = b.detect(frame)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, (0.0, 0.0, w, h), atol=0.05)
    np.testing.assert_allclose(faces[0].kp, [(w / 2, h / 2)] * 6, atol=0.05)


# --- errors ----------------------------------------------------------------------------------------


def test_a_model_that_is_not_blazeface_is_a_backend_error() -> None:
    if not (MODELS_DIR / "fer2013_emonet.tflite").is_file():
        pytest.skip("models/fer2013_emonet.tflite not found")
    with pytest.raises(BackendError, match="not a BlazeFace model"):
        BlazeFaceBackend("models/fer2013_emonet.tflite", 0.6, 32)


def test_a_missing_model_is_a_backend_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        BlazeFaceBackend(str(tmp_path / "nowhere.tflite"), 0.6, 32)


def test_a_file_that_is_not_a_model_is_a_backend_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(BackendError, match="cannot load detector model"):
        BlazeFaceBackend(str(bad), 0.6, 32)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((48, 64, 3), np.float32),
        np.zeros((48, 64), np.uint8),
        np.zeros((48, 64, 4), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
        np.zeros((48, 0, 3), np.uint8),
    ],
    ids=["float", "2-D", "4 channels", "no rows", "no columns"],
)
def test_bad_frames_raise_value_error(full: BlazeFaceBackend, frame: np.ndarray) -> None:
    with pytest.raises(ValueError):
        full.detect(frame)


def test_a_blank_frame_gives_no_faces(full: BlazeFaceBackend) -> None:
    faces: list[Face] = full.detect(np.zeros((480, 640, 3), np.uint8))
    assert faces == []


# --- open_backend ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls"), [("litert", BlazeFaceBackend), ("mediapipe", FaceBackend)])
def test_open_backend_by_name(name: str, cls: type) -> None:
    assert name in BACKENDS
    with open_backend(name, "short_range", 0.6, 4) as b:
        assert b.model == "face_detection_short_range.tflite" and b.max_faces == 4 and b.excess == 0
        assert type(b) is cls


def test_open_backend_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown detector backend"):
        open_backend("onnx", "full_range", 0.6, 32)
