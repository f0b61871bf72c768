"""The pipeline under a real process manager, started the way a user starts it: honcho through the
environment ``scripts/run.sh`` gives it, supervisord through ``scripts/supervisord.sh`` with the
shipped ``deploy/supervisord.conf`` (its own socket in the test's runtime dir, never a default).

A launcher is ``(config, folder for files, environment) -> Launched``; :data:`LAUNCHERS` names them.
``Launched.wait`` is the run's end: honcho ends when a stage exits (its code); under supervisord a
file run ends when the display has exited (its code), and the test then stops supervisord.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xmlrpc.client import ServerProxy

import pytest
from supervisor.xmlrpc import SupervisorTransport

from bus.runtime import alive, ancestors
from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("display", "classifier", "detector", "capture")
LIVE = ("STARTING", "RUNNING", "BACKOFF", "STOPPING")  # supervisord states of a process that is not over


def stage_pids(cfg: Path) -> dict[str, list[int]]:
    """The live ``python -m <stage> --config cfg`` processes, by stage (whoever started them)."""
    found: dict[str, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in args]
        if "-m" in argv and str(cfg) in argv and alive(int(d.name)):
            stage = argv[argv.index("-m") + 1]
            if stage in STAGES:
                found.setdefault(stage, []).append(int(d.name))
    return found


@dataclass
class Launched:
    """One run under a process manager (or one process, for :func:`lone`)."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    cfg: Path
    seen: set[int] = field(default_factory=set)  # every stage pid observed (killed at teardown)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[str, list[int]]:
        """This run's live stages (descendants of its manager) by stage."""
        found = {
            stage: mine
            for stage, ps in stage_pids(self.cfg).items()
            if (mine := [p for p in ps if p == self.proc.pid or self.proc.pid in ancestors(p)])
        }
        self.seen.update(p for ps in found.values() for p in ps)
        return found

    def wait(self, timeout_s: float) -> int:
        """The run's exit code once it has ended (``subprocess.TimeoutExpired`` if not within ``timeout_s``)."""
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        """Stop the manager (SIGTERM, then SIGKILL) and SIGKILL every stage it was seen running."""
        with contextlib.suppress(Exception):  # the manager may be gone already
            self.pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.seen:  # only processes this run started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Supervised(Launched):
    """A run under supervisord; what it knows of each program comes from its XML-RPC interface."""

    socket: Path = Path()

    def rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def info(self) -> dict[str, dict[str, Any]]:
        """supervisord's view of every program: ``statename``, ``pid``, ``exitstatus``, ``spawnerr``..."""
        return {p["name"]: p for p in self.rpc().getAllProcessInfo()}

    def up(self) -> bool:
        """supervisord answers on its socket."""
        try:
            return self.rpc().getState()["statename"] == "RUNNING"
        except OSError:
            return False

    def pids(self) -> dict[str, list[int]]:
        found = {name: [p["pid"]] for name, p in self.info().items() if p["statename"] in LIVE and p["pid"]}
        self.seen.update(p for ps in found.values() for p in ps)
        return found

    def state(self, name: str) -> str:
        return str(self.info()[name]["statename"])

    def spawned(self, name: str) -> int:
        """How many times supervisord has started ``name``."""
        return len(re.findall(rf"INFO spawned: '{name}' with pid", self.log()))

    def wait(self, timeout_s: float) -> int:
        """Wait for the display to be over, stop supervisord (SIGTERM), return the display's exit code."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and self.info()["display"]["statename"] in LIVE:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.proc.args), timeout_s)
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.pids()
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        codes = re.findall(r"(?:INFO|WARN) exited: display \(exit status (\d+);", self.log())
        return int(codes[-1]) if codes else -1


def clean_env(runtime: Path, **extra: str) -> dict[str, str]:
    """The children's environment (:func:`emostream.launch.child_env`: the variables that steer a run
    removed, the repository on PYTHONPATH) with ``runtime`` (a private temp dir) as XDG_RUNTIME_DIR; then ``extra``."""
    return child_env({"XDG_RUNTIME_DIR": str(runtime), **extra})


@contextlib.contextmanager
def private_runtime() -> Iterator[Path]:
    """A short private directory for XDG_RUNTIME_DIR (ipc:// paths are limited to 107 bytes), removed after."""
    path = Path(tempfile.mkdtemp(prefix="es-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _popen(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # append mode: supervisord writes to its stdout and opens /dev/stdout again for the stages
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _procfile(cfg: Path, folder: Path) -> Path:
    py, conf = shlex.quote(sys.executable), shlex.quote(str(cfg))
    path = folder / "Procfile"
    path.write_text("".join(f"{s}: {py} -m {s} --config {conf}\n" for s in STAGES))
    return path


def _venv_path(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def honcho(cfg: Path, folder: Path, env: dict[str, str]) -> Launched:
    """``honcho start`` with the environment ``scripts/run.sh`` gives it (its last lines, verbatim)."""
    script = ROOT / "scripts" / "run.sh"
    lines = script.read_text().splitlines()
    tail = lines[next(i for i, line in enumerate(lines) if line.startswith("export EMOSTREAM_RUN")) :]
    assert tail[-1].startswith("exec honcho start"), tail
    honcho_bin = shlex.quote(str(Path(sys.executable).parent / "honcho"))
    tail[-1] = tail[-1].replace("exec honcho start", f"exec {honcho_bin} start --no-colour -f {_procfile(cfg, folder)}")
    log = folder / "honcho.log"
    return Launched(_popen(["bash", "-c", "set -euo pipefail\n" + "\n".join(tail)], log, _venv_path(env)), log, cfg)


def supervisord(cfg: Path, folder: Path, env: dict[str, str], wrap: list[str] | None = None) -> Supervised:
    """``scripts/supervisord.sh`` (``deploy/supervisord.conf`` as shipped; the config in ``BUS_CONFIG``);
    ``env`` must carry the test's own ``XDG_RUNTIME_DIR`` (the socket goes there). Returns once
    supervisord answers on its socket. ``wrap``: a command line to run it under."""
    assert env.get("XDG_RUNTIME_DIR"), "supervisord's socket would go to the default runtime dir"
    log = folder / "supervisord.log"
    env = _venv_path({**env, "BUS_CONFIG": str(cfg)})
    proc = _popen([*(wrap or []), "bash", str(ROOT / "scripts" / "supervisord.sh")], log, env)
    run = Supervised(proc, log, cfg, socket=Path(env["XDG_RUNTIME_DIR"]) / "emostream" / "supervisord.sock")
    deadline = time.monotonic() + 30
    while not run.up():
        if proc.poll() is not None or time.monotonic() > deadline:
            run.close()
            raise AssertionError(f"supervisord did not come up (exit {proc.poll()}):\n{run.log()[-3000:]}")
        time.sleep(0.1)
    return run


def lone(*args: str, run_id: str) -> Callable[[Path, Path, dict[str, str]], Launched]:
    """One ``python -m <args>`` process with its own run id, as its own launcher would start it."""

    def start(cfg: Path, folder: Path, env: dict[str, str]) -> Launched:
        log = folder / f"{args[0]}.log"
        return Launched(_popen([sys.executable, "-m", *args], log, {**env, "EMOSTREAM_RUN": run_id}), log, cfg)

    return start


Launcher = Callable[[Path, Path, dict[str, str]], Launched]
LAUNCHERS: dict[str, Launcher] = {"supervisord": supervisord, "honcho": honcho}


def wait_for(
    what: str, check: Callable[[], bool], log: Callable[[], str], timeout_s: float, poll_s: float = 0.05
) -> None:
    """Poll ``check`` until it holds; past ``timeout_s`` fail the test with ``what`` and the log's tail."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s\n{log()[-4000:]}")
        time.sleep(poll_s)


def run_sections(
    tmp_path: Path,
    video: Path,
    model: Path,
    *,
    fps: float,
    loop: bool,
    hwm: int,
    send_timeout_ms: int,
    drain_timeout_s: float,
) -> dict[str, dict[str, Any]]:
    """The four stages on ipc:// endpoints in the run's runtime dir, one paced source ``book`` (capture
    lingers 30 s after its end), events into ``tmp_path``, no web page: the runs the managers start."""
    return {
        "bus": {"hwm": hwm, "send_timeout_ms": send_timeout_ms, "stats_interval_s": 1.0},
        "capture": {
            "sources": [{"id": "book", "uri": str(video), "realtime": True, "fps": fps, "loop": loop}],
            "eof_linger_s": 30.0,
        },
        "detector": {"endpoints": ["ipc://{runtime}/detector.0"]},
        "classifier": {"endpoints": ["ipc://{runtime}/classifier.0"], "model": str(model)},
        "display": {
            "endpoint": "ipc://{runtime}/display",
            "web": "",
            "events": str(tmp_path / "events.jsonl"),
            "drain_timeout_s": drain_timeout_s,
        },
    }
