"""Stage processes for the bench, and what /proc says about them.

Starts ``python -m <stage> --config PATH`` exactly as honcho's Procfile does (one process per stage
copy, stdout and stderr to a log file), waits until a stage's endpoint is bound (each stage binds
its PULL socket only after its model has loaded), reads CPU time (``/proc/<pid>/stat`` utime +
stime, all threads) and peak resident memory (``/proc/<pid>/status`` VmHWM), and always stops and
reaps what it started: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 5.0
LISTEN = "0A"  # TCP state code for LISTEN in /proc/net/tcp
ENV_OVERRIDES = ("BUS_CONFIG", "SOURCE", "EVENTS", "WEB", "VIDEO", "DISPLAY")


class BenchError(RuntimeError):
    """A run that could not be measured (a stage died, never came up, or stalled)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_stat_cpu(stat: str) -> float:
    """utime + stime in seconds from the text of ``/proc/<pid>/stat`` (fields 14 and 15)."""
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by ``pid`` (all its threads), or None when it is gone."""
    try:
        return parse_stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def parse_vm_hwm_mb(status: str) -> float | None:
    """Peak resident set size (VmHWM) in MiB from the text of ``/proc/<pid>/status``."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None


def parse_vm_rss_mb(status: str) -> float | None:
    """Resident set size now (VmRSS) in MiB from the text of ``/proc/<pid>/status``."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return None


def rss_mb(pid: int) -> float | None:
    try:
        return parse_vm_rss_mb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


def peak_rss_mb(pid: int) -> float | None:
    try:
        return parse_vm_hwm_mb(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


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


def _tcp_tables() -> list[str]:
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            out.append(Path(name).read_text())
        except OSError:
            continue
    return out


@dataclass
class Proc:
    name: str  # "detector[1]"
    stage: str  # "detector"
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Procs:
    """The processes of one run; a context manager that stops and reaps every one of them."""

    logs: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, stage: str, config: Path, *args: str, instance: int = 0) -> Proc:
        env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        name = f"{stage}[{instance}]"
        log = self.logs / f"{stage}-{instance}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", stage, "--config", str(config), *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc(name, stage, popen, log)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise BenchError(f"{p.name} exited with code {p.popen.returncode}:\n{p.tail()}")

    def wait_bound(self, endpoints: list[str], timeout_s: float) -> None:
        """Until every endpoint is bound (a tcp port listens, an ipc socket file exists); BenchError
        when a stage exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            missing = unbound(endpoints, listening_ports(_tcp_tables()))
            if not missing:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{', '.join(missing)} not bound after {timeout_s:.0f} s")
            time.sleep(0.1)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every process, the last started (the source) first; wait, then SIGKILL stragglers."""
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
