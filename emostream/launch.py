"""Pipelines started from code (``python -m analyze``, the bench, the integration tests): the one place
that writes a run's config, picks its endpoints, decides its processes' environment, starts them,
waits until they are ready, and stops and reaps them.

- :func:`write_config`: ``{section: {key: value}}`` -> a ``bus.toml`` (tomli-w).
- :func:`free_port` / :func:`endpoint`: a free loopback TCP port, or an ``ipc://`` path in a folder.
- :func:`child_env`: this process's environment less every variable that would override the
  written config or join another run (:data:`OVERRIDES`), the stage packages importable, output
  unbuffered. Every process started here, and every command the tests start, gets it.
- :class:`Launcher`: ``python -m <stage> [--config PATH] ARGS`` per call, stdout and stderr to
  ``<logs>/<stage>-<instance>.log``; :meth:`Launcher.wait_bound` until endpoints are bound (each
  stage binds its PULL socket only after its model has loaded); :meth:`Launcher.stop` sends SIGTERM,
  the last started (the source) first, waits, SIGKILLs what is left and reaps every process, also
  when the ``with`` block ends on an error or Ctrl-C. Each child is told that this process is its
  manager (``EMOSTREAM_MANAGER_PID``, :func:`bus.runtime.watch_manager`): if this process is
  SIGKILLed, the stages stop by themselves instead of holding their endpoints.

It lives in ``emostream`` (the installed front: CLI, API) rather than ``bus``, which holds only what
the stages themselves share; no stage starts another. Honcho, supervisord and systemd start the
pipeline in production; this starts the throwaway pipelines of one analysis, benchmark or test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bus.paths import CODE_ROOT as ROOT  # where the stage packages are importable from
from bus.runtime import MANAGER_ENV, RUN_ENV

STOP_TIMEOUT_S = 5.0  # SIGTERM -> this long -> SIGKILL (stages exit within ~1 s; honcho waits 5 s)
POLL_S = 0.1
LISTEN = "0A"  # TCP state code for LISTEN in /proc/net/tcp
# Variables that replace parts of a config (bus.config.load), join a process manager's run
# (bus.runtime), or open a window: a child reads only the config it is given.
OVERRIDES = (
    "BUS_CONFIG",
    "SOURCE",
    "EVENTS",
    "WEB",
    "VIDEO",
    RUN_ENV,
    MANAGER_ENV,
    "DISPLAY",
    "WAYLAND_DISPLAY",
)


class LaunchError(RuntimeError):
    """A process exited (the message ends with its log's last line; ``code`` is its exit code), its
    endpoints were not bound in time, or it did not exit in time (the message ends with its log's tail)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's pick; another process may take it before us)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def endpoint(transport: str = "tcp", folder: Path | None = None, name: str = "") -> str:
    """A fresh endpoint: ``tcp://127.0.0.1:<free port>`` or ``ipc://<folder>/<name>``."""
    if transport == "tcp":
        return f"tcp://127.0.0.1:{free_port()}"
    if transport != "ipc":
        raise ValueError(f"unknown transport {transport!r} (tcp or ipc)")
    if folder is None or not name:
        raise ValueError("an ipc endpoint needs a folder and a name")
    return f"ipc://{folder / name}"


def toml_text(table: Mapping[str, Mapping[str, Any]]) -> str:
    """A config table (sections of scalars, lists and inline tables) as TOML."""
    return tomli_w.dumps({s: dict(t) for s, t in table.items()})


def write_config(path: Path, table: Mapping[str, Mapping[str, Any]]) -> Path:
    path.write_text(toml_text(table), encoding="utf-8")
    return path


def child_env(extra: Mapping[str, str] | None = None, *, importable: bool = True) -> dict[str, str]:
    """The environment of a process started from code: ours less :data:`OVERRIDES`, then ``extra``.
    ``importable``: the stage packages' folder first on ``PYTHONPATH`` (off to test an install)."""
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    if importable:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    else:
        env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def listening_ports(tables: list[str]) -> set[int]:
    """Ports in LISTEN state in the texts of ``/proc/net/tcp`` and ``/proc/net/tcp6``."""
    ports = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            cols = line.split()
            if len(cols) > 3 and cols[3] == LISTEN:
                ports.add(int(cols[1].rpartition(":")[2], 16))
    return ports


def unbound(endpoints: list[str], listening: set[int]) -> list[str]:
    """The endpoints not bound yet: tcp ports not in ``listening``, ipc paths that are not sockets."""
    out = []
    for ep in endpoints:
        scheme, _, rest = ep.partition("://")
        if scheme == "tcp":
            ok = int(rest.rpartition(":")[2]) in listening
        elif scheme == "ipc":
            ok = Path(rest).is_socket()
        else:
            raise ValueError(f"cannot tell whether {ep} is bound")
        if not ok:
            out.append(ep)
    return out


def tcp_tables() -> list[str]:
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            out.append(Path(name).read_text())
        except OSError:
            continue
    return out


@dataclass
class Proc:
    """One started process: ``name`` is ``stage[instance]``; its output goes to ``log``."""

    name: str
    stage: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = 3000) -> str:
        return self.text()[-chars:]

    def last_line(self) -> str:
        lines = self.text().strip().splitlines()
        return lines[-1].strip() if lines else ""

    def wait(self, timeout_s: float) -> int:
        """The exit code; :class:`LaunchError` (with the log) if it is still running after ``timeout_s``."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"{self.name} did not exit within {timeout_s} s:\n{self.tail()}") from None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, up to ``timeout_s``, then SIGKILL; the exit code (``-9`` when it had to be killed)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return _reap(self.popen, timeout_s)


def stop_all(popens: Sequence[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """SIGTERM every process still running, in the given order; up to ``timeout_s`` in all, then
    SIGKILL. Every one is reaped; their exit codes, in the same order (for processes started with a
    prefix :meth:`Launcher.start` cannot give, e.g. ``ip netns exec``)."""
    for popen in popens:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    return [_reap(popen, deadline - time.monotonic()) for popen in popens]


def _reap(popen: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return popen.wait(max(POLL_S, timeout_s))
    except subprocess.TimeoutExpired:
        popen.kill()
        return popen.wait()  # SIGKILL cannot be refused: no timeout needed to reap


@dataclass
class Launcher:
    """The processes of one run, logging into ``logs``; a context manager that stops and reaps every one.
    ``env``: set in every child after :func:`child_env` and the manager's pid (e.g. a run id)."""

    logs: Path
    env: Mapping[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def start(self, stage: str, *args: str, config: Path | None = None, instance: int | None = None) -> Proc:
        """``python -m stage [--config config] args``; ``instance`` names the copy (default: a counter)."""
        n = instance if instance is not None else sum(p.stage == stage for p in self.procs)
        log = self.logs / f"{stage}-{n}.log"
        cmd = [sys.executable, "-m", stage, *(["--config", str(config)] if config is not None else []), *args]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=child_env({MANAGER_ENV: str(os.getpid()), **self.env}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(f"{stage}[{n}]", stage, popen, log)
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        """:class:`LaunchError` when a process has exited (they run until stopped)."""
        for p in self.procs:
            if p.poll() is not None:
                raise LaunchError(f"{p.name} exited with code {p.returncode}: {p.last_line()}", p.returncode)

    def wait_bound(self, endpoints: list[str], timeout_s: float) -> None:
        """Until every endpoint is bound (a tcp port listens, an ipc socket file exists);
        :class:`LaunchError` when a process exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            missing = unbound(endpoints, listening_ports(tcp_tables()))
            if not missing:
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"{', '.join(missing)} not bound after {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """SIGTERM every process, the last started (the source) first; up to ``timeout_s`` in all,
        then SIGKILL. Every process is reaped; their exit codes by name."""
        codes = stop_all([p.popen for p in reversed(self.procs)], timeout_s)[::-1]
        return {p.name: code for p, code in zip(self.procs, codes, strict=True)}

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
