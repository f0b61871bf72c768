"""The shipped ``deploy/supervisord.conf`` under the real supervisord (started by
``scripts/supervisord.sh``, its socket and endpoints in the test's own runtime dir):

- ``kill -9`` of the detector during a file run: supervisord restarts it alone, frames flow again and
  the run ends with every frame accounted for (shown + dropped + lost = read, no seq twice);
- a stage that fails at start-up (exit 2: the classifier's model is missing) is left FATAL after one
  start, never restarted in a loop, while the others keep running;
- the restart policy of the shipped program sections, on stand-in commands: exit 2 or 0 after
  ``startsecs`` is left EXITED, a crash after ``startsecs`` is restarted, any exit within ``startsecs``
  is left FATAL.

``kill -9`` of supervisord itself (every stage gone within 2 s) and of each stage in turn are in
``test_runs.py``, which runs supervisord as one of its launchers.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.managers import (
    LIVE,
    ROOT,
    Supervised,
    clean_env,
    private_runtime,
    run_sections,
    supervisord,
    wait_for,
)

MODEL = ROOT / "models" / "fer2013_emonet.tflite"
CONF = ROOT / "deploy" / "supervisord.conf"
FINAL = re.compile(r"final (\S+): read (\d+)  in events (\d+)  dropped (.+?)  lost (\d+)")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def seqs(events: Path) -> list[int]:
    if not events.exists():
        return []
    return [int(json.loads(line)["seq"]) for line in events.read_text().splitlines() if line.strip()]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    """``start(cfg, **env)``: supervisord on ``cfg`` with a private runtime dir; stopped at teardown."""
    runs: list[Supervised] = []
    with private_runtime() as runtime:

        def go(cfg: Path, **extra: str) -> Supervised:
            run = supervisord(cfg, tmp_path, clean_env(runtime, **extra))
            runs.append(run)
            return run

        yield go
        for run in runs:
            run.close()


def config(bus_toml, tmp_path: Path, video: Path, model: Path = MODEL, loop: bool = False) -> Path:
    return bus_toml(
        run_sections(tmp_path, video, model, fps=8.0, loop=loop, hwm=4, send_timeout_ms=200, drain_timeout_s=3.0)
    )


def test_a_killed_detector_is_restarted_alone_and_the_run_ends_with_an_exact_account(
    tmp_path, bus_toml, shared_data, start
) -> None:
    cfg = config(bus_toml, tmp_path, shared_data / "media/videos/asl_book.mkv")  # 109 frames, a face in each
    events = tmp_path / "events.jsonl"
    run = start(cfg)
    wait_for("frames in the events file", lambda: len(seqs(events)) >= 5, run.log, 120)
    wait_for("the detector up for startsecs", lambda: run.state("detector") == "RUNNING", run.log, 30)
    (old,) = run.pids()["detector"]
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    wait_for("the restart", lambda: run.pids().get("detector", [old]) != [old], run.log, 30)
    restarted_s = time.monotonic() - t0
    assert run.wait(120) == 0, run.log()[-4000:]  # the display ends the run once the file is accounted for
    text = run.log()
    assert re.search(r"WARN exited: detector \(terminated by SIGKILL; not expected\)", text), text[-3000:]
    assert [run.spawned(s) for s in ("capture", "detector", "classifier", "display")] == [1, 2, 1, 1], text[-3000:]
    src, read, shown, dropped, lost = FINAL.findall(text)[-1]
    drops = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", dropped)}
    got = seqs(events)
    print(f"\nrestarted after {restarted_s:.2f} s; read {read}, in events {shown}, dropped {drops}, lost {lost}")
    assert (src, int(read)) == ("book", 109), text[-3000:]
    assert int(shown) + sum(drops.values()) + int(lost) == 109, text[-3000:]
    assert len(got) == len(set(got)) == int(shown), "a frame twice, or the events file disagrees with the display"
    assert 108 in got, "frames did not flow again after the restart"
    # whether the gap cost frames depends on timing (a detector idle between two frames and back within the
    # capture's send timeout loses none): what must hold is the account above, whatever the gap cost


def test_a_start_up_failure_is_not_restarted_and_the_others_keep_running(
    tmp_path, bus_toml, shared_data, start
) -> None:
    """The classifier's model is missing: the classifier and the detector (which checks the whole
    pipeline's config) exit 2 with one line and are left alone; capture and display keep running."""
    video = shared_data / "media/videos/asl_book.mkv"
    missing = tmp_path / "missing.tflite"
    cfg = config(bus_toml, tmp_path, video, model=missing, loop=True)
    run = start(cfg)
    failing = ("classifier", "detector")
    wait_for("both over", lambda: all(run.state(s) not in LIVE for s in failing), run.log, 60)
    time.sleep(6.0)  # longer than any backoff supervisord would use before a retry
    text, info = run.log(), run.info()
    print("".join(f"\n{s}: {info[s]['statename']}, exit status {info[s]['exitstatus']}" for s in failing))
    for stage in failing:
        assert run.spawned(stage) == 1, text[-3000:]
        assert f"{stage}: model file not found: {missing}" in text, text[-3000:]
        # within startsecs of its start: FATAL ("Exited too quickly"); later (a loaded machine): EXITED, expected
        assert re.search(rf"exited: {stage} \(exit status 2; (not )?expected\)", text), text[-3000:]
        assert (info[stage]["statename"], info[stage]["exitstatus"]) in (("FATAL", 0), ("EXITED", 2)), info[stage]
    assert {s: info[s]["statename"] for s in ("capture", "display")} == {"capture": "RUNNING", "display": "RUNNING"}


def _policy_conf(tmp_path: Path, commands: dict[str, str]) -> Path:
    """The shipped config with its programs replaced by stand-ins that keep the display's policy keys."""
    shipped = configparser.RawConfigParser()
    shipped.read(CONF)
    policy = dict(shipped["program:display"])
    out = configparser.RawConfigParser()
    for section in shipped.sections():
        if not section.startswith("program:"):
            out[section] = dict(shipped[section])
    for name, command in commands.items():
        out[f"program:{name}"] = {**policy, "command": command, "directory": str(ROOT)}
    path = tmp_path / "policy.conf"
    with path.open("w") as f:
        out.write(f)
    return path


def test_the_shipped_restart_policy(tmp_path, bus_toml, start) -> None:
    """Stand-ins with the shipped keys (``autorestart = unexpected``, ``exitcodes = 0,2``,
    ``startsecs = 5``, ``startretries = 0``): what supervisord does with each way a stage can end."""
    shipped = configparser.RawConfigParser()
    shipped.read(CONF)
    late = f"sleep {int(shipped['program:display']['startsecs']) + 1}"
    conf = _policy_conf(
        tmp_path,
        {
            "early2": "sh -c 'exit 2'",  # a bad config: exits at once
            "early1": "sh -c 'exit 1'",  # an import error: exits at once
            "late2": f"sh -c '{late}; exit 2'",  # a start-up failure found late (a model that loads slowly)
            "late0": f"sh -c '{late}; exit 0'",  # the end of a file
            "crash": "sleep 600",  # killed with SIGKILL once up
        },
    )
    run = start(bus_toml({}), SUPERVISORD_CONF=str(conf))
    wait_for("the crash stand-in up", lambda: run.state("crash") == "RUNNING", run.log, 30)
    os.kill(run.pids()["crash"][0], signal.SIGKILL)
    wait_for("late2 and late0 over", lambda: {run.state("late2"), run.state("late0")} == {"EXITED"}, run.log, 30)
    time.sleep(3.0)  # would any of them start again?
    info = run.info()
    got = {name: (p["statename"], p["exitstatus"], run.spawned(name)) for name, p in info.items()}
    print(f"\n{got}")
    assert got["early2"][0::2] == ("FATAL", 1) and got["early1"][0::2] == ("FATAL", 1), (got, run.log()[-3000:])
    assert got["late2"] == ("EXITED", 2, 1) and got["late0"] == ("EXITED", 0, 1), got
    assert got["crash"][0] in ("STARTING", "RUNNING") and got["crash"][2] == 2, got  # restarted, once
