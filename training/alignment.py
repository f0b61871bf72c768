"""Does rotating each crop so the eyes are level help? Measured, with and without ``[detector] align``.

- Videos (``stability``): every frame through the runtime's own detector backend, crop
  (``detector.worker.step``), int8 classifier (``classifier.worker.step``) and the display's tracker
  and smoother (``display.worker.follower``, ``[display]`` defaults); per track, the share of its frames
  that carry its dominant label, raw and smoothed, frame-weighted over tracks.
- Datasets (``upright``): FER2013 PrivateTest / CK+48 are 48x48 crops of upright faces. Each image is
  enlarged (x4, padded) so BlazeFace finds the eyes, and classified as it is and rotated by the measured
  eye angle: the accuracy must not change on upright faces.

No TensorFlow: LiteRT models only.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np

from bus.codec import Frame
from bus.config import DetectorConfig, DisplayConfig
from bus.preprocess import crop_face, eye_angle, thumbnail
from bus.sidecar import load_spec
from classifier.model import EmotionModel
from classifier.worker import step as classify_step
from detector.backend import open_backend
from detector.worker import step as detect_step
from display.worker import follower

log = logging.getLogger("training.alignment")
UPSCALE = 4  # 48 px -> 192 px: BlazeFace's full-range model finds these faces
PAD = 0.5  # border around the enlarged face (share of its side), so the detector sees a whole face


def _frames(video: Path) -> Any:
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ValueError(f"cannot open {video}")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def stability(video: Path, model: Path, align: bool) -> dict[str, Any]:
    spec = load_spec(model)
    emotions = EmotionModel(model)
    det = DetectorConfig()
    follow = follower(DisplayConfig())
    raw: dict[int, list[str]] = defaultdict(list)
    smooth: dict[int, list[str]] = defaultdict(list)
    frames = 0
    with open_backend(det.backend, det.model, det.min_confidence, det.max_faces) as backend:
        for seq, image in enumerate(_frames(video)):
            frames += 1
            msg = Frame(src="v", seq=seq, ts=0.0, pixels=image)
            out = classify_step(detect_step(msg, backend, spec, align), emotions)
            if out.kind != "frame":
                continue
            for face, t in zip(out.faces, follow.faces(seq, out.faces, out.labels, thumbnail(image)), strict=True):
                if t.track is None or face.label is None:
                    continue
                raw[t.track].append(face.label)
                smooth[t.track].append(t.smoothed_label or face.label)

    def share(per_track: dict[int, list[str]]) -> float:
        n = sum(len(v) for v in per_track.values())
        return sum(Counter(v).most_common(1)[0][1] for v in per_track.values()) / n if n else float("nan")

    return {
        "video": video.name,
        "align": align,
        "frames": frames,
        "tracks": len(raw),
        "faces": sum(len(v) for v in raw.values()),
        "dominant_share_raw": round(share(raw), 4),
        "dominant_share_smoothed": round(share(smooth), 4),
        "dominant": {tid: Counter(v).most_common(1)[0][0] for tid, v in smooth.items() if len(v) >= 10},
    }


def upright(images: np.ndarray, labels: np.ndarray, classes: list[str], model: Path) -> dict[str, Any]:
    """Accuracy on 48x48 grey faces as they are and rotated by their measured eye angle."""
    spec = load_spec(model)
    names = list(spec.labels)
    keep = np.array([c in names for c in np.array(classes)[labels]])
    images, y = images[keep], np.array([names.index(classes[i]) for i in labels[keep]])
    emotions = EmotionModel(model)
    det = DetectorConfig()
    angles = []
    with open_backend(det.backend, det.model, det.min_confidence, det.max_faces) as backend:
        for g in images:
            big = cv2.resize(g, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_LINEAR)
            p = int(big.shape[0] * PAD)
            bgr = cv2.cvtColor(cv2.copyMakeBorder(big, p, p, p, p, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2BGR)
            faces = backend.detect(bgr)
            angles.append(eye_angle(max(faces, key=lambda f: f.score).kp) if faces else 0.0)
    angles_ = np.array(angles)
    whole = (0.0, 0.0, 48.0, 48.0)
    plain = images[..., None]
    rotated = np.stack([crop_face(g, whole, spec.size, "grey", 0.0, a) for g, a in zip(images, angles_, strict=True)])
    acc = {}
    for name, x in (("as_is", plain), ("aligned", rotated)):
        probs = np.concatenate([emotions.classify(x[i : i + 256]) for i in range(0, len(x), 256)])
        acc[name] = round(float((probs.argmax(1) == y).mean()), 4)
    return {
        "images": len(y),
        "accuracy_as_is": acc["as_is"],
        "accuracy_aligned": acc["aligned"],
        "eyes_found": round(float((angles_ != 0).mean()), 4),
        "median_abs_angle_deg": round(float(np.median(np.abs(angles_[angles_ != 0]))), 2)
        if (angles_ != 0).any()
        else 0.0,
    }


def check(videos: list[Path], model: Path, fer: Path | None, ck: Path | None) -> dict[str, Any]:
    report: dict[str, Any] = {"model": str(model), "videos": [], "detector": msgspec.to_builtins(DetectorConfig())}
    for v in videos:
        for align in (False, True):
            row = stability(v, model, align)
            log.info(
                "%s align=%s: dominant share raw %.4f smoothed %.4f",
                v.name,
                align,
                row["dominant_share_raw"],
                row["dominant_share_smoothed"],
            )
            report["videos"].append(row)
    if fer is not None:
        from training.data.fer import load_fer

        test = load_fer(fer)["PrivateTest"]
        report["fer2013_privatetest"] = upright(test.images, test.labels, test.classes, model)
        log.info("FER2013 PrivateTest: %s", report["fer2013_privatetest"])
    if ck is not None:
        from training.data.ck import load_ck

        data = load_ck(ck)
        report["ck48"] = upright(data.images, data.labels, data.classes, model)
        log.info("CK+48: %s", report["ck48"])
    return report
