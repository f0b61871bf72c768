"""Every command's ``--help`` works, and every stage refuses a bad config at start-up the same way:
exit code 2 and one line on stderr naming the section and key (``bus.config`` raises; the stages print).

The commands run as real ``python -m`` processes, the way the Procfile starts them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("capture", "detector", "classifier", "display")
pytestmark = pytest.mark.timeout(120)


def env(**extra: str) -> dict[str, str]:
    return child_env(extra)


@pytest.mark.parametrize("command", [*STAGES, "training"])
def test_help_exits_0(command: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", command, "--help"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage:"), p.stdout


LOCAL = "tcp://127.0.0.1:5601"

# (the bad config, what its one error line must say: section and key)
BAD = [
    ("[detector]\nmodle = 'full_range'\n", ["[detector]", "unknown key 'modle'"]),
    ("[detectors]\nmodel = 'full_range'\n", ["unknown section [detectors]"]),
    ("[bus]\nhwm = '4'\n", ["[bus] hwm", "expected an integer"]),
    (f"[classifier]\nendpoints = ['{LOCAL}']\n", ["[classifier] endpoints", LOCAL, "also bound by [detector]"]),
    ("[display]\nendpoint = 'tcp://127.0.0.1:5602'\n", ["[display] endpoint", "also bound by [classifier]"]),
    ("[display]\nendpoint = 'tcp://10.1.2.3:5603'\n", ["[display] endpoint", "not loopback", "allow_remote"]),
    ("[detector]\nendpoints = ['tcp://0.0.0.0:5601']\n", ["[detector] endpoints", "not loopback", "allow_remote"]),
    ("[display]\nweb = '0.0.0.0:8000'\n", ["[display] web", "not loopback", "allow_remote"]),
    ("[detector]\nendpoints = ['127.0.0.1:5601']\n", ["[detector] endpoints", "is not a tcp://"]),
]


@pytest.mark.parametrize(("toml", "says"), BAD, ids=[s[0].replace(" ", "") for _, s in BAD])
def test_bad_config_every_stage_exits_2_with_one_line(tmp_path: Path, toml: str, says: list[str]) -> None:
    config = tmp_path / "bus.toml"
    config.write_text(toml)
    # all four at once (they fail before loading a model or binding a socket); half read BUS_CONFIG, half --config
    procs = {
        stage: subprocess.Popen(
            [sys.executable, "-m", stage, *(["--config", str(config)] if i % 2 else [])],
            cwd=tmp_path,  # no ./bus.toml fallback from the repo
            env=env(BUS_CONFIG=str(config)) if i % 2 == 0 else env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, stage in enumerate(STAGES)
    }
    try:
        results = {stage: p.communicate(timeout=60) for stage, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
    for stage, (out, err) in results.items():
        lines = [line for line in err.splitlines() if line.strip()]
        assert procs[stage].returncode == 2, f"{stage}: exit {procs[stage].returncode}\n{err}"
        assert len(lines) == 1, f"{stage}: expected one line on stderr, got:\n{err}"
        assert lines[0].startswith(f"{stage}: "), lines[0]
        assert str(config) in lines[0], lines[0]
        for text in says:
            assert text in lines[0], f"{stage}: {text!r} not in {lines[0]!r}"
        assert out == ""


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for stage in STAGES:
        p = subprocess.run(
            [sys.executable, "-m", stage],
            cwd=tmp_path,
            env=env(BUS_CONFIG=str(missing)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 2, f"{stage}: {p.stderr}"
        assert p.stderr.strip() == f"{stage}: config file not found: {missing}"
