"""``python -m detector``: find faces in frames from capture and push frames + crops to the classifier.

With ``--image`` or ``--video`` it runs alone (no sockets) and prints one JSON line per frame:
``{"src", "seq", "faces": [{"box", "score", "kp"}]}``. Start-up failures print one line and exit 2;
SIGTERM/SIGINT stop it within ~1 s.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn

import click
import cv2
import numpy as np
import zmq

from bus import sockets
from bus.cli import config_option, fail, instance_option
from bus.config import Config, ConfigError, load
from bus.preprocess import to_uint8_bgr
from bus.runtime import Stats, install_stop, setup_logging, single_threaded_opencv
from bus.sidecar import SidecarError, load_spec


def _fail(message: str) -> NoReturn:
    fail("detector", message)


def _image_frames(path: str) -> Iterator[np.ndarray]:
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if raw is None:
        _fail(f"cannot read image {path}")
    try:
        yield to_uint8_bgr(raw)
    except ValueError as e:
        _fail(f"{path}: {e}")


def _video_frames(path: str, stop: threading.Event) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        _fail(f"cannot open video {path}")
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
        _fail(f"no such file: {path}")
    frames = _video_frames(path, stop) if is_video else _image_frames(path)
    first = next(frames, None)  # fail on an unreadable file before loading the model
    if first is None:
        _fail(f"no frames could be read from {path}")
    try:
        backend = open_backend(
            cfg.detector.backend, cfg.detector.model, cfg.detector.min_confidence, cfg.detector.max_faces
        )
    except BackendError as e:
        _fail(str(e))
    with backend:
        for seq, frame in enumerate(itertools.chain([first], frames)):
            faces = [f.to_wire() for f in backend.detect(frame)]
            print(json.dumps({"src": path, "seq": seq, "faces": faces}), flush=True)


@click.command()
@config_option
@instance_option("detector")
@click.option("--image", type=str, default=None, help="Run alone on one image: print its faces as JSON and exit.")
@click.option("--video", type=str, default=None, help="Run alone on a video: one JSON line per frame, then exit.")
@click.option(
    "--model", type=click.Choice(["full_range", "short_range"]), default=None, help="Override [detector] model."
)
def main(config_path: str | None, instance: int, image: str | None, video: str | None, model: str | None) -> None:
    """Detect faces (MediaPipe's BlazeFace models) in frames from capture; push frames, faces and crops on."""
    stop = threading.Event()
    install_stop(stop)
    try:
        cfg = load(config_path)
    except ConfigError as e:
        _fail(str(e))
    if model is not None:
        cfg = dataclasses.replace(cfg, detector=dataclasses.replace(cfg.detector, model=model))
    if image is not None or video is not None:
        if image is not None and video is not None:
            _fail("give --image or --video, not both")
        standalone(cfg, image or video or "", video is not None, stop)
        return
    if not 0 <= instance < len(cfg.detector.endpoints):
        _fail(f"--instance {instance}: [detector] endpoints has {len(cfg.detector.endpoints)} entries")
    log = setup_logging(f"detector[{instance}]")
    single_threaded_opencv()
    from detector.backend import open_backend
    from detector.faces import BackendError
    from detector.worker import run

    try:
        spec = load_spec(cfg.classifier.model)
        security = sockets.security(cfg.bus, "detector", peer="classifier")
        backend = open_backend(
            cfg.detector.backend, cfg.detector.model, cfg.detector.min_confidence, cfg.detector.max_faces
        )
    except (SidecarError, BackendError, ConfigError) as e:
        _fail(str(e))
    endpoint = cfg.detector.endpoints[instance]
    with ExitStack() as stack:
        stack.enter_context(backend)
        ctx = sockets.Context()
        stack.callback(ctx.term)
        try:
            in_sock = sockets.pull(ctx, endpoint, cfg.bus.hwm, security)
        except zmq.ZMQError as e:
            _fail(f"cannot bind {endpoint}: {e}")
        stack.callback(in_sock.close, 0)
        out_sock = sockets.push(ctx, cfg.classifier.endpoints, cfg.bus.hwm, cfg.bus.send_timeout_ms, security)
        stack.callback(out_sock.close)
        log.info(
            "%s on %s -> %s (crops %dx%d %s; %s backend)",
            backend.model,
            endpoint,
            ", ".join(cfg.classifier.endpoints),
            spec.size,
            spec.size,
            spec.colour,
            cfg.detector.backend,
        )
        run(cfg, in_sock, out_sock, backend, stop, Stats(log, cfg.bus.stats_interval_s), spec)


if __name__ == "__main__":
    main()
