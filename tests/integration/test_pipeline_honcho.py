"""The whole pipeline end to end: the real ``honcho start`` on the repo's Procfile, a temporary
bus.toml (random loopback ports, web page and window off, events to a temporary file, files read as
fast as the pipeline takes them), the shipped classifier and the shared research media.

Each run must end by itself with exit code 0 (the display exits once every frame is accounted for;
capture lingers so that it is the display that ends the run). A run that hangs fails the test after
:data:`TIMEOUT_S` and every process it started is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
TIMEOUT_S = 240.0
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(TIMEOUT_S) + 60)]

PID_LINE = re.compile(r"(\w+)\.\d+ started \(pid=(\d+)\)")
FINAL_LINE = re.compile(r"final (\S+): read (\d+)  in events (\d+)  dropped (.+?)  lost (\d+)")


@dataclass
class Run:
    rc: int
    events: list[dict[str, Any]]
    log: str
    wall_s: float

    def final(self, src: str) -> dict[str, Any]:
        """The display's final accounting line for ``src``."""
        found = [m for m in FINAL_LINE.finditer(self.log) if m.group(1) == src]
        assert found, f"no final line for {src} from the display:\n{self.log[-3000:]}"
        m = found[-1]
        return {"read": int(m.group(2)), "events": int(m.group(3)), "dropped": m.group(4), "lost": int(m.group(5))}


@pytest.fixture(scope="module")
def labels() -> list[str]:
    """The shipped classifier's labels (its sidecar); fails, not skips: the pipeline needs the model."""
    sidecar = MODEL.with_suffix(".json")
    if not (MODEL.is_file() and sidecar.is_file()):
        pytest.fail(
            f"the shipped classifier {MODEL.relative_to(ROOT)} (+ {sidecar.name}) is missing: "
            "the end-to-end pipeline cannot run without it (train and export it with `python -m training`)"
        )
    return [str(x) for x in json.loads(sidecar.read_text())["labels"]]


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Stop a honcho that is still running: SIGTERM (it stops its children, SIGKILLing them after 5 s);
    if honcho itself does not exit, SIGKILL it and the process group of every child it started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
        return
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for _, pid in PID_LINE.findall(log.read_text(errors="replace")):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)  # honcho starts each child in its own session


Pipeline = Callable[..., Run]


@pytest.fixture
def pipeline(tmp_path: Path, bus_toml: Callable[[dict[str, dict[str, Any]]], Path], ports: dict[str, int]) -> Pipeline:
    """``pipeline(uri, eof_linger_s=30)``: ``honcho start`` on the repo's Procfile with a temporary config."""

    def run(uri: Path, eof_linger_s: float = 30.0) -> Run:
        events = tmp_path / "events.jsonl"
        config = bus_toml(
            {
                # a long send timeout: on a loaded machine a blocked file frame must wait, not be dropped
                "bus": {"send_timeout_ms": 10000, "stats_interval_s": 10.0},
                "capture": {
                    "sources": [{"id": "clip", "uri": str(uri), "realtime": False}],
                    "eof_linger_s": eof_linger_s,
                },
                "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
                "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(MODEL)},
                "display": {
                    "endpoint": f"tcp://127.0.0.1:{ports['display']}",
                    "window": False,
                    "web": "",
                    "events": str(events),
                    "drain_timeout_s": 10.0,
                },
            }
        )
        bindir = Path(sys.executable).parent  # the venv's bin: `python -m <stage>` in the Procfile is ours
        honcho = bindir / "honcho"
        if not honcho.is_file():
            pytest.fail(f"honcho is not installed next to {sys.executable} (pip install -e .)")
        env = child_env({"BUS_CONFIG": str(config)})
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
        log = tmp_path / "honcho.log"
        cmd = [str(honcho), "start", "--no-colour", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)]
        t0 = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            rc = proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(proc, log)
            pytest.fail(f"honcho did not exit within {TIMEOUT_S:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")
        finally:
            _stop(proc, log)
        wall = time.monotonic() - t0
        lines = events.read_text().splitlines() if events.is_file() else []
        result = Run(rc, [json.loads(line) for line in lines], log.read_text(errors="replace"), wall)
        faces = sum(1 for e in result.events if e["faces"])
        print(f"{uri.name}: honcho rc {rc}, {len(lines)} frames in events, {faces} with a face, {wall:.1f} s")
        return result

    return run


def check_complete(run: Run, frames: int) -> None:
    """Exit 0, every frame once in the events file, and the display's ledger agrees."""
    assert run.rc == 0, f"honcho exited {run.rc}:\n{run.log[-4000:]}"
    seqs = [e["seq"] for e in run.events]
    missing = sorted(set(range(frames)) - set(seqs))
    assert len(seqs) == len(set(seqs)), "a frame appears twice in the events file"
    assert not missing, f"{len(missing)} frames missing from the events file, first {missing[:10]}:\n{run.log[-3000:]}"
    assert len(seqs) == frames
    assert {e["src"] for e in run.events} == {"clip"}
    final = run.final("clip")
    assert final == {"read": frames, "events": frames, "dropped": "0", "lost": 0}, run.log[-3000:]
    assert "every source ended and is accounted for" in run.log


def check_faces(run: Run, labels: list[str]) -> int:
    """Every face labelled with the top class and flagged uncertain exactly when its top probability is
    below the classifier's default ``uncertain_below``; returns how many were uncertain."""
    from bus.config import ClassifierConfig

    uncertain = 0
    for e in run.events:
        for face in e["faces"]:
            assert face["label"] in labels, f"frame {e['seq']}: label {face['label']!r} not in {labels}"
            assert list(face["probs"]) == labels
            assert sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-3)
            assert face["label"] == max(face["probs"], key=face["probs"].get)
            top = max(face["probs"].values())
            if abs(top - ClassifierConfig().uncertain_below) > 1e-3:  # events round probabilities to 4 places
                assert face["uncertain"] == (top < ClassifierConfig().uncertain_below), f"frame {e['seq']}: {face}"
            uncertain += face["uncertain"]
    return uncertain


def test_one_face_video_every_frame_classified(pipeline: Pipeline, shared_data: Path, labels: list[str]) -> None:
    run = pipeline(shared_data / "media/videos/asl_signer_concat10.mp4")
    check_complete(run, 648)
    with_face = sum(1 for e in run.events if e["faces"])
    assert with_face >= 0.95 * 648, f"only {with_face}/648 frames have a face"
    uncertain = check_faces(run, labels)
    # the signer's face is often between expressions: some frames must come out uncertain, most not
    assert 0 < uncertain < 0.5 * with_face, f"{uncertain} of {with_face} faces uncertain"


def test_face_free_video_has_no_faces(pipeline: Pipeline, shared_data: Path, labels: list[str]) -> None:
    run = pipeline(shared_data / "media/videos/bottle-detection.mp4")
    check_complete(run, 1189)
    assert [e["seq"] for e in run.events if e["faces"]] == []


def test_photo_of_two_people(pipeline: Pipeline, shared_data: Path, labels: list[str]) -> None:
    run = pipeline(shared_data / "media/images/faces/two_people.jpg", eof_linger_s=15.0)
    check_complete(run, 1)
    assert len(run.events[0]["faces"]) == 2
    check_faces(run, labels)
