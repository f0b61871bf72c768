"""scripts/run.sh changes into the repository: the user's relative SOURCE / EVENTS / VIDEO /
BUS_CONFIG must still name files in the user's folder.

The real script runs on a copy in a temporary repository whose ``.venv`` is a stand-in (a python
that is never called, a set-up stamp newer than pyproject.toml, and a ``honcho`` that prints what it
was given), so no venv is created or installed into and no pipeline starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]

FAKE_HONCHO = """#!/usr/bin/env python3
import json, os, sys
keys = ("SOURCE", "EVENTS", "VIDEO", "BUS_CONFIG")
print(json.dumps({"args": sys.argv[1:], "cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}))
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "run.sh", repo / "scripts" / "run.sh")
    (repo / "pyproject.toml").write_text("")
    bindir = repo / ".venv" / "bin"
    bindir.mkdir(parents=True)
    for name, text in (("python", "#!/bin/sh\nexit 99\n"), ("honcho", FAKE_HONCHO)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    stamp = repo / ".venv" / ".emostream-runtime"
    stamp.touch()
    later = time.time() + 60
    os.utime(stamp, (later, later))  # newer than pyproject.toml: no install step
    return repo


def run_script(repo: Path, cwd: Path, env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run(
        ["bash", str(repo / "scripts" / "run.sh"), *args],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_relative_paths_are_the_users(repo: Path, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    env = {"SOURCE": "clips/a.mp4", "EVENTS": "e.jsonl", "VIDEO": "out/v.mp4", "BUS_CONFIG": "my.toml"}
    seen = run_script(repo, user, env, "display")
    assert seen["SOURCE"] == f"{user}/clips/a.mp4"
    assert seen["EVENTS"] == f"{user}/e.jsonl"
    assert seen["VIDEO"] == f"{user}/out/v.mp4"
    assert seen["BUS_CONFIG"] == f"{user}/my.toml"
    assert seen["cwd"] == str(repo) and seen["args"] == ["start", "display"]


@pytest.mark.parametrize("source", ["0", "12", "rtsp://cam.local/stream", "/abs/clip.mp4"])
def test_cameras_urls_and_absolute_paths_are_kept(repo: Path, tmp_path: Path, source: str) -> None:
    seen = run_script(repo, tmp_path, {"SOURCE": source, "EVENTS": "/abs/e.jsonl"})
    assert seen["SOURCE"] == source and seen["EVENTS"] == "/abs/e.jsonl"


def test_unset_stays_unset(repo: Path, tmp_path: Path) -> None:
    seen = run_script(repo, tmp_path, {})
    assert [seen[k] for k in ("SOURCE", "EVENTS", "VIDEO", "BUS_CONFIG")] == [None, None, None, None]
