"""``python -m classifier``: the classifier stage, or ``--image FACE.png ...`` to classify face images.

Stage: binds a PULL socket on ``[classifier] endpoints[--instance]``, connects a PUSH socket to
``[display] endpoint``. Image mode: each image is one face crop; prints one JSON line per image,
``{"image", "label", "probs": {label: p}}``, and exits.
"""

from __future__ import annotations

import json
import threading
from typing import NoReturn

import click
import cv2
import numpy as np
import zmq

from bus.cli import config_option, fail, instance_option
from bus.config import Config, ConfigError, load
from bus.preprocess import to_model_pixels
from bus.runtime import Stats, install_stop, setup_logging, single_threaded_opencv
from bus.sockets import Context, Security, pull, push
from bus.sockets import security as stage_security
from classifier.model import EmotionModel, ModelError
from classifier.worker import run


def _fail(msg: str) -> NoReturn:
    fail("classifier", msg)


def classify_images(model: EmotionModel, paths: tuple[str, ...]) -> list[dict[str, object]]:
    """Each image file -> one face crop (``to_model_pixels``) -> a result; all in one batch."""
    crops = []
    for p in paths:
        img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot read image {p}")
        crops.append(to_model_pixels(img, model.size, model.spec.colour))  # type: ignore[arg-type]
    probs = model.classify(np.stack(crops))
    return [
        {
            "image": p,
            "label": model.labels[int(np.argmax(row))],
            "probs": {lab: round(float(v), 6) for lab, v in zip(model.labels, row, strict=True)},
        }
        for p, row in zip(paths, probs, strict=True)
    ]


def serve(cfg: Config, instance: int, model: EmotionModel, security: Security | None = None) -> None:
    log = setup_logging("classifier")
    single_threaded_opencv()
    log.info("loaded %s", model.info)
    stop = threading.Event()
    install_stop(stop)
    ctx = Context()
    try:
        endpoint = cfg.classifier.endpoints[instance]
        try:
            in_sock = pull(ctx, endpoint, cfg.bus.hwm, security)
        except zmq.ZMQError as e:
            _fail(f"cannot bind {endpoint}: {e}")
        out_sock = push(ctx, [cfg.display.endpoint], cfg.bus.hwm, cfg.bus.send_timeout_ms, security)
        log.info("instance %d: pulling on %s, pushing to %s", instance, endpoint, cfg.display.endpoint)
        try:
            run(cfg, in_sock, out_sock, model, stop, Stats(log, cfg.bus.stats_interval_s), log)
        finally:
            in_sock.close(linger=0)
            out_sock.close()
    finally:
        ctx.term()


@click.command()
@config_option
@instance_option("classifier")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A .tflite model (with its .json sidecar) instead of [classifier] model.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Classify this face image (one crop) and print JSON; repeatable. No sockets.",
)
def main(config_path: str | None, instance: int, model_path: str | None, images: tuple[str, ...]) -> None:
    """Classify the emotion of every detected face (int8 TFLite, one batch per frame)."""
    try:
        cfg = load(config_path)
        if not 0 <= instance < len(cfg.classifier.endpoints):
            raise ConfigError(
                f"--instance {instance}: [classifier] endpoints has {len(cfg.classifier.endpoints)} entries"
            )
        security = None if images else stage_security(cfg.bus, "classifier", peer="display")
        model = EmotionModel(model_path or cfg.classifier.model, threads=cfg.classifier.threads)
    except (ConfigError, ModelError) as e:
        _fail(str(e))
    if images:
        try:
            results = classify_images(model, images)
        except ValueError as e:
            _fail(str(e))
        for r in results:
            click.echo(json.dumps(r))
        return
    serve(cfg, instance, model, security)


if __name__ == "__main__":
    main()
