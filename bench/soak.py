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
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = ROOT / "../shared/data/media/videos/asl_signer_concat10.mp4"
STAGES = ("classifier", "display", "detector", "capture")  # start order: sinks first
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident memory now (VmRSS) in MiB, or None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def growth(first: float | None, last: float | None) -> float | None:
    """Percent change from ``first`` to ``last`` (None when either is missing)."""
    if first is None or last is None or first == 0:
        return None
    return round(100.0 * (last - first) / first, 2)


def config_text(video: Path, fps: float, ports: dict[str, int]) -> str:
    return f"""
[bus]
stats_interval_s = 60.0
[capture]
sources = [{{ id = "soak", uri = {json.dumps(str(video))}, loop = true, realtime = true, fps = {fps} }}]
eof_linger_s = 0.0
[detector]
endpoints = ["tcp://127.0.0.1:{ports["detector"]}"]
[classifier]
endpoints = ["tcp://127.0.0.1:{ports["classifier"]}"]
model = {json.dumps(str(ROOT / "models" / "fer2013_emonet.tflite"))}
[display]
endpoint = "tcp://127.0.0.1:{ports["display"]}"
web = "127.0.0.1:{ports["web"]}"
exit_at_end = false
"""


def listening(port: int) -> bool:
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 3 and cols[3] == "0A" and int(cols[1].rpartition(":")[2], 16) == port:
                return True
    return False


@dataclass
class Stage:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def last(self, text: str) -> str:
        """The last log line containing ``text`` ("" if none)."""
        lines = [x for x in self.log.read_text(errors="replace").splitlines() if text in x]
        return lines[-1] if lines else ""


def start(name: str, cfg: Path, workdir: Path) -> Stage:
    env = {k: v for k, v in os.environ.items() if k not in ("BUS_CONFIG", "SOURCE", "EVENTS", "WEB", "VIDEO")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", name, "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Stage(name, popen, log)


def stop_all(stages: list[Stage]) -> None:
    for s in reversed(stages):  # the source first
        if s.popen.poll() is None:
            s.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for s in stages:
        try:
            s.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.popen.kill()
            s.popen.wait(STOP_TIMEOUT_S)


def sample(stages: list[Stage], t0: float) -> dict[str, Any]:
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "stages": {s.name: {"rss_mb": rss_mb(s.popen.pid), "fds": fd_count(s.popen.pid)} for s in stages},
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
    ports = {k: free_port() for k in ("detector", "classifier", "display", "web")}
    cfg = workdir / "bus.toml"
    cfg.write_text(config_text(video, fps, ports))
    stages: list[Stage] = []
    died: list[str] = []
    samples: list[dict[str, Any]] = []
    try:
        for name in STAGES:
            stages.append(start(name, cfg, workdir))
            if name in ports:
                deadline = time.monotonic() + START_TIMEOUT_S
                while not listening(ports[name]):
                    if stages[-1].popen.poll() is not None or time.monotonic() > deadline:
                        raise click.ClickException(f"{name} did not come up:\n{stages[-1].log.read_text()[-2000:]}")
                    time.sleep(0.2)
        t0 = time.monotonic()
        stop.wait(5.0)  # the first frames through every stage
        samples.append(sample(stages, t0))
        click.echo(f"soak: started, logs in {workdir}", err=True)
        end = t0 + minutes * 60.0
        while not stop.is_set() and time.monotonic() < end:
            stop.wait(min(interval_s, max(0.0, end - time.monotonic())))
            samples.append(sample(stages, t0))
            click.echo(f"soak: t={samples[-1]['t_s']:.0f} s {samples[-1]['stages']}", err=True)
            died = [s.name for s in stages if s.popen.poll() is not None]
            if died:
                break
    finally:
        stop_all(stages)
    names = [s.name for s in stages]
    return {
        "video": str(video),
        "fps": fps,
        "minutes": minutes,
        "workdir": str(workdir),
        "died": died,
        "samples": samples,
        **summary(samples, names, warmup_s),
        "final_stats": {s.name: s.last("final stats") for s in stages},
        "display_final": [x for x in stages[1].log.read_text(errors="replace").splitlines() if "final soak" in x],
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
