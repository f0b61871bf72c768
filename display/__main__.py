"""``python -m display``: the display stage, ``--image X.jpg --faces F.json --out Y.jpg`` to draw, or
``analyze VIDEO`` to run the whole pipeline on a video and write reports.

Stage: binds a PULL socket on ``[display] endpoint`` and feeds the sinks ``[display]`` turns on;
with ``exit_at_end`` it exits 0 once every file source has ended and been accounted for.
Drawing mode: draws the faces of a JSON file (the output of ``python -m detector --image``,
``python -m classifier --image``, or an events line) onto an image, writes it and exits.
Analysis: see :mod:`display.analyze` (frames/tracks tables, timeline plot, annotated video).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import click
import cv2

from bus.cli import config_option, fail
from bus.codec import Face
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
    probs, names = d.get("probs"), labels
    if isinstance(probs, dict):
        names, probs = [str(k) for k in probs], [float(v) for v in probs.values()]
    box = d.get("box", whole)  # the classifier's --image output: the whole image is the face
    if not (isinstance(box, list | tuple) and len(box) == 4):
        raise ValueError(f"face box must be [x, y, w, h], got {box!r}")
    x, y, w, h = (float(v) for v in box)
    label = d.get("label")
    face = Face(
        (x, y, w, h),
        float(d.get("score", 1.0)),
        [(float(kx), float(ky)) for kx, ky in d.get("kp", [])],
        label if isinstance(label, str) else None,
        None if probs is None else [float(p) for p in probs],
    )
    return face, names


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


@click.group(invoke_without_command=True)
@config_option
@click.option("--image", type=click.Path(dir_okay=False), default=None, help="Draw onto this image (no sockets).")
@click.option(
    "--faces",
    "faces_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON faces to draw (detector/classifier --image output).",
)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Where to write the drawn image.")
@click.pass_context
def main(
    ctx: click.Context, config_path: str | None, image: str | None, faces_path: str | None, out: str | None
) -> None:
    """Show classified frames (window, web page, video, events file) and account for every frame.

    With a command: `analyze VIDEO` runs the pipeline on a video and writes reports."""
    if ctx.invoked_subcommand is not None:
        if image or faces_path or out:
            fail("display", f"--image/--faces/--out do not go with {ctx.invoked_subcommand}")
        return
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


@main.command("analyze")
@click.argument("video", type=str)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the reports (default: <video name>-analysis in the current folder).",
)
@click.option("--video", "annotated", is_flag=True, help="Also write the annotated video (annotated.mp4).")
@config_option
@click.option("--no-plot", is_flag=True, help="Skip timeline.png (needs matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def analyze_command(
    ctx: click.Context,
    video: str,
    out_dir: str | None,
    annotated: bool,
    config_path: str | None,
    no_plot: bool,
    quiet: bool,
) -> None:
    """Run capture, detector and classifier on VIDEO (no live view) and write per-frame and per-track
    tables (CSV, JSON), an emotion timeline per track and, with --video, the annotated video."""
    from display.analyze import AnalyzeError, analyze, stop_on_signals

    config_path = config_path or (ctx.parent.params.get("config_path") if ctx.parent else None)
    out = Path(out_dir) if out_dir else Path(f"{Path(video).stem}-analysis")
    log = setup_logging("analyze", logging.WARNING)
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            result = analyze(video, out, config_path, annotated, not no_plot, not quiet, stop, log)
    except AnalyzeError as e:
        click.echo(f"display analyze: {e}", err=True)
        sys.exit(e.code)
    s = result.summary
    click.echo(f"reports in {out}: {', '.join(result.paths)}")
    drops = " ".join(f"{k}={v}" for k, v in sorted(s["dropped"].items())) or "0"
    click.echo(f"frames read {s['frames_read']}, analysed {s['frames_analysed']}, dropped {drops}, lost {s['lost']}")
    click.echo(
        f"{len(s['tracks'])} track(s), {len(s['scene_cuts'])} scene cut(s), {s['suspected_switches']} suspected id switch(es)"
    )
    for t in s["tracks"]:
        share = t.get(f"share_{t['dominant']}", 0.0)
        click.echo(
            f"  #{t['track']}: frames {t['first_frame']}-{t['last_frame']} ({t['frames']}), "
            f"{t['dominant']} {100 * share:.0f}% of them; label changes raw {t['label_changes']}, "
            f"smoothed {t['smoothed_label_changes']}"
        )


if __name__ == "__main__":
    main()
