"""``python -m bench.soak``: run the whole pipeline for a long time and watch it for leaks.

Starts the real ``python -m classifier``, ``display`` (web page on, nobody viewing), ``detector`` and
``capture`` processes on a temporary bus.toml (free loopback ports, one looped video paced at
``--fps``), then samples every stage's resident memory (``VmRSS`` in ``/proc/<pid>/status``) and open
file descriptors (entries of ``/proc/<pid>/fd``) at the start, every ``--interval-s`` seconds and at
the end. Memory grows while models and buffers warm up, so growth is reported twice: from the first
sample, and from the sample ``--warmup-s`` seconds in to the end (the figure to judge a leak by).

Prints a Markdown table (one row per sample, one column pair per stage), the growth per stage, each
stage's final stats line, and ONE JSON object as the last line of stdout (``--json-out`` also writes
it). Every process it starts is stopped (SIGTERM, then SIGKILL after 5 s) and reaped, also when the
soak itself gets SIGTERM/SIGINT. Exit 0 when every stage stayed up, 1 when one died, 2 on bad input.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from bench.procs import fd_count, rss_mb
from emostream.launch import ROOT, Launcher, LaunchError, Proc, endpoint, free_port, write_config

DEFAULT_VIDEO = ROOT / "../shared/data/media/videos/asl_signer_concat10.mp4"
STAGES = ("classifier", "display", "detector", "capture")  # start order: sinks first
START_TIMEOUT_S = 180.0


def growth(first: float | None, last: float | None) -> float | None:
    """Percent change from ``first`` to ``last`` (None when either is missing)."""
    if first is None or last is None or first == 0:
        return None
    return round(100.0 * (last - first) / first, 2)


def config(video: Path, fps: float, eps: dict[str, str], web: int) -> dict[str, dict[str, Any]]:
    return {
        "bus": {"stats_interval_s": 60.0},
        "capture": {
            "sources": [{"id": "soak", "uri": str(video), "loop": True, "realtime": True, "fps": fps}],
            "eof_linger_s": 0.0,
        },
        "detector": {"endpoints": [eps["detector"]]},
        "classifier": {"endpoints": [eps["classifier"]], "model": str(ROOT / "models" / "fer2013_emonet.tflite")},
        "display": {"endpoint": eps["display"], "web": f"127.0.0.1:{web}", "exit_at_end": False},
    }


def last(proc: Proc, text: str) -> str:
    """The last line of ``proc``'s log containing ``text`` ("" if none)."""
    lines = [x for x in proc.text().splitlines() if text in x]
    return lines[-1] if lines else ""


def sample(stages: list[Proc], t0: float) -> dict[str, Any]:
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "stages": {s.stage: {"rss_mb": rss_mb(s.pid), "fds": fd_count(s.pid)} for s in stages},
    }


def summary(samples: list[dict[str, Any]], names: list[str], warmup_s: float) -> dict[str, Any]:
    """Growth per stage from the first sample and from the first sample at or after ``warmup_s``."""
    first, last = samples[0], samples[-1]
    warm = next((s for s in samples if s["t_s"] >= warmup_s), last)
    out: dict[str, Any] = {}
    for n in names:
        a, w, z = first["stages"][n], warm["stages"][n], last["stages"][n]
        out[n] = {
            "rss_mb_start": a["rss_mb"],
            "rss_mb_warm": w["rss_mb"],
            "rss_mb_end": z["rss_mb"],
            "rss_growth_pct": growth(a["rss_mb"], z["rss_mb"]),
            "rss_growth_after_warmup_pct": growth(w["rss_mb"], z["rss_mb"]),
            "fds_start": a["fds"],
            "fds_warm": w["fds"],
            "fds_end": z["fds"],
            "fds_max": max((s["stages"][n]["fds"] or 0) for s in samples),
        }
    return {"warm_sample_t_s": warm["t_s"], "per_stage": out}


def table(samples: list[dict[str, Any]], names: list[str]) -> str:
    head = "| t (s) | " + " | ".join(f"{n} RSS MiB | {n} fds" for n in names) + " |"
    rule = "|---" * (1 + 2 * len(names)) + "|"
    rows = []
    for s in samples:
        cells = []
        for n in names:
            st = s["stages"][n]
            cells.append("-" if st["rss_mb"] is None else f"{st['rss_mb']:.1f}")
            cells.append("-" if st["fds"] is None else str(st["fds"]))
        rows.append(f"| {s['t_s']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows])


def growth_table(per_stage: dict[str, Any]) -> str:
    lines = [
        "| stage | RSS start | RSS after warm-up | RSS end | growth | growth after warm-up | fds start / warm / end / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, g in per_stage.items():
        lines.append(
            f"| {n} | {g['rss_mb_start']} | {g['rss_mb_warm']} | {g['rss_mb_end']} | {g['rss_growth_pct']} % "
            f"| {g['rss_growth_after_warmup_pct']} % | {g['fds_start']} / {g['fds_warm']} / {g['fds_end']} / {g['fds_max']} |"
        )
    return "\n".join(lines)


def soak(video: Path, minutes: float, fps: float, interval_s: float, warmup_s: float, stop: threading.Event) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    eps = {k: endpoint() for k in ("detector", "classifier", "display")}
    cfg = write_config(workdir / "bus.toml", config(video, fps, eps, free_port()))
    died: list[str] = []
    samples: list[dict[str, Any]] = []
    with Launcher(workdir) as run:
        for name in STAGES:
            run.start(name, config=cfg)
            if name in eps:
                try:
                    run.wait_bound([eps[name]], START_TIMEOUT_S)
                except LaunchError as e:
                    raise click.ClickException(f"{name} did not come up: {e}") from None
        stages = run.procs
        t0 = time.monotonic()
        stop.wait(5.0)  # the first frames through every stage
        samples.append(sample(stages, t0))
        click.echo(f"soak: started, logs in {workdir}", err=True)
        end = t0 + minutes * 60.0
        while not stop.is_set() and time.monotonic() < end:
            stop.wait(min(interval_s, max(0.0, end - time.monotonic())))
            samples.append(sample(stages, t0))
            click.echo(f"soak: t={samples[-1]['t_s']:.0f} s {samples[-1]['stages']}", err=True)
            died = [s.stage for s in stages if s.poll() is not None]
            if died:
                break
    names = [s.stage for s in stages]
    return {
        "video": str(video),
        "fps": fps,
        "minutes": minutes,
        "workdir": str(workdir),
        "died": died,
        "samples": samples,
        **summary(samples, names, warmup_s),
        "final_stats": {s.stage: last(s, "final stats") for s in stages},
        "display_final": [x for x in stages[1].text().splitlines() if "final soak" in x],
    }


@click.command()
@click.option("--minutes", type=float, default=10.0, show_default=True, help="How long to run.")
@click.option("--fps", type=float, default=30.0, show_default=True, help="Source pace (frames per second).")
@click.option("--video", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_VIDEO, help="Looped clip.")
@click.option("--interval-s", type=float, default=60.0, show_default=True, help="Seconds between samples.")
@click.option("--warmup-s", type=float, default=60.0, show_default=True, help="Growth is also measured from here.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the JSON.")
def main(minutes: float, fps: float, video: Path, interval_s: float, warmup_s: float, json_out: Path | None) -> None:
    """Run the pipeline on a looped video for MINUTES; sample memory and fds of every stage."""
    if not video.is_file():
        click.echo(f"soak: no such video: {video}", err=True)
        sys.exit(2)
    if minutes <= 0 or fps <= 0 or interval_s <= 0:
        click.echo("soak: --minutes, --fps and --interval-s must be > 0", err=True)
        sys.exit(2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    result = soak(video.resolve(), minutes, fps, interval_s, warmup_s, stop)
    names = list(result["per_stage"])
    click.echo(table(result["samples"], names))
    click.echo()
    click.echo(f"growth (after warm-up: from the sample at t={result['warm_sample_t_s']:.0f} s)")
    click.echo(growth_table(result["per_stage"]))
    click.echo()
    for name, line in result["final_stats"].items():
        click.echo(f"{name}: {line.partition(' INFO ')[2] or line}")
    for line in result["display_final"]:
        click.echo(line.partition(" INFO ")[2] or line)
    text = json.dumps(result)
    if json_out is not None:
        json_out.write_text(text + "\n")
    click.echo(text)
    sys.exit(1 if result["died"] else 0)


if __name__ == "__main__":
    main()
