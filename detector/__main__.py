"""``python -m detector``: find faces in frames from capture; push crops to the classifier, frames to the display.

With ``--image`` or ``--video`` it runs alone (no sockets) and prints one JSON line per frame:
``{"src", "seq", "faces": [...]}``, each face as the events record has it
(:meth:`bus.codec.Face.to_json`; ``label`` null, ``probs`` {} before the classifier). Start-up failures print one line and exit 2;
SIGTERM/SIGINT stop it within ~1 s.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import cv2
import msgspec
import numpy as np

from bus import sockets
from bus.cli import config_option, fail, instance_option
from bus.config import Config, ConfigError, display_pixels, load
from bus.preprocess import to_uint8_bgr
from bus.runtime import Stats, install_stop, setup_logging, single_threaded_opencv
from bus.sidecar import SidecarError, load_spec


def _image_frames(path: str) -> Iterator[np.ndarray]:
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        fail("detector", f"cannot read image {path}")
    try:
        yield to_uint8_bgr(raw)
    except ValueError as e:
        fail("detector", f"{path}: {e}")


def _video_frames(path: str, stop: threading.Event) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        fail("detector", f"cannot open video {path}")
    try:
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def standalone(cfg: Config, path: str, is_video: bool, stop: threading.Event) -> None:
    """Detect faces in one image or video and print one JSON line per frame."""
    from detector.backend import open_backend
    from detector.faces import BackendError

    if not Path(path).is_file():
        fail("detector", f"no such file: {path}")
    frames = _video_frames(path, stop) if is_video else _image_frames(path)
    first = next(frames, None)  # fail on an unreadable file before loading the model
    if first is None:
        fail("detector", f"no frames could be read from {path}")
    try:
        backend = open_backend(
            cfg.detector.backend, cfg.detector.model, cfg.detector.min_confidence, cfg.detector.max_faces
        )
    except BackendError as e:
        fail("detector", str(e))
    with backend:
        for seq, frame in enumerate(itertools.chain([first], frames)):
            faces = [f.to_json() for f in backend.detect(frame)]
            print(json.dumps({"src": path, "seq": seq, "faces": faces}), flush=True)


@click.command()
@config_option
@instance_option("detector")
@click.option("--image", type=str, help="Run alone on one image: print its faces as JSON and exit.")
@click.option("--video", type=str, help="Run alone on a video: one JSON line per frame, then exit.")
@click.option("--model", type=click.Choice(["full_range", "short_range"]), help="Override [detector] model.")
def main(config_path: str | None, instance: int, image: str | None, video: str | None, model: str | None) -> None:
    """Detect faces (MediaPipe's BlazeFace models) in frames from capture; push frames, faces and crops on."""
    stop = threading.Event()
    install_stop(stop)
    try:
        cfg = load(config_path)
    except ConfigError as e:
        fail("detector", str(e))
    if model is not None:
        cfg = msgspec.structs.replace(cfg, detector=msgspec.structs.replace(cfg.detector, model=model))
    if image is not None or video is not None:
        if image is not None and video is not None:
            fail("detector", "give --image or --video, not both")
        standalone(cfg, image or video or "", video is not None, stop)
        return
    plumbing = sockets.StageSockets("detector", cfg, instance)  # a bad --instance or key: exit 2 here
    log = setup_logging(f"detector[{instance}]")
    single_threaded_opencv()
    from detector.backend import open_backend
    from detector.faces import BackendError
    from detector.worker import run

    try:
        spec = load_spec(cfg.classifier.model)
        backend = open_backend(
            cfg.detector.backend, cfg.detector.model, cfg.detector.min_confidence, cfg.detector.max_faces
        )
    except (SidecarError, BackendError, ConfigError) as e:
        fail("detector", str(e))
    with backend, plumbing as socks:
        assert socks.pull is not None
        log.info(
            "%s on %s -> %s%s (crops %dx%d %s; %s backend)",
            backend.model,
            socks.bind,
            ", ".join(socks.targets),
            f", frames{'' if display_pixels(cfg) else ' without pixels'} -> {cfg.display.endpoint}"
            if socks.side is not None
            else "",
            spec.size,
            spec.size,
            spec.colour,
            cfg.detector.backend,
        )
        stats = Stats(log, cfg.bus.stats_interval_s)
        run(cfg, socks.pull, socks.push[0], backend, stop, stats, spec, socks.side)


if __name__ == "__main__":
    main()
