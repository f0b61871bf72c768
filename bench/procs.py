"""What /proc says about the bench's stage processes (started by :mod:`emostream.launch`): CPU
time (``/proc/<pid>/stat`` utime + stime, all threads), resident memory now and at its peak
(``/proc/<pid>/status`` VmRSS, VmHWM) and open file descriptors (``/proc/<pid>/fd``).
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A run that could not be measured (a stage died, never came up, or stalled)."""


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


def fd_count(pid: int) -> int | None:
    """Open file descriptors of ``pid`` now, or None when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
