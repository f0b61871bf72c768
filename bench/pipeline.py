"""One run of the real multiprocess pipeline, with the bench as its sink.

Writes a temporary bus.toml (free loopback ports, looped file sources), starts the same processes
honcho starts (``python -m classifier``, ``python -m detector``, ``python -m capture``; extra
``--instance N`` copies when scaling) and binds a PULL socket on the display endpoint itself: it
decodes every message as the display does but draws, encodes and writes nothing, so the figures are
those of capture -> detector -> classifier, the same work the sequential reference does.

With two paths (``[detector] two_paths``, the default) the sink joins a frame and its classifier
result by source and seq, as the display does (docs/pipeline.md#two-paths): a frame counts, with its
latency, when its second half arrives. The run's ``[display]`` draws nothing and shares memory with the
detector (one host), so the frames come as shared-memory references, as to a real display on the
detector's host (:func:`bus.config.display_pixels`). The sources loop, so the run stops when ``frames`` frames
(results and drop markers) have reached the sink; the first :func:`bench.figures.warmup` of them are left out of every figure. At the cut and
at the end it reads each stage's CPU time, and before stopping its peak memory. Stages are stopped
with SIGTERM, so each writes its ``final stats`` line (frames, drops by reason) to its log.
"""

from __future__ import annotations

import collections
import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq

from bench import figures
from bench.procs import BenchError, cpu_seconds, peak_rss_mb
from bus import sockets
from bus.codec import CodecError, Drop, DropReason, Message, decode
from bus.paths import shipped_root
from bus.shm import Rings
from emostream.launch import Launcher, endpoint, write_config

log = logging.getLogger("bench")

CLASSIFIER_MODEL = "models/fer2013_emonet.tflite"
START_TIMEOUT_S = 180.0  # model loading under a heavily loaded machine
STALL_TIMEOUT_S = 30.0  # no message at the sink for this long: the run has failed
POLL_MS = 200
HWM = 4  # bus.toml's default


@dataclass(frozen=True)
class Setup:
    name: str
    clips: tuple[Path, ...]  # one looped source per clip
    frames: int  # stop after this many frames at the sink (all sources)
    model: str = "full_range"
    detectors: int = 1
    classifiers: int = 1
    fps: float = 0.0  # > 0: sources paced at this rate (realtime); 0: as fast as the pipeline takes them
    profile_s: float = 0.0  # > 0: py-spy the first detector and classifier this long after the warm-up
    transport: str = "tcp"  # "tcp" (loopback, as bus.toml ships) or "ipc" (Unix domain sockets)
    backend: str = "litert"  # [detector] backend


def endpoints(setup: Setup, sockdir: Path) -> dict[str, list[str]]:
    """Fresh endpoints for every bound socket: free loopback ports, or socket files in ``sockdir``."""
    counts = {"detector": setup.detectors, "classifier": setup.classifiers, "display": 1}
    return {role: [endpoint(setup.transport, sockdir, f"{role}{i}") for i in range(n)] for role, n in counts.items()}


def config(setup: Setup, eps: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """The bus.toml of a run (pure): ``eps`` has "detector", "classifier" and "display" endpoint lists."""
    sources = []
    for i, clip in enumerate(setup.clips):
        src: dict[str, Any] = {"id": f"s{i}", "uri": str(clip), "loop": True, "realtime": setup.fps > 0}
        if setup.fps > 0:
            src["fps"] = float(setup.fps)
        sources.append(src)
    return {
        "bus": {"hwm": HWM, "send_timeout_ms": 1000, "max_age_ms": 500, "stats_interval_s": 3600.0},
        "capture": {"sources": sources, "eof_linger_s": 0.0},
        "detector": {
            "endpoints": eps["detector"],
            "model": setup.model,
            "backend": setup.backend,
            "min_confidence": 0.6,
            "max_faces": 32,
        },
        "classifier": {
            "endpoints": eps["classifier"],
            "model": str(shipped_root() / CLASSIFIER_MODEL),  # a config's relative paths are relative to it
            "threads": 1,
        },
        "display": {"endpoint": eps["display"][0], "web": "", "exit_at_end": False},
    }


HOPS = ("capture->detector", "detector->classifier", "classifier->sink")


@dataclass
class Tally:
    """What reached the sink after the warm-up cut."""

    results: int = 0
    faces: int = 0
    latency: list[float] = field(default_factory=list)
    hops: dict[str, list[float]] = field(default_factory=lambda: {h: [] for h in HOPS})
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    per_source: collections.Counter[str] = field(default_factory=collections.Counter)


def _hops(t: dict[str, float], now: float) -> dict[str, float]:
    out = {}
    if "capture" in t and "detector" in t:
        out["capture->detector"] = (t["detector"] - t["capture"]) * 1000.0
    if "detector" in t and "classifier" in t:
        out["detector->classifier"] = (t["classifier"] - t["detector"]) * 1000.0
    if "classifier" in t:
        out["classifier->sink"] = (now - t["classifier"]) * 1000.0
    return out


def joined(halves: dict[tuple[str, int], Message], msg: Message) -> Message | None:
    """Two paths at the sink: a frame marked ``wait`` or a ``result`` half waits in ``halves`` for
    the other (None); when both are in, the frame as the display shows it (a drop when the result
    was one). Any other message is returned as it is."""
    if not (msg.kind == "frame" and msg.wait) and not (msg.kind != "eos" and msg.result):
        return msg
    other = halves.pop((msg.src, msg.seq), None)
    if other is None:
        halves[(msg.src, msg.seq)] = msg
        return None
    frame, res = (other, msg) if msg.result else (msg, other)
    t = {**frame.t, **res.t}
    if res.kind == "drop" or frame.kind != "frame":
        return Drop(msg.src, msg.seq, msg.ts, res.reason if res.kind == "drop" else DropReason.UNKNOWN, t=t)
    faces = res.faces if res.kind == "frame" else frame.faces
    return replace(frame, faces=faces, t=t, wait=False)


def _cpu(procs: Launcher) -> dict[str, float | None]:
    return {p.name: cpu_seconds(p.pid) for p in procs.procs}


def _start_profiles(procs: Launcher, workdir: Path, seconds: float) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    from bench.profile import start

    out = []
    for stage in ("detector", "classifier"):
        p = next(p for p in procs.procs if p.stage == stage)
        path = workdir / f"pyspy-{stage}.txt"
        out.append((stage, start(p.pid, seconds, path), path))
    return out


def run(setup: Setup, workdir: Path) -> dict[str, Any]:
    """Start the pipeline, sink ``setup.frames`` frames, stop it; the figures of the run."""
    sockdir = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))  # short: a socket path has <= 107 bytes
    eps = endpoints(setup, sockdir)
    cfg_path = write_config(workdir / "bus.toml", config(setup, eps))
    ctx = zmq.Context()
    sink = sockets.pull(ctx, eps["display"][0], HWM)
    profiles: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        with Launcher(workdir) as procs:
            for i in range(setup.classifiers):
                procs.start("classifier", "--instance", str(i), config=cfg_path, instance=i)
            for i in range(setup.detectors):
                procs.start("detector", "--instance", str(i), config=cfg_path, instance=i)
            procs.wait_bound(eps["classifier"] + eps["detector"], START_TIMEOUT_S)
            time.sleep(0.5)  # let the detectors' PUSH sockets finish connecting to the classifiers
            procs.start("capture", config=cfg_path)
            result = _sink(setup, sink, procs, workdir, profiles)
            result["peak_rss_mb"] = {p.name: peak_rss_mb(p.pid) for p in procs.procs}
            procs.stop()
            result["final_stats"] = {p.name: figures.final_stats(p.tail(20000)) for p in procs.procs}
            result["stages_order"] = [p.name for p in procs.procs]
    finally:
        sink.close(linger=0)
        ctx.term()
        shutil.rmtree(sockdir, ignore_errors=True)
        for _, prof, _ in profiles:
            if prof.poll() is None:
                prof.terminate()
                prof.wait(5)
    summary = _summary(setup, result)
    if profiles:
        from bench.profile import summarise

        summary["profile"] = {
            stage: summarise(path.read_text()) if path.is_file() else None for stage, _, path in profiles
        }
    return summary


def _sink(
    setup: Setup,
    sink: zmq.Socket,
    procs: Launcher,
    workdir: Path,
    profiles: list[tuple[str, subprocess.Popen[bytes], Path]],
) -> dict[str, Any]:
    """Receive until ``setup.frames`` frames have arrived (and any profiler has finished: the sink
    keeps draining so the profiled stages keep working); figures cover the frames after the cut."""
    warm = figures.warmup(setup.frames)
    tally = Tally()
    rings = Rings()
    halves: dict[tuple[str, int], Message] = {}
    seen = 0
    t_warm = t_end = 0.0
    cpu_warm: dict[str, float | None] = {}
    cpu_end: dict[str, float | None] = {}
    own_warm = own = 0.0
    last = time.monotonic()
    while seen < setup.frames or any(p.poll() is None for _, p, _ in profiles):
        parts = sockets.recv(sink, POLL_MS)
        now_m = time.monotonic()
        if parts is None:
            procs.check()
            limit = START_TIMEOUT_S if seen == 0 else STALL_TIMEOUT_S
            if now_m - last > limit:
                raise BenchError(f"nothing reached the sink for {limit:.0f} s after {seen} frames")
            continue
        now, last = time.time(), now_m
        try:
            msg = decode(parts)
        except CodecError as e:
            raise BenchError(f"the sink got an undecodable message: {e}") from None
        if msg.shm is not None:  # the journey ends here, as in the display
            rings.release(msg.shm)
        got = joined(halves, msg)
        if got is None or got.kind == "eos" or seen >= setup.frames:
            continue
        msg = got
        seen += 1
        if seen == warm:
            t_warm, cpu_warm, own_warm = now_m, _cpu(procs), time.process_time()
            if setup.profile_s > 0:
                profiles.extend(_start_profiles(procs, workdir, setup.profile_s))
        elif seen > warm:
            tally.per_source[msg.src] += 1
            if msg.kind == "drop":
                tally.drops[msg.reason or "?"] += 1
            else:
                tally.results += 1
                tally.faces += len(msg.faces)
                tally.latency.append((now - msg.ts) * 1000.0)
                for hop, ms in _hops(msg.t, now).items():
                    tally.hops[hop].append(ms)
        if seen == setup.frames:
            t_end, cpu_end, own = now_m, _cpu(procs), time.process_time() - own_warm
    window = seen - warm
    cpu_ms: dict[str, float | None] = {}
    for name, end in cpu_end.items():
        start = cpu_warm.get(name)
        cpu_ms[name] = None if end is None or start is None else (end - start) * 1000.0 / max(1, window)
    cpu_ms["sink"] = own * 1000.0 / max(1, window)
    return {"tally": tally, "window": window, "seconds": t_end - t_warm, "cpu_ms": cpu_ms, "frames": seen}


def _by_stage(values: dict[str, float | None], order: list[str]) -> dict[str, float | None]:
    """Per process -> per stage (copies summed): "detector[0]", "detector[1]" -> "detector"."""
    out: dict[str, float | None] = {}
    for name in order + [n for n in values if n not in order]:
        stage = name.partition("[")[0]
        v = values.get(name)
        if stage in out:
            prev = out[stage]
            out[stage] = None if prev is None or v is None else prev + v
        else:
            out[stage] = v
    return out


def _summary(setup: Setup, r: dict[str, Any]) -> dict[str, Any]:
    tally: Tally = r["tally"]
    seconds = max(1e-9, r["seconds"])
    order = r["stages_order"]
    cpu = _by_stage(r["cpu_ms"], order)
    rss = r["peak_rss_mb"]
    stages: dict[str, dict[str, Any]] = {}
    for stage in ("capture", "detector", "classifier", "sink"):
        names = [n for n in order if n.partition("[")[0] == stage]
        stages[stage] = {
            "processes": len(names) if names else 1,
            "cpu_ms_per_frame": None if cpu.get(stage) is None else round(float(cpu[stage] or 0.0), 2),
            "peak_rss_mb": [None if rss.get(n) is None else round(float(rss[n]), 1) for n in names] or None,
            "final_stats": {n: r["final_stats"].get(n) for n in names} or None,
        }
    total = [cpu.get(s) for s in ("capture", "detector", "classifier")]
    return {
        "name": setup.name,
        "clips": [c.name for c in setup.clips],
        "model": setup.model,
        "detectors": setup.detectors,
        "classifiers": setup.classifiers,
        "sources": len(setup.clips),
        "transport": setup.transport,
        "paced_fps": setup.fps or None,
        "frames": r["frames"],
        "window_frames": r["window"],
        "window_s": round(seconds, 2),
        "fps": round(tally.results / seconds, 1),
        "per_source_fps": {k: round(v / seconds, 1) for k, v in sorted(tally.per_source.items())},
        "faces_per_frame": round(tally.faces / max(1, tally.results), 2),
        "latency_ms": figures.percentiles(tally.latency),
        "hops_p50_ms": {k: figures.percentiles(v, (50,))["p50"] for k, v in tally.hops.items()},
        "drops_at_sink": dict(tally.drops),
        "cpu_ms_per_frame_total": None if None in total else round(sum(float(t or 0.0) for t in total), 2),
        "stages": stages,
    }
