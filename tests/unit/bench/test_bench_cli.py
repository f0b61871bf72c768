"""``python -m bench``: --help, missing clips, and a tiny real run whose last stdout line is the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"bench", "date", "command", "machine", "loadavg_start_end", "note", "frames"}
SECTIONS = {"sequential", "pipeline", "latency", "stall", "scaling", "classifier", "hop", "profile", "hosts"}
RUN_KEYS = {"name", "fps", "ratio_to_sequential", "latency_ms", "hops_p50_ms", "drops_at_sink", "stages"}


def bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help() -> None:
    r = bench("--help", timeout=30)
    assert r.returncode == 0, r.stderr
    for option in ("--frames", "--quick", "--only", "--json-out"):
        assert option in r.stdout
    for section in SECTIONS:  # the --only choices
        assert section in r.stdout, section


def test_sections() -> None:
    from bench.__main__ import SECTIONS as sections

    assert "stall" in sections
    assert set(sections) == SECTIONS and len(sections) == len(SECTIONS)


def test_missing_clips_exit_2(tmp_path: Path) -> None:
    r = bench("--quick", "--data", str(tmp_path), timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("bench: clips not found")


@pytest.mark.timeout(120)
def test_tiny_real_run(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--only", "sequential", "--only", "pipeline", "--only", "classifier"]
    r = bench(*args, "--data", str(shared_data / "media"), "--json-out", str(out), timeout=100)
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    res = json.loads(last)
    assert json.loads(out.read_text()) == res
    assert set(res) >= KEYS | SECTIONS
    assert res["frames"] == 60 and res["latency"] is None and res["scaling"] is None
    (seq,) = res["sequential"]
    assert seq["fps"] > 0 and seq["faces_per_frame"] > 0
    (run,) = res["pipeline"]
    assert set(run) >= RUN_KEYS
    assert run["fps"] > 0 and run["ratio_to_sequential"] > 0 and run["frames"] == 60
    assert set(run["stages"]) == {"capture", "detector", "classifier", "sink"}
    for stage in ("capture", "detector", "classifier"):
        s = run["stages"][stage]
        assert s["cpu_ms_per_frame"] > 0 and s["peak_rss_mb"][0] > 0, (stage, s)
        assert all(f is not None for f in s["final_stats"].values()), (stage, s)
    assert [b["batch"] for b in res["classifier"]["batches"]] == [1, 8]
    assert "| one_face/full_range |" in r.stdout
