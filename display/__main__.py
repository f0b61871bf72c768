"""``python -m display``: the display stage, or ``--image X.jpg --faces F.json --out Y.jpg`` to draw.

Stage: binds a PULL socket on ``[display] endpoint`` and feeds the sinks ``[display]`` turns on;
with ``exit_at_end`` it exits 0 once every file source has ended and been accounted for.
Drawing mode: draws the faces of a JSON file (the output of ``python -m detector --image``,
``python -m classifier --image``, or an events line) onto an image, writes it and exits.
The offline analysis of a video (``python -m analyze``) uses this package as a library.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import click
import cv2
import msgspec

from bus.cli import config_option, fail
from bus.codec import Face, error_text
from bus.config import Config, ConfigError, load
from bus.runtime import Stats, install_stop, setup_logging, single_threaded_opencv
from bus.sockets import StageSockets
from display.draw import annotate
from display.sinks import open_sinks
from display.worker import run


def _objects(text: str) -> list[Any]:
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]  # JSON lines


def _face(d: dict[str, Any], labels: list[str], whole: tuple[float, float, float, float]) -> tuple[Face, list[str]]:
    """A face object as the events record and the ``--image`` commands write it (probs named, or a
    list in ``labels`` order), read back through :class:`bus.codec.Face` and its limits."""
    probs, names = d.get("probs"), labels
    if isinstance(probs, dict):
        names, probs = [str(k) for k in probs], list(probs.values())
    fields = {k: d[k] for k in ("box", "score", "kp", "label", "uncertain") if d.get(k) is not None}
    fields.setdefault("box", list(whole))  # the classifier's --image output for a crop: the whole image is the face
    fields.setdefault("score", 1.0)
    if probs is not None:
        fields["probs"] = probs
    try:
        return msgspec.convert(fields, Face), names
    except msgspec.ValidationError as e:
        raise ValueError(f"face {error_text(e)}") from None


def load_faces(path: str, image_path: str, shape: tuple[int, ...]) -> tuple[list[Face], list[str]]:
    """Faces (and label order) from a JSON/JSON-lines file; entries naming another image are skipped."""
    whole = (0.0, 0.0, float(shape[1]), float(shape[0]))
    objs = _objects(Path(path).read_text(encoding="utf-8"))

    def names_image(o: Any) -> bool:  # classifier lines say "image", detector lines "src"
        ref = o.get("image", o.get("src")) if isinstance(o, dict) else None
        return isinstance(ref, str) and Path(ref).name == Path(image_path).name

    if any(names_image(o) for o in objs):
        objs = [o for o in objs if names_image(o)]
    faces: list[Face] = []
    labels: list[str] = []
    for o in objs:
        if not isinstance(o, dict):
            raise ValueError(f"expected JSON objects, got {type(o).__name__}")
        group = o["faces"] if isinstance(o.get("faces"), list) else [o]
        own = [str(x) for x in o.get("labels", [])] if isinstance(o.get("labels"), list) else []
        for d in group:
            face, names = _face(d, own, whole)
            faces.append(face)
            labels = names or labels
    return faces, labels


def draw_file(image: str, faces_path: str, out: str) -> int:
    img = cv2.imread(image, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {image}")
    faces, labels = load_faces(faces_path, image, img.shape)
    if not cv2.imwrite(out, annotate(img, faces, labels)):
        raise ValueError(f"cannot write {out}")
    return len(faces)


def serve(cfg: Config, plumbing: StageSockets) -> None:
    log = setup_logging("display")
    single_threaded_opencv()
    stop = threading.Event()
    install_stop(stop)
    try:  # before the bind: once the display's endpoint answers, its web page does too
        sinks = open_sinks(cfg, stop, log, plumbing.security)
    except OSError as e:
        fail("display", f"cannot start a sink: {e}")
    bound = False
    try:
        with plumbing as socks:
            bound = True
            assert socks.pull is not None
            log.info("pulling on %s; sinks: %s", socks.bind, ", ".join(s.name for s in sinks) or "none")
            run(cfg, socks.pull, sinks, stop, Stats(log, cfg.bus.stats_interval_s), log)  # closes the sinks
    finally:
        if not bound:  # the bind failed (one line, exit 2): run() never had them to close
            for s in sinks:
                s.close()


@click.command()
@config_option
@click.option("--image", type=click.Path(dir_okay=False), help="Draw onto this image (no sockets).")
@click.option(
    "--faces",
    "faces_path",
    type=click.Path(dir_okay=False),
    help="JSON faces to draw (detector/classifier --image output).",
)
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the drawn image.")
def main(config_path: str | None, image: str | None, faces_path: str | None, out: str | None) -> None:
    """Show classified frames (window, web page, video, events file) and account for every frame."""
    if image or faces_path or out:
        if not (image and faces_path and out):
            fail("display", "--image, --faces and --out go together")
        try:
            n = draw_file(image, faces_path, out)
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail("display", str(e))
        click.echo(f"drew {n} face(s) into {out}")
        return
    try:
        cfg = load(config_path)
    except ConfigError as e:
        fail("display", str(e))
    serve(cfg, StageSockets("display", cfg))


if __name__ == "__main__":
    main()
