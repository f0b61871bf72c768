"""Stall: the real display (the sink a user sees, writing events) is stopped with SIGSTOP for
``stall_s`` seconds in a run paced at 30 fps, then resumed.

Measured from the display's events file and ``/proc``: every stage's resident memory before the
stall (median of the last 2 s), its peak from the stall to 2 s after it, and at the end; the
capture -> display latency before the stall (p50/p99) and, after SIGCONT, how long until no event
is later than the bar (``recovery_s``: the time of the last late event after the resume, 0 when
none was late), and p50/p99 from 1 s after the resume on.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import figures
from bench.pipeline import START_TIMEOUT_S, Setup, config, endpoints
from bench.procs import BenchError, rss_mb
from emostream.launch import Launcher, write_config

BAR_MS = 25.0  # the p99 latency bar


def events(path: Path) -> list[tuple[float, float]]:
    """(time the display wrote it, latency ms) per event line (pure apart from reading the file)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
            out.append((float(e["ts"]) + float(e["latency_ms"]) / 1000.0, float(e["latency_ms"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def analyse(
    evs: list[tuple[float, float]],
    samples: list[tuple[float, dict[str, float | None]]],
    t_stop: float,
    t_resume: float,
    bar_ms: float = BAR_MS,
) -> dict[str, Any]:
    """The figures of a stall run (pure)."""
    before = [lat for t, lat in evs if t_stop - 4.0 <= t < t_stop]
    after = [(t, lat) for t, lat in evs if t >= t_resume]
    late = [t for t, lat in after if lat > bar_ms]
    settled = [lat for t, lat in after if t >= t_resume + 1.0]
    memory: dict[str, dict[str, float | None]] = {}
    names = sorted({n for _, rss in samples for n in rss})
    for name in names:

        def values(lo: float, hi: float, name: str = name) -> list[float]:
            return [v for t, rss in samples if lo <= t < hi and (v := rss.get(name)) is not None]

        base = values(t_stop - 2.0, t_stop)
        peak = values(t_stop, t_resume + 2.0)
        end = values(samples[-1][0] - 2.0, samples[-1][0] + 1.0) if samples else []
        b = sorted(base)[len(base) // 2] if base else None
        memory[name] = {
            "before_mb": b,
            "peak_mb": max(peak) if peak else None,
            "end_mb": sorted(end)[len(end) // 2] if end else None,
            "growth_mb": None if b is None or not peak else round(max(peak) - b, 1),
        }
    return {
        "bar_ms": bar_ms,
        "before_ms": figures.percentiles(before, (50, 99)),
        "after_max_ms": max((lat for _, lat in after), default=None),
        "recovery_s": round(max(late) - t_resume, 3) if late else 0.0,
        "late_after_resume": len(late),
        "settled_ms": figures.percentiles(settled, (50, 99)),
        "events": {"before": len(before), "after": len(after)},
        "memory": memory,
    }


def run(clip: Path, model: str, workdir: Path, stall_s: float = 2.0, fps: float = 30.0) -> dict[str, Any]:
    setup = Setup(f"stall {stall_s:.0f} s", (clip,), 0, model=model, fps=fps)
    sockdir = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    eps = endpoints(setup, sockdir)
    cfg = config(setup, eps)
    events_path = workdir / "events.jsonl"
    cfg["display"].update(events=str(events_path), stall_warn_s=0.0)
    cfg_path = write_config(workdir / "bus.toml", cfg)
    samples: list[tuple[float, dict[str, float | None]]] = []
    done = threading.Event()
    try:
        with Launcher(workdir) as procs:
            display = procs.start("display", config=cfg_path)
            procs.start("classifier", config=cfg_path)
            procs.start("detector", config=cfg_path)
            procs.wait_bound(eps["display"] + eps["classifier"] + eps["detector"], START_TIMEOUT_S)
            time.sleep(0.5)
            procs.start("capture", config=cfg_path)

            def sample() -> None:
                while not done.wait(0.1):
                    samples.append((time.time(), {p.name: rss_mb(p.pid) for p in procs.procs}))

            deadline = time.monotonic() + START_TIMEOUT_S
            while not (events_path.is_file() and len(events_path.read_text().splitlines()) >= 2 * fps):
                procs.check()
                if time.monotonic() > deadline:
                    raise BenchError("the display wrote no events")
                time.sleep(0.2)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            time.sleep(6.0)
            procs.check()
            t_stop = time.time()
            display.send_signal(signal.SIGSTOP)
            try:
                time.sleep(stall_s)
            finally:
                display.send_signal(signal.SIGCONT)
            t_resume = time.time()
            time.sleep(6.0)
            procs.check()
            done.set()
            sampler.join(2)
            procs.stop()
            final = {p.name: figures.final_stats(p.tail(20000)) for p in procs.procs}
    finally:
        done.set()
        shutil.rmtree(sockdir, ignore_errors=True)
    out = analyse(events(events_path), samples, t_stop, t_resume)
    out.update(name=setup.name, model=model, fps=fps, stall_s=stall_s, final_stats=final)
    return out
