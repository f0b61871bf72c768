"""MediaPipe's BlazeFace face detection run directly on the LiteRT interpreter (the same models and
the same decoding as MediaPipe's ``face_detection`` graphs, without the Tasks runtime).

Why: MediaPipe Tasks' ``FaceDetector.detect`` costs 5.0 ms per 640x480 frame with the full-range
model where the model itself is 3.4 ms (6.4 vs 3.9 ms at 30 fps), and 1.9 vs 1.1 ms with the
short-range one (``python -m bench``; bench/RESULTS.md): the difference is the Tasks runtime
(a graph of calculators, its own threads, image copies). This module is the graph's work in numpy:

1. ImageToTensor: the BGR frame is scaled to fit the model's square input keeping its aspect ratio
   (letterbox, zero border), converted to RGB floats in [-1, 1];
2. SsdAnchors: the anchors of the model (full range: one 48 x 48 layer, stride 4; short range:
   strides 8, 16, 16, 16 with an interpolated anchor, 16 x 16 x 2 + 8 x 8 x 6), fixed size;
3. TensorsToDetections: box centre/size and six keypoints relative to their anchor, sigmoid scores
   clipped to +-100, kept when >= ``min_confidence``;
4. weighted non-maximum suppression (IoU > 0.3: boxes and keypoints averaged, weighted by score,
   with the best score);
5. letterbox removal, to pixels of the original frame.

``tests/unit/detector/test_detector_blazeface.py`` checks it against MediaPipe Tasks on the shared
media (same face counts, boxes within IoU 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from bus.codec import Face
from detector.backend import BackendError, limit_faces, model_path

NMS_IOU = 0.3
SCORE_CLIP = 100.0


@dataclass(frozen=True)
class Anchors:
    size: int  # model input side
    strides: tuple[int, ...]
    interpolated: bool  # one extra anchor per layer (interpolated_scale_aspect_ratio = 1)


ANCHORS = {192: Anchors(192, (4,), False), 128: Anchors(128, (8, 16, 16, 16), True)}


def anchor_centres(spec: Anchors) -> np.ndarray:
    """(N, 2) anchor centres (x, y) in [0, 1], in the models' output order (SsdAnchorsCalculator with
    fixed_anchor_size: consecutive layers of one stride share a grid, their anchors interleaved per cell)."""
    out = []
    i = 0
    while i < len(spec.strides):
        stride = spec.strides[i]
        per_cell = 0
        while i < len(spec.strides) and spec.strides[i] == stride:
            per_cell += 1 + int(spec.interpolated)  # aspect ratio 1.0 (+ the interpolated one)
            i += 1
        n = int(np.ceil(spec.size / stride))
        ys, xs = np.mgrid[0:n, 0:n]
        centres = np.stack([(xs + 0.5) / n, (ys + 0.5) / n], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


def content(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """Where an h x w frame lands in the letterboxed square: (x0, y0, width, height) in its pixels
    (an odd padding puts the extra row or column at the bottom or right)."""
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return (size - nw) // 2, (size - nh) // 2, nw, nh


def letterbox(bgr: np.ndarray, size: int, out: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """The model input (1, size, size, 3): RGB float32 in [-1, 1], the frame scaled to fit (linear)
    and centred on a zero border; and the padding (x, y) as a fraction of the square on each side.
    ``out`` (a previous result) is reused when the frame size is unchanged."""
    x0, y0, nw, nh = content(bgr.shape[0], bgr.shape[1], size)
    if out is None or out.shape != (1, size, size, 3):
        out = np.zeros((1, size, size, 3), np.float32)
    else:
        out[:] = 0.0
    small = cv2.cvtColor(cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    np.multiply(small, 1.0 / 127.5, out=out[0, y0 : y0 + nh, x0 : x0 + nw], dtype=np.float32, casting="unsafe")
    out[0, y0 : y0 + nh, x0 : x0 + nw] -= 1.0
    return out, x0 / size, y0 / size


def decode(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, size: int, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (K, 4) as xmin, ymin, xmax, ymax; keypoints (K, 6, 2); scores (K,)) in [0, 1] of the
    square input, for the anchors scoring at least ``min_score``."""
    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(scores >= min_score)
    r = raw_boxes.reshape(len(anchors), -1)[keep] / float(size)
    a = anchors[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    w, h = r[:, 2], r[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
    return boxes, kps, scores[keep]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9))


def weighted_nms(
    boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's WEIGHTED non-maximum suppression: the best remaining detection and every other one
    overlapping it by more than ``iou`` become one, boxes and keypoints averaged by score."""
    order = np.argsort(-scores, kind="stable")
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    out = []
    remaining = np.arange(len(scores))
    while remaining.size:
        top = remaining[0]
        overlap = _iou(boxes[top], boxes[remaining]) > iou
        overlap[0] = True
        group = remaining[overlap]
        weights = scores[group][:, None]
        total = float(weights.sum())
        out.append(
            (
                (boxes[group] * weights).sum(axis=0) / total,
                (kps[group] * weights[:, :, None]).sum(axis=0) / total,
                float(scores[top]),
            )
        )
        remaining = remaining[~overlap]
    return out


class BlazeFaceBackend:
    """The detector backend on LiteRT: same interface as :class:`detector.faces.FaceBackend`."""

    def __init__(self, model: str, min_confidence: float, max_faces: int, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        path = model_path(model)
        self.model, self.max_faces, self.excess, self.min_confidence = path.name, max_faces, 0, min_confidence
        try:
            self._it = Interpreter(model_path=str(path), num_threads=threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"cannot load detector model {path}: {e}") from None
        inp = self._it.get_input_details()[0]
        self.size = int(inp["shape"][1])
        if tuple(inp["shape"]) != (1, self.size, self.size, 3) or self.size not in ANCHORS:
            raise BackendError(f"{path}: not a BlazeFace model (input {list(inp['shape'])})")
        self._input = inp["index"]
        outs = {int(o["shape"][-1]): o["index"] for o in self._it.get_output_details()}
        if set(outs) != {16, 1}:
            raise BackendError(f"{path}: not a BlazeFace model (outputs {sorted(outs)})")
        self._boxes, self._scores = outs[16], outs[1]
        self.anchors = anchor_centres(ANCHORS[self.size])
        self._buffer: np.ndarray | None = None
        n = int(self._it.get_output_details()[0]["shape"][1])
        if len(self.anchors) != n:
            raise BackendError(f"{path}: {n} outputs for {len(self.anchors)} anchors")

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Faces in a uint8 BGR frame, left to right. Raises ValueError on a bad frame."""
        if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3 or 0 in bgr.shape:
            raise ValueError(f"expected uint8 H x W x 3, got {bgr.dtype} {bgr.shape}")
        h, w = bgr.shape[:2]
        self._buffer, _, _ = letterbox(bgr, self.size, self._buffer)
        self._it.set_tensor(self._input, self._buffer)
        self._it.invoke()
        boxes, kps, scores = decode(
            self._it.get_tensor(self._boxes),
            self._it.get_tensor(self._scores),
            self.anchors,
            self.size,
            self.min_confidence,
        )
        faces = []
        cx, cy, nw, nh = content(h, w, self.size)  # square [0, 1] -> frame pixels
        px, py = cx / self.size, cy / self.size
        sx, sy = w * self.size / nw, h * self.size / nh
        for box, kp, score in weighted_nms(boxes, kps, scores):
            x0, y0 = (box[0] - px) * sx, (box[1] - py) * sy
            bw, bh = (box[2] - box[0]) * sx, (box[3] - box[1]) * sy
            points = [(float((x - px) * sx), float((y - py) * sy)) for x, y in kp]
            faces.append(Face((float(x0), float(y0), float(bw), float(bh)), score, points))
        kept, excess = limit_faces(faces, self.max_faces)
        self.excess += excess
        return kept

    def close(self) -> None:
        pass

    def __enter__(self) -> BlazeFaceBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
