"""Which face detector model by default? ``python -m bench.detector_models [--data DIR]``.

Runs both BlazeFace models at confidence 0.5 and 0.6 over the shared media and prints a Markdown
table: on one-face videos the share of frames with exactly one / no / several faces; on a video
with three people the frames where all three are found; on a video without faces the frames with any face; face
counts on still images with known answers; and the median milliseconds per frame (detector call
only, this machine). Reads ``/work/shared/data/media`` (or ``--data``); never copies it.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from bus.paths import research_data
from bus.preprocess import to_uint8_bgr
from detector.backend import BACKENDS, open_backend

DEFAULT_DATA = research_data() / "media"
MODELS = ("full_range", "short_range")
CONFIDENCES = (0.5, 0.6)
ONE_FACE_VIDEOS = ("asl_signer_concat10.mp4", "asl_book.mkv")
CROWD_VIDEO = "face-demographics-walking-and-pause.gif"
CROWD_FACES = 3  # three people face the camera in every frame (checked by eye)
NO_FACE_VIDEO = "bottle-detection.mp4"
EXPECTED_FACES = {"astronaut.png": 1, "biden.jpg": 1, "obama.jpg": 1, "two_people.jpg": 2}


def frames(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def still(path: Path) -> Iterator[np.ndarray]:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise click.ClickException(f"cannot read {path}")
    yield to_uint8_bgr(raw)


def counts(backend: Any, images: Iterator[np.ndarray], times: list[float]) -> list[int]:
    out = []
    for img in images:
        t0 = time.perf_counter()
        n = len(backend.detect(img))
        times.append((time.perf_counter() - t0) * 1000.0)
        out.append(n)
    return out


def pct(flags: list[bool]) -> str:
    return f"{100.0 * sum(flags) / max(1, len(flags)):.1f}%"


def measure(media: Path, model: str, conf: float, backend_name: str = "litert") -> dict[str, str]:
    times: list[float] = []
    row: dict[str, str] = {"model": f"{model} ({backend_name})", "conf": f"{conf:.1f}"}
    with open_backend(backend_name, model, conf, 256) as backend:
        for name in ONE_FACE_VIDEOS:
            n = counts(backend, frames(media / "videos" / name), times)
            row[f"{name}: =1 / 0 / >=2 ({len(n)} frames)"] = " / ".join(
                pct([c == k for c in n]) if k < 2 else pct([c >= 2 for c in n]) for k in (1, 0, 2)
            )
        n = counts(backend, frames(media / "videos" / CROWD_VIDEO), times)
        row[f"{CROWD_VIDEO}: frames with all {CROWD_FACES} faces, faces/frame mean (max)"] = (
            f"{pct([c == CROWD_FACES for c in n])}, {np.mean(n):.2f} ({max(n)})"
        )
        n = counts(backend, frames(media / "videos" / NO_FACE_VIDEO), times)
        row[f"{NO_FACE_VIDEO}: frames with any face ({len(n)} frames)"] = (
            f"{sum(c > 0 for c in n)} ({pct([c > 0 for c in n])})"
        )
        found = {p.name: counts(backend, still(p), [])[0] for p in sorted((media / "images" / "faces").iterdir())}
        row["faces/*: counts (expected " + ",".join(str(EXPECTED_FACES.get(k, "?")) for k in found) + ")"] = ",".join(
            str(v) for v in found.values()
        )
        nofaces = [counts(backend, still(p), [])[0] for p in sorted((media / "images" / "no_faces").iterdir())]
        row[f"no_faces/*: images with a face (of {len(nofaces)})"] = str(sum(c > 0 for c in nofaces))
        row["ms/frame (median, videos)"] = f"{statistics.median(times):.1f}"
    return row


@click.command()
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="The shared media folder (videos/, images/faces/, images/no_faces/).",
)
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS), help="Backends (default: both).")
@click.option("--conf", "confs", multiple=True, type=float, help="Confidences (default: 0.5 and 0.6).")
def main(data: Path, backends: tuple[str, ...], confs: tuple[float, ...]) -> None:
    """Print the detector-model comparison table (Markdown, one column per model, backend and confidence)."""
    if not (data / "videos").is_dir():
        click.echo(f"bench.detector_models: shared media not found at {data}", err=True)
        sys.exit(2)
    rows = [measure(data, m, c, b) for m in MODELS for b in backends or BACKENDS for c in confs or CONFIDENCES]
    click.echo("| measure | " + " | ".join(f"{r['model']} @ {r['conf']}" for r in rows) + " |")
    click.echo("|---|" + "---|" * len(rows))
    for key in list(rows[0])[2:]:
        click.echo(f"| {key} | " + " | ".join(r[key] for r in rows) + " |")


if __name__ == "__main__":
    main()
