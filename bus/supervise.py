"""``python -m bus.supervise [--procfile Procfile] [--max-restarts N] [--backoff S] [NAME ...]``:
run the Procfile's processes and restart the ones that crash.

A thin, honcho-compatible process manager for production: it reads the Procfile (``name: command``
lines, ``#`` comments) and ``.env`` (``KEY=VALUE`` lines, when present), starts every process (or
the NAMEs given) with ``/bin/sh -c`` in its own process group, and then:

- a process that exits **0** (the display at the end of a file) ends the whole run with 0, as
  under honcho: the others get SIGTERM;
- a process that exits **2** reported a start-up failure (bad config, missing model or key) that a
  restart would not fix: the run ends with 2;
- a process that crashes (any other code, or killed by a signal) is restarted after
  ``backoff * 2**(n-1)`` seconds (at most :data:`MAX_DELAY_S`) for its n-th consecutive crash; a
  process that stayed up :data:`STABLE_S` seconds starts counting again from 1. After
  ``--max-restarts`` consecutive crashes it gives up and the run ends with 1. The other stages keep
  running meanwhile: ZeroMQ reconnects them to the restarted one, and frames sent to it while it
  was down are dropped and counted (see ``bus.sockets``);
- SIGTERM / SIGINT are forwarded (SIGTERM) to every process group; whatever is still running after
  :data:`GRACE_S` seconds gets SIGKILL, so the supervisor exits within about 2 s (code 0).

Every process gets ``EMOSTREAM_RUN`` (the run id, generated unless set; a restarted process keeps
it, so the others accept it and a second pipeline on the same endpoints is refused, see
``bus.codec``) and ``EMOSTREAM_MANAGER_PID`` (this process: when it dies, even by SIGKILL, every
stage stops within about 1 s, see ``bus.runtime``).

Every line it logs starts with ``supervise``; the processes write to the same stdout/stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import click

from bus.runtime import MANAGER_ENV, RUN_ENV, install_stop, setup_logging

GRACE_S = 1.5  # SIGTERM -> SIGKILL
MAX_DELAY_S = 30.0  # longest wait before a restart
STABLE_S = 30.0  # up this long: the next crash counts as the first again
POLL_S = 0.1
START_FAILURE = 2  # the stages' exit code for a start-up failure
LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
SIMPLE = re.compile(r"^[^;&|<>()`$\n]+$")  # no shell syntax: exec it, so signals reach the process itself


class ProcfileError(ValueError):
    """A Procfile or .env that cannot be used."""


def parse_procfile(text: str) -> dict[str, str]:
    """``name: command`` lines -> {name: command}, in file order."""
    procs: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if m is None:
            raise ProcfileError(f"line {n}: expected 'name: command', got {raw!r}")
        name, command = m.groups()
        if name in procs:
            raise ProcfileError(f"line {n}: {name!r} appears twice")
        procs[name] = command.strip()
    if not procs:
        raise ProcfileError("no processes")
    return procs


def parse_env(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional quotes, optional ``export``) -> dict."""
    env: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key.strip()):
            raise ProcfileError(f".env line {n}: expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def run_env(env: Mapping[str, str], manager_pid: int) -> dict[str, str]:
    """The environment of every process of one run: ``env`` plus the run id (kept when set) and the
    manager's pid."""
    out = dict(env)
    out[RUN_ENV] = out.get(RUN_ENV) or secrets.token_hex(8)
    out[MANAGER_ENV] = str(manager_pid)
    return out


def restart_delay(backoff: float, crashes: int) -> float:
    """Seconds to wait before restarting after the ``crashes``-th consecutive crash (1, 2, ...)."""
    return min(MAX_DELAY_S, backoff * 2.0 ** max(0, crashes - 1))


def describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Child:
    name: str
    command: str
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    crashes: int = 0  # consecutive
    restart_at: float | None = None  # when a crashed process is due to start again


Spawn = Callable[[str, Mapping[str, str]], subprocess.Popen[bytes]]


def spawn(command: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """``/bin/sh -c`` in a new process group (a simple command is exec'd: it *is* the process)."""
    script = f"exec {command}" if SIMPLE.match(command) else command
    return subprocess.Popen(["/bin/sh", "-c", script], env=dict(env), start_new_session=True, stdin=subprocess.DEVNULL)


class Supervisor:
    """The processes of one run. ``poll`` reaps, restarts and decides; ``stop`` ends them all."""

    def __init__(
        self,
        procs: Mapping[str, str],
        env: Mapping[str, str],
        max_restarts: int,
        backoff: float,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn = spawn,
    ):
        self.children = [Child(name, cmd) for name, cmd in procs.items()]
        self.env, self.max_restarts, self.backoff = dict(env), max_restarts, backoff
        self.log, self.clock, self.spawn = log, clock, spawn

    def start(self, child: Child) -> None:
        child.popen = self.spawn(child.command, self.env)
        child.started, child.restart_at = self.clock(), None
        self.log.info("started %s (pid %d): %s", child.name, child.popen.pid, child.command)

    def start_all(self) -> None:
        for child in self.children:
            self.start(child)

    def poll(self) -> int | None:
        """One look at every process; the run's exit code once it is over, else None."""
        now = self.clock()
        for child in self.children:
            if child.popen is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self.start(child)
                continue
            code = child.popen.poll()
            if code is None:
                continue
            _signal_group(child.popen.pid, signal.SIGKILL)  # whatever a shell command left behind
            child.popen = None
            if code == 0:
                self.log.info("%s exited with code 0: ending the run", child.name)
                return 0
            if code == START_FAILURE:
                self.log.error("%s failed to start (exit 2): ending the run", child.name)
                return START_FAILURE
            if now - child.started >= STABLE_S:
                child.crashes = 0
            child.crashes += 1
            if child.crashes > self.max_restarts:
                self.log.error(
                    "%s %s; %d restarts in a row already: giving up", child.name, describe(code), self.max_restarts
                )
                return 1
            delay = restart_delay(self.backoff, child.crashes)
            child.restart_at = now + delay
            self.log.warning(
                "%s %s; restart %d/%d in %.1f s", child.name, describe(code), child.crashes, self.max_restarts, delay
            )
        return None

    def stop(self, grace_s: float = GRACE_S) -> None:
        """SIGTERM to every process group, SIGKILL to what is left after ``grace_s``; reap."""
        running = [c for c in self.children if c.popen is not None]
        for c in running:
            assert c.popen is not None
            _signal_group(c.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            for c in running:
                assert c.popen is not None
                c.popen.poll()  # reap the leader, so only live members keep its group alive
            if not any(_group_alive(c.popen.pid) for c in running if c.popen is not None):
                break
            time.sleep(0.02)
        for c in running:
            assert c.popen is not None
            if _group_alive(c.popen.pid):
                self.log.warning("%s did not stop within %.1f s: SIGKILL", c.name, grace_s)
                _signal_group(c.popen.pid, signal.SIGKILL)
            try:
                c.popen.wait(1.0)
            except subprocess.TimeoutExpired:
                self.log.error("%s (pid %d) could not be reaped", c.name, c.popen.pid)
            c.popen = None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in the group (reap the leader first: a zombie still counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _fail(message: str) -> NoReturn:
    click.echo(f"supervise: {message}", err=True)
    sys.exit(2)


def run(sup: Supervisor, stop: threading.Event) -> int:
    """Start everything, supervise until a process ends the run or ``stop``; stop everything."""
    sup.start_all()
    try:
        while not stop.is_set():
            code = sup.poll()
            if code is not None:
                return code
            stop.wait(POLL_S)
        sup.log.info("stop requested: stopping every process")
        return 0
    finally:
        sup.stop()


@click.command()
@click.option(
    "--procfile", type=click.Path(dir_okay=False, path_type=Path), default=Path("Procfile"), show_default=True
)
@click.option(
    "--env",
    "env_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".env"),
    show_default=True,
    help="KEY=VALUE lines added to the environment (skipped when absent).",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Consecutive crashes of one process before giving up.",
)
@click.option(
    "--backoff",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Seconds before the first restart; doubles per consecutive crash.",
)
@click.argument("names", nargs=-1)
def main(procfile: Path, env_file: Path, max_restarts: int, backoff: float, names: tuple[str, ...]) -> None:
    """Run the Procfile's processes (or only NAMES); restart crashed ones with exponential backoff."""
    stop = threading.Event()
    install_stop(stop)
    try:
        procs = parse_procfile(procfile.read_text())
        env = run_env({**os.environ, **(parse_env(env_file.read_text()) if env_file.is_file() else {})}, os.getpid())
    except FileNotFoundError:
        _fail(f"no such Procfile: {procfile}")
    except (OSError, ProcfileError) as e:
        _fail(f"{procfile}: {e}")
    unknown = [n for n in names if n not in procs]
    if unknown:
        _fail(f"not in {procfile}: {', '.join(unknown)} (known: {', '.join(procs)})")
    if names:
        procs = {n: procs[n] for n in names}
    log = setup_logging("supervise")
    log.info(
        "supervising %s (run %s; max %d restarts in a row, backoff %.1f s)",
        ", ".join(procs),
        env[RUN_ENV],
        max_restarts,
        backoff,
    )
    sup = Supervisor(procs, env, max_restarts, backoff, log)
    code = run(sup, stop)
    log.info("exit %d", code)
    sys.exit(code)


if __name__ == "__main__":
    main()
