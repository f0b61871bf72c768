"""``python -m bench``: the speed of the real pipeline against the stages' cores run in one process.

Sections (``--only`` picks some; all by default):

- ``sequential``: decode -> detect + crop -> classify in this process, no bus (median of repeats);
- ``pipeline``: the real ``python -m <stage>`` processes on looped clips read as fast as the
  pipeline takes them; throughput and its ratio to the sequential reference, per-stage CPU ms per
  frame, peak RSS, drops (one-face clip and a three-face clip, both detector models);
- ``latency``: capture timestamp -> result at the sink, with the source paced at 30 fps;
- ``scaling``: 2 detectors, 2 detectors + 2 classifiers, 2 sources at once, ``ipc://``
  endpoints instead of loopback TCP, and the MediaPipe Tasks detector backend, against 1 x 1;
- ``classifier``: EmotionModel alone, ms per face at batch 1 and 8;
- ``hop``: CPU per message of one hop (encode, send, receive, decode), with and without the image,
  over loopback TCP and ipc://;
- ``stall``: the real display (writing events) SIGSTOPped for 2 s in a 30 fps run: every stage's
  memory before/during/after, and how soon after SIGCONT latency is back under 25 ms;
- ``profile``: py-spy on the detector and classifier for ``--profile-s`` seconds, where time goes;
- ``hosts``: the real pipeline over network namespaces (1, 2 and 3 "hosts"), CURVE off and on, one
  path against two (:mod:`bench.hosts`; skipped, saying why, without root and ``ip``).

Prints Markdown tables, then ONE JSON object as the last line of stdout (``--json-out`` also writes
it to a file). Progress goes to stderr. Every process it starts is stopped and reaped, also on
SIGTERM/SIGINT. Exit 0 when every run worked, 1 when a run failed (its row says why), 2 when the
clips are missing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import click
import zmq

from bench.pipeline import Setup
from bench.procs import BenchError
from bench.report import tables
from bus.paths import research_data
from emostream.launch import LaunchError

DEFAULT_DATA = research_data() / "media"
ONE_FACE = "asl_signer_concat10.mp4"
CROWD = "face-demographics-walking-and-pause.gif"
MODELS = ("full_range", "short_range")
SECTIONS = ("sequential", "pipeline", "latency", "stall", "scaling", "classifier", "hop", "profile", "hosts")
LATENCY_FPS = 30.0
ONE_FACE_FRAMES = 648  # asl_signer_concat10.mp4

log = logging.getLogger("bench")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def _fail(message: str) -> NoReturn:
    click.echo(f"bench: {message}", err=True)
    sys.exit(2)


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every ``with Launcher`` block stops its stages."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


class Runner:
    """Runs the pipeline setups, each in its own log folder; a failed run becomes an error row."""

    def __init__(self, logs: Path):
        self.logs, self.errors, self.count = logs, 0, 0

    def pipeline(self, setup: Setup) -> dict[str, Any]:
        from bench.pipeline import run

        self.count += 1
        workdir = self.logs / f"{self.count:02d}-{setup.name.replace('/', '-').replace(' ', '_')}"
        workdir.mkdir(parents=True, exist_ok=True)
        log.info("pipeline run %r: %d frames (logs in %s)", setup.name, setup.frames, workdir)
        try:
            row = run(setup, workdir)
        except (BenchError, LaunchError, OSError, zmq.ZMQError) as e:
            self.errors += 1
            log.error("run %r failed: %s", setup.name, e)
            return {"name": setup.name, "error": str(e)[-2000:]}
        log.info("  %s: %.1f fps, latency p50 %s ms", setup.name, row["fps"], row["latency_ms"]["p50"])
        return row

    def guarded(self, what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return fn()
        except (BenchError, OSError, RuntimeError, ValueError) as e:
            self.errors += 1
            log.error("%s failed: %s", what, e)
            return {"name": what, "error": str(e)[-2000:]}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 2)


def measure(
    sections: tuple[str, ...],
    clips: dict[str, Path],
    models: tuple[str, ...],
    frames: int,
    latency_frames: int,
    repeats: int,
    profile_s: float,
    classifier_calls: int,
    hop_messages: int,
    runner: Runner,
) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(SECTIONS)
    refs: dict[tuple[str, str], dict[str, Any]] = {}
    if "sequential" in sections:
        from bench.sequential import reference

        out["sequential"] = []
        for key, clip in clips.items():
            for model in models:
                log.info("sequential reference %s/%s: %d frames x %d", key, model, frames, repeats)
                row = runner.guarded(f"sequential {key}/{model}", partial(reference, clip, model, frames, repeats))
                row["name"] = f"{key}/{model}"
                refs[(key, model)] = row
                out["sequential"].append(row)
    base: dict[str, Any] | None = None
    if "pipeline" in sections:
        out["pipeline"] = []
        for key, clip in clips.items():
            for model in models:
                row = runner.pipeline(Setup(f"{key}/{model}", (clip,), frames, model=model))
                row["ratio_to_sequential"] = ratio(row.get("fps"), refs.get((key, model), {}).get("fps"))
                out["pipeline"].append(row)
                if (key, model) == ("one_face", models[0]):
                    base = row
    one = clips["one_face"]
    if "latency" in sections:
        out["latency"] = runner.pipeline(
            Setup(
                f"one_face/{models[0]} paced {LATENCY_FPS:.0f} fps", (one,), latency_frames, models[0], fps=LATENCY_FPS
            )
        )
    if "stall" in sections:
        from bench.stall import run as stall

        runner.count += 1
        workdir = runner.logs / f"{runner.count:02d}-stall"
        workdir.mkdir(parents=True, exist_ok=True)
        log.info("stall: display SIGSTOPped for 2 s at 30 fps (logs in %s)", workdir)
        out["stall"] = runner.guarded("stall", partial(stall, one, models[0], workdir))
    if "scaling" in sections:
        if base is None or "error" in base:
            base = runner.pipeline(Setup(f"one_face/{models[0]}", (one,), frames, models[0]))
        rows = [
            base,
            runner.pipeline(Setup(f"one_face/{models[0]} 2 det", (one,), frames, models[0], detectors=2)),
            runner.pipeline(
                Setup(f"one_face/{models[0]} 2 det 2 cls", (one,), frames, models[0], detectors=2, classifiers=2)
            ),
            runner.pipeline(Setup(f"one_face/{models[0]} 2 sources", (one, one), frames, models[0])),
            runner.pipeline(Setup(f"one_face/{models[0]} ipc://", (one,), frames, models[0], transport="ipc")),
            runner.pipeline(
                Setup(f"one_face/{models[0]} mediapipe backend", (one,), frames, models[0], backend="mediapipe")
            ),
        ]
        for row in rows:
            row["ratio_to_1x1"] = ratio(row.get("fps"), base.get("fps"))
        out["scaling"] = rows
    if "classifier" in sections:
        from bench.sequential import classifier_alone

        log.info("classifier alone: batch 1 and 8, %d calls each", classifier_calls)
        out["classifier"] = runner.guarded("classifier", lambda: classifier_alone((1, 8), classifier_calls))
    if "hop" in sections:
        from bench.hop import hops

        log.info("one hop: %d messages per payload and transport", hop_messages)
        out["hop"] = runner.guarded("hop", lambda: {"rows": hops(hop_messages)})
    if "profile" in sections and profile_s > 0:
        out["profile"] = runner.pipeline(
            Setup(f"one_face/{models[0]} profiled", (one,), 200, models[0], profile_s=profile_s)
        )
    if "hosts" in sections:
        from bench.hosts import run as hosts

        runner.count += 1
        workdir = runner.logs / f"{runner.count:02d}-hosts"
        log.info("across hosts: network namespaces (logs in %s)", workdir)
        out["hosts"] = runner.guarded("hosts", partial(hosts, one, ONE_FACE_FRAMES, workdir))
    return out


@click.command()
@click.option(
    "--frames", type=click.IntRange(20), default=3000, show_default=True, help="Frames per run (at the sink)."
)
@click.option("--quick", is_flag=True, help="A smoke run: 60 frames, one clip and model, 1 repeat.")
@click.option("--only", "only", multiple=True, type=click.Choice(SECTIONS), help="Run only these sections.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the JSON.")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="The shared media folder (videos/).",
)
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Sequential reference repeats.")
@click.option(
    "--latency-frames", type=click.IntRange(20), default=900, show_default=True, help="Frames paced at 30 fps."
)
@click.option("--profile-s", type=click.FloatRange(0), default=10.0, show_default=True, help="py-spy seconds (0: off).")
@click.option("--logs", type=click.Path(file_okay=False, path_type=Path), default=None, help="Keep stage logs here.")
@click.option("--note", default="", help="Free text stored with the figures (e.g. what else loads the machine).")
def main(
    frames: int,
    quick: bool,
    only: tuple[str, ...],
    json_out: Path | None,
    data: Path,
    repeats: int,
    latency_frames: int,
    profile_s: float,
    logs: Path | None,
    note: str,
) -> None:
    """Measure the real multiprocess pipeline against the sequential reference; last line is JSON."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s bench %(message)s")
    videos = data / "videos"
    clips = {"one_face": videos / ONE_FACE, "three_faces": videos / CROWD}
    missing = [str(p) for p in clips.values() if not p.is_file()]
    if missing:
        _fail(f"clips not found: {', '.join(missing)} (--data)")
    models: tuple[str, ...] = MODELS
    calls = 200
    if quick:
        frames, latency_frames, repeats, calls, models = 60, 60, 1, 20, MODELS[:1]
        clips = {"one_face": clips["one_face"]}
    sections = only or SECTIONS
    if "profile" in sections and profile_s > 0 and _pyspy_missing():
        if only:
            _fail("py-spy is not installed (pip install py-spy), or pass --profile-s 0")
        log.warning("py-spy is not installed (pip install py-spy): the profile section is skipped")
        sections = tuple(s for s in sections if s != "profile")
    _stop_on_sigterm()
    started = dt.datetime.now(dt.UTC)
    load0 = loadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            runner = Runner(logs or Path(tmp))
            results = measure(
                sections, clips, models, frames, latency_frames, repeats, profile_s, calls, calls * 10, runner
            )
    except KeyboardInterrupt:
        click.echo("bench: interrupted; every stage process was stopped", err=True)
        sys.exit(130)
    res: dict[str, Any] = {
        "bench": "pipeline",
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "machine": machine(),
        "loadavg_start_end": [load0, loadavg()],
        "note": note,
        "frames": frames,
        **results,
    }
    click.echo(tables(res))
    line = json.dumps(res, separators=(",", ":"))
    if json_out is not None:
        json_out.write_text(line + "\n")
    click.echo(line)
    sys.exit(1 if runner.errors else 0)


def _pyspy_missing() -> bool:
    from bench.profile import pyspy

    return pyspy() is None


if __name__ == "__main__":
    main()
