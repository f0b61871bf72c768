"""Across hosts: the real pipeline spread over network namespaces, one path against two.

Three namespaces (``h1``, ``h2``, ``h3``) joined by a bridge in a fourth (``hub``), so nothing is
added to this machine's own network; all deleted at the end. Placements: every stage in ``h1``
(loopback TCP: one host); capture + detector in ``h1``, classifier + display in ``h2`` (two hosts);
capture + detector in ``h1``, classifier in ``h2``, display in ``h3`` (three hosts). Each with
CURVE off and on, ``[detector] two_paths`` off and on, ``shm_slots = 0`` (pixels in the messages;
the same on one host so that only the placement differs). The first row is one host with the shipped
settings (pixels in shared memory, no CURVE, two paths), the reference every row's ``of_default``
(its fps over that row's) is measured against, in the same run. Then the settings for hosts
(docs/operations.md, "Placing stages on hosts"): 2 and 3 hosts, CURVE, two paths, shared memory
between capture and detector (``shm``: on their host; the display, drawing nothing, gets no pixels
and no shared-memory reference); and 2 hosts, CURVE, two paths, ``jpeg_quality = 85``, once with a
display that draws nothing (JPEG between capture and detector only) and once with one that draws
(``web``: its page on, nobody watching: the frames cross to the display as JPEG files).

The display of every row but the last draws nothing (events only), so on two paths its frames carry
a thumbnail instead of pixels (:func:`bus.config.display_pixels`), except in the first row (one host,
shared memory: references); ``display_got`` counts, from its
final log line, the frames it showed with pixels and with a thumbnail only.

Each run reads ``clip`` once, as fast as the pipeline takes it, through the real display writing
events: fps = frames after the warm-up / the time between their events, latency p50/p99 from the
events' ``latency_ms`` (capture -> display, queueing included). Needs root and ``ip``
(iproute2); otherwise :func:`run` returns ``{"skipped": why}``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import figures
from bench.procs import BenchError
from bus.keys import STAGES, generate
from bus.paths import shipped_root
from emostream.launch import child_env, stop_all, write_config

log = logging.getLogger("bench")

NET = "169.254.78"  # link-local, /24 on the bridge: h1 = .1, h2 = .2, h3 = .3
PLACEMENTS = {  # stage -> namespace index
    "1 host": {"capture": 1, "detector": 1, "classifier": 1, "display": 1},
    "2 hosts": {"capture": 1, "detector": 1, "classifier": 2, "display": 2},
    "3 hosts": {"capture": 1, "detector": 1, "classifier": 2, "display": 3},
}
PORTS = {"detector": 5601, "classifier": 5602, "display": 5603, "web": 5604}
RUN_TIMEOUT_S = 300.0
GOT = re.compile(r"final frames shown: with pixels (\d+), thumbnail only (\d+)")


@dataclass(frozen=True)
class Run:
    """One row: where the stages run and how the frames travel."""

    placement: str  # a PLACEMENTS key
    curve: bool
    two_paths: bool
    shm: bool = False  # pixels in shared memory between capture and detector
    jpeg: int = 0  # [bus] jpeg_quality
    web: bool = False  # the display draws: its web page on (nobody watching)
    label: str = ""  # the row's name when not the usual one

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        name = (
            f"{self.placement}, curve {'on' if self.curve else 'off'}, {'two paths' if self.two_paths else 'one path'}"
        )
        name += ", shared memory" if self.shm else ""
        name += f", jpeg_quality {self.jpeg}" if self.jpeg else ""
        return name + (", display draws (web page)" if self.web else "")


RUNS = [
    Run("1 host", False, True, shm=True, label="1 host, shared memory (shipped settings)"),
    *(Run(p, c, t) for p in PLACEMENTS for c in (False, True) for t in (False, True)),
    Run("2 hosts", True, True, shm=True),
    Run("3 hosts", True, True, shm=True),
    Run("2 hosts", True, True, jpeg=85),
    Run("2 hosts", True, True, jpeg=85, web=True),
]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@contextmanager
def namespaces(tag: str) -> Iterator[list[str] | str]:
    """``[h1, h2, h3]`` joined by a bridge in a hub namespace, or why they cannot be made (a str)."""
    if shutil.which("ip") is None:
        yield "`ip` (iproute2) is not installed"
        return
    names = [f"{tag}h{i}" for i in (1, 2, 3)]
    hub = f"{tag}hub"
    made: list[str] = []
    try:
        for ns in (hub, *names):
            r = _ip("netns", "add", ns)
            if r.returncode != 0:
                yield f"cannot create network namespaces here: {r.stderr.strip() or r.returncode}"
                return
            made.append(ns)
        steps: list[tuple[str, ...]] = [
            ("-n", hub, "link", "add", "br0", "type", "bridge"),
            ("-n", hub, "link", "set", "br0", "up"),
        ]
        for i, ns in enumerate(names, 1):
            steps += [
                ("-n", hub, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns),
                ("-n", hub, "link", "set", f"p{i}", "master", "br0"),
                ("-n", hub, "link", "set", f"p{i}", "up"),
                ("-n", ns, "addr", "add", f"{NET}.{i}/24", "dev", "eth0"),
                ("-n", ns, "link", "set", "eth0", "up"),
                ("-n", ns, "link", "set", "lo", "up"),
            ]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                yield f"cannot join the namespaces (ip {' '.join(step)}): {r.stderr.strip()}"
                return
        yield names
    finally:
        for ns in made:
            _ip("netns", "del", ns)


def config(run: Run, clip: Path, keys: Path, events: Path) -> dict:
    """The bus.toml of one row (pure)."""
    placement = PLACEMENTS[run.placement]

    def ep(stage: str) -> str:
        host = "127.0.0.1" if len(set(placement.values())) == 1 else f"{NET}.{placement[stage]}"
        return f"tcp://{host}:{PORTS[stage]}"

    return {
        "bus": {
            "allow_remote": True,
            "curve": run.curve,
            "keys_dir": str(keys),
            "shm_slots": 16 if run.shm else 0,
            "jpeg_quality": run.jpeg,
            "hwm": 4,
            "send_timeout_ms": 1000,
            "stats_interval_s": 3600.0,
        },
        "capture": {"sources": [{"id": "s0", "uri": str(clip), "realtime": False}], "eof_linger_s": 30.0},
        "detector": {"endpoints": [ep("detector")], "two_paths": run.two_paths},
        "classifier": {"endpoints": [ep("classifier")], "model": str(shipped_root() / "models/fer2013_emonet.tflite")},
        "display": {
            "endpoint": ep("display"),
            "web": f"127.0.0.1:{PORTS['web']}" if run.web else "",  # in the display's namespace
            "events": str(events),
            "drain_timeout_s": 3.0,
        },
    }


def figures_of(events: Path, expected: int) -> dict[str, Any]:
    """fps and latency from an events file (after the warm-up)."""
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    if len(recs) < expected:
        raise BenchError(f"{len(recs)} of {expected} frames in the events")
    done = sorted(r["ts"] + r["latency_ms"] / 1000.0 for r in recs)
    warm = figures.warmup(len(done))
    span = done[-1] - done[warm]
    lat = np.asarray([r["latency_ms"] for r in recs][warm:])
    return {
        "frames": len(recs),
        "fps": round((len(done) - 1 - warm) / span, 1) if span > 0 else None,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)},
        "no_emotions": sum("no_emotions" in r for r in recs),
    }


def one(ns: list[str], run: Run, clip: Path, frames: int, work: Path) -> dict:
    placement = PLACEMENTS[run.placement]
    work.mkdir(parents=True, exist_ok=True)
    keys, events = work / "keys", work / "events.jsonl"
    generate(keys, STAGES)
    cfg = write_config(work / "bus.toml", config(run, clip, keys, events))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for stage in ("display", "classifier", "detector", "capture"):
            with (work / f"{stage}.log").open("wb") as out:
                cmd = [
                    "ip",
                    "netns",
                    "exec",
                    ns[placement[stage] - 1],
                    sys.executable,
                    "-m",
                    stage,
                    "--config",
                    str(cfg),
                ]
                procs[stage] = subprocess.Popen(cmd, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = procs["display"].wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the display did not finish within {RUN_TIMEOUT_S:.0f} s") from None
        text = (work / "display.log").read_text(errors="replace")
        if rc != 0:
            raise BenchError(f"the display exited {rc}: {text[-1000:]}")
        got = GOT.findall(text)
        shown = {"pixels": int(got[-1][0]), "thumbnail": int(got[-1][1])} if got else None
        return {**figures_of(events, frames), "display_got": shown}
    finally:
        stop_all(list(procs.values()), 10.0)


def run(clip: Path, frames: int, workdir: Path) -> dict[str, Any]:
    """Every placement x CURVE x paths; ``{"skipped": why}`` without the privilege."""
    if os.geteuid() != 0:
        return {"skipped": "network namespaces need root"}
    rows = []
    with namespaces(f"eb{os.getpid() % 100000}") as ns:
        if isinstance(ns, str):
            return {"skipped": ns}
        for r in RUNS:
            log.info("hosts: %s", r.name)
            work = workdir / r.name.replace(", ", "-").replace(" ", "_").replace("(", "").replace(")", "")
            try:
                row = one(ns, r, clip, frames, work)
            except (BenchError, OSError) as e:
                row = {"error": str(e)[-1000:]}
            rows.append(
                {
                    "name": r.name,
                    "placement": r.placement,
                    "curve": r.curve,
                    "two_paths": r.two_paths,
                    "shm": r.shm,
                    "jpeg_quality": r.jpeg,
                    "draws": r.web,
                    **row,
                }
            )
    default = rows[0].get("fps")
    for row in rows:
        row["of_default"] = round(row["fps"] / default, 3) if default and row.get("fps") else None
    return {"rows": rows}
