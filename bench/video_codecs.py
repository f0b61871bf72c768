"""``python -m bench.video_codecs [VIDEO]``: which browser-playable codecs this OpenCV encodes, and how
fast (frames per second, one thread, the first 60 frames of VIDEO; default the 640x480 ASL clip).
What :func:`display.sinks.choose_codec` picks from is printed last."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bus.paths import research_data
from display.sinks import FALLBACK, PLAYABLE, choose_codec

DEFAULT = research_data() / "media/videos/asl_signer_concat10.mp4"
FRAMES = 60


def main(video: str = str(DEFAULT)) -> None:
    cv2.setNumThreads(1)
    cap = cv2.VideoCapture(video)
    frames: list[np.ndarray] = []
    while len(frames) < FRAMES and (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    if not frames:
        sys.exit(f"cannot read {video}")
    h, w = frames[0].shape[:2]
    print(f"{len(frames)} frames of {w}x{h} from {video}; opencv {cv2.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for fourcc, ext in (*PLAYABLE, FALLBACK):
            path = str(Path(tmp) / f"t-{fourcc}{ext}")
            writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*fourcc), 30.0, (w, h))
            if not writer.isOpened():
                print(f"{fourcc:5} {ext:5}  cannot encode here")
                continue
            t0 = time.perf_counter()
            for f in frames:
                writer.write(f)
            writer.release()
            fps = len(frames) / (time.perf_counter() - t0)
            print(
                f"{fourcc:5} {ext:5}  {fps:7.1f} fps  {Path(path).stat().st_size / len(frames) / 1024:6.1f} KiB/frame"
            )
    print("chosen for .mp4:", choose_codec(".mp4"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
