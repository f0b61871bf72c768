"""``emostream run`` end to end from a folder that is not the repository: the real honcho on the
shipped Procfile, a temporary config (random loopback ports) given by a relative path, a relative
folder of images as the source and a relative events file; every event names its image file and has
the faces the Python API finds in that file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emostream import EmotionRecognizer
from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_run_a_folder_from_another_folder(
    tmp_path: Path,
    shared_data: Path,
    bus_toml: Callable[[dict[str, dict[str, Any]]], Path],
    ports: dict[str, int],
) -> None:
    user = tmp_path / "user"
    (user / "imgs").mkdir(parents=True)
    for name in ("two_people.jpg", "obama.jpg"):
        shutil.copy(shared_data / "media/images/faces" / name, user / "imgs" / name)
    config = bus_toml(
        {
            "bus": {"send_timeout_ms": 10000, "stats_interval_s": 10.0},
            "capture": {"sources": [{"id": "imgs", "uri": "0"}], "eof_linger_s": 15.0},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"]},
            "display": {"endpoint": f"tcp://127.0.0.1:{ports['display']}", "web": "", "drain_timeout_s": 10.0},
        }
    )
    env = child_env()
    cmd = [sys.executable, "-m", "emostream", "run", "--config", os.path.relpath(config, user)]
    cmd += ["--source", "imgs", "--events", "out.jsonl"]
    proc = subprocess.Popen(
        cmd, cwd=user, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"emostream run did not end:\n{out.decode(errors='replace')[-3000:]}")
    log = out.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    events = [json.loads(x) for x in (user / "out.jsonl").read_text().splitlines()]
    assert [e["path"] for e in events] == [str(user / "imgs/obama.jpg"), str(user / "imgs/two_people.jpg")]
    with EmotionRecognizer() as r:
        for e in events:
            mine = r.detect(e["path"])
            assert [f["label"] for f in e["faces"]] == [f.label for f in mine]
    assert [len(e["faces"]) for e in events] == [1, 2]


@pytest.mark.parametrize("config", [True, False])
def test_analyze_from_another_folder(tmp_path: Path, shared_data: Path, config: bool) -> None:
    """The issue's report: from another folder, with or without `--config /abs/bus.toml`, the model's
    relative path was read against the current folder (`model sidecar not found`)."""
    video = shared_data / "media/videos/head-pose-face-detection-male.mp4"
    cmd = [sys.executable, "-m", "analyze", str(video), "--out", "rep", "--no-plot", "--quiet"]
    cmd += ["--config", str(ROOT / "bus.toml")] if config else []
    done = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tracks = json.loads((tmp_path / "rep" / "tracks.json").read_text())["tracks"]
    assert [t["dominant"] for t in tracks] == ["happy"]
