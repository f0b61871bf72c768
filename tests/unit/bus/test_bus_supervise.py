"""bus.supervise: Procfile/.env parsing, the restart policy with a fake clock and fake processes, and
the real command on a toy Procfile (signals, exit codes, the 2 s stop budget)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from bus.supervise import MAX_DELAY_S, STABLE_S, ProcfileError, Supervisor, parse_env, parse_procfile, restart_delay

ROOT = Path(__file__).resolve().parents[3]
LOG = logging.getLogger("test.supervise")
pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: python -m a\nb:python -m b --x 1\n", {"a": "python -m a", "b": "python -m b --x 1"}),
        ("# comment\n\ndetector1: python -m detector --instance 1\n", {"detector1": "python -m detector --instance 1"}),
        ("a: x\na: y\n", ProcfileError),
        ("just words\n", ProcfileError),
        ("# nothing\n", ProcfileError),
    ],
)
def test_parse_procfile(text: str, expected: dict[str, str] | type[Exception]) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse_procfile(text)
    else:
        assert parse_procfile(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PYTHONUNBUFFERED=1\n", {"PYTHONUNBUFFERED": "1"}),
        ("# c\nexport A='x y'\nB=\"q\"\nC=\n", {"A": "x y", "B": "q", "C": ""}),
        ("NOEQUALS\n", ProcfileError),
        ("1BAD=x\n", ProcfileError),
    ],
)
def test_parse_env(text: str, expected: dict[str, str] | type[Exception]) -> None:
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse_env(text)
    else:
        assert parse_env(text) == expected


@pytest.mark.parametrize(
    ("backoff", "crashes", "delay"), [(1.0, 1, 1.0), (1.0, 2, 2.0), (0.5, 4, 4.0), (1.0, 20, MAX_DELAY_S)]
)
def test_restart_delay_doubles_up_to_a_cap(backoff: float, crashes: int, delay: float) -> None:
    assert restart_delay(backoff, crashes) == delay


class FakeProc:
    """A stand-in for Popen: ``code`` is what poll() returns (None = running)."""

    next_pid = 1000

    def __init__(self, command: str) -> None:
        self.command, self.code = command, None
        FakeProc.next_pid += 1
        self.pid = FakeProc.next_pid

    def poll(self) -> int | None:
        return self.code


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def supervisor(max_restarts: int = 2, backoff: float = 1.0) -> tuple[Supervisor, Clock, list[FakeProc]]:
    clock, started = Clock(), []

    def spawn(command: str, env: Mapping[str, str]) -> FakeProc:
        started.append(FakeProc(command))
        return started[-1]

    sup = Supervisor({"a": "run a", "b": "run b"}, {}, max_restarts, backoff, LOG, clock, spawn)  # type: ignore[arg-type]
    sup.start_all()
    return sup, clock, started


@pytest.fixture(autouse=True)
def no_group_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bus.supervise._signal_group", lambda pgid, sig: None)  # fake pids: signal nothing


@pytest.mark.parametrize(("code", "result"), [(0, 0), (2, 2)])
def test_exit_0_or_a_start_up_failure_ends_the_run(code: int, result: int) -> None:
    sup, _, started = supervisor()
    assert sup.poll() is None
    started[1].code = code
    assert sup.poll() == result


def test_a_crash_is_restarted_with_backoff_then_given_up() -> None:
    sup, clock, started = supervisor(max_restarts=2, backoff=1.0)
    started[0].code = -signal.SIGKILL
    assert sup.poll() is None and len(started) == 2  # not yet: waits 1 s
    clock.t = 0.9
    assert sup.poll() is None and len(started) == 2
    clock.t = 1.0
    assert sup.poll() is None and len(started) == 3 and started[2].command == "run a"
    started[2].code = 1  # crashes again at once: waits 2 s
    clock.t = 1.5
    assert sup.poll() is None
    clock.t = 3.4
    assert sup.poll() is None and len(started) == 3
    clock.t = 3.5
    assert sup.poll() is None and len(started) == 4
    started[3].code = 1  # third crash in a row > max_restarts = 2
    assert sup.poll() == 1


def test_a_process_that_stayed_up_counts_its_crashes_from_one_again() -> None:
    sup, clock, started = supervisor(max_restarts=1, backoff=1.0)
    started[0].code = 1
    sup.poll()
    clock.t = 1.0
    sup.poll()  # restarted (crash 1 of 1)
    clock.t = 1.0 + STABLE_S
    started[2].code = 1
    assert sup.poll() is None  # counted as a first crash again: restarted, not given up
    clock.t += 1.0
    sup.poll()
    assert len(started) == 4


def run_supervisor(tmp_path: Path, procfile: str, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "Procfile").write_text(procfile)
    return subprocess.Popen(
        [sys.executable, "-m", "bus.supervise", "--procfile", str(tmp_path / "Procfile"), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def reap(p: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        pytest.fail(f"supervisor still running after {timeout} s:\n{out}")
    return p.returncode, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_everything_within_two_seconds(tmp_path: Path, sig: signal.Signals) -> None:
    # "stubborn" ignores SIGTERM: it is SIGKILLed after the grace period
    procfile = 'sleeper: sleep 60\nstubborn: python3 -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"\n'
    p = run_supervisor(tmp_path, procfile)
    time.sleep(4.0)  # both children up, the stubborn one ignoring SIGTERM (a loaded machine starts Python slowly)
    t0 = time.monotonic()
    p.send_signal(sig)
    code, out = reap(p, 10)
    assert time.monotonic() - t0 < 2.5, out
    assert code == 0 and "stop requested" in out and "stubborn did not stop" in out


def test_a_process_exiting_0_ends_the_run_with_0(tmp_path: Path) -> None:
    p = run_supervisor(tmp_path, "long: sleep 60\nshort: sleep 0.5\n")
    code, out = reap(p, 15)
    assert code == 0 and "short exited with code 0: ending the run" in out


def test_a_crashing_process_is_restarted_then_given_up(tmp_path: Path) -> None:
    p = run_supervisor(tmp_path, "long: sleep 60\ncrash: sh -c 'exit 3'\n", "--max-restarts", "2", "--backoff", "0.1")
    code, out = reap(p, 15)
    assert code == 1, out
    assert out.count("started crash") == 3 and "restart 1/2 in 0.1 s" in out and "restart 2/2 in 0.2 s" in out
    assert "giving up" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--procfile", "missing"], "no such Procfile"), (["nosuch"], "not in")],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "Procfile").write_text("a: sleep 1\n")
    p = subprocess.run(
        [sys.executable, "-m", "bus.supervise", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1
