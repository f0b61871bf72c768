"""Process plumbing shared by every stage: logging, stop-on-signal (and on the death of the process
manager that started the stage), the private runtime directory, rate-limited warnings, stats.

Environment set by the scripts that start a process manager (``scripts/run.sh``: honcho,
``scripts/supervisord.sh``: supervisord):

- ``EMOSTREAM_RUN``: the pipeline run every stage belongs to (see :mod:`bus.codec`, ``run``);
- ``EMOSTREAM_MANAGER_PID``: the manager's pid. A stage that has it as an ancestor stops when it
  dies (within :data:`ORPHAN_GRACE_S` + a moment), so ``kill -9`` of the manager leaves no stage
  running and holding its endpoint. Under systemd it is not set: systemd stops units itself.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import select
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np


def setup_logging(stage: str, level: int = logging.INFO) -> logging.Logger:
    logging.basicConfig(level=level, stream=sys.stderr, format=f"%(asctime)s {stage} %(levelname)s %(message)s")
    return logging.getLogger(stage)


def single_threaded_opencv() -> None:
    """One OpenCV thread per stage process. The pipeline spreads work over cores with processes;
    OpenCV's own pool (cvtColor, resize) only adds CPU here: measured 0.15 vs 0.07 ms of CPU per
    640x480 BGR->RGB with 2 threads on 2 cores (bench/RESULTS.md)."""
    import cv2

    cv2.setNumThreads(1)


RUN_ENV = "EMOSTREAM_RUN"
MANAGER_ENV = "EMOSTREAM_MANAGER_PID"
ORPHAN_GRACE_S = 0.5  # manager dead: stop, then exit hard if still running this much later (2 s bound under load)
RUNTIME_DIR = "emostream"  # under $XDG_RUNTIME_DIR; else <tmp>/emostream-<uid>

log = logging.getLogger("emostream")


def install_stop(stop: threading.Event, env: Mapping[str, str] | None = None) -> None:
    """SIGTERM/SIGINT set ``stop``; loops poll with timeouts, so the process exits within ~1 s. When
    a process manager started us (``EMOSTREAM_MANAGER_PID``), its death sets ``stop`` too."""

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    watch_manager(stop, os.environ if env is None else env)


def ancestors(pid: int | None = None) -> list[int]:
    """The parent, grandparent, ... of ``pid`` (default: this process), up to pid 1, from /proc."""
    out: list[int] = []
    pid = os.getpid() if pid is None else pid
    while pid > 1 and len(out) < 256 and (fields := proc_stat(pid)) is not None:
        pid = int(fields[1])  # field 4: the parent
        out.append(pid)
    return out


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the parenthesised command name (field 3, the state,
    first); None where there is no such process or no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and has not exited (a zombie, exited but not yet reaped by its
    parent, does not count, nor one the kernel is removing: state X)."""
    fields = proc_stat(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X")
    if Path("/proc/self/stat").is_file():
        return False  # /proc works: no such process
    try:  # no /proc: ask the kernel
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's
        return True
    return True


def watch_manager(
    stop: threading.Event,
    env: Mapping[str, str],
    grace_s: float = ORPHAN_GRACE_S,
    exit: Callable[[int], object] = os._exit,
) -> threading.Thread | None:
    """Set ``stop`` when the manager named by ``EMOSTREAM_MANAGER_PID`` exits; ``exit(1)`` if the
    process is still running ``grace_s`` later. Only a manager that is one of our ancestors counts
    (a variable inherited by a shell started from a stage is ignored). Linux pidfd: woken the moment
    it exits, no polling, no pid-reuse race once it is open. A manager pid no process has any more is
    a manager that died while this stage was starting: ``stop`` is set at once."""
    raw = env.get(MANAGER_ENV, "")
    if not raw:
        return None
    try:
        pid = int(raw)
    except ValueError:
        log.warning("%s=%r is not a pid: not watching the process manager", MANAGER_ENV, raw)
        return None
    fd: int | None = None
    if pid not in ancestors():
        if alive(pid):
            log.warning("%s=%d is not an ancestor of this process: not watching it", MANAGER_ENV, pid)
            return None
        # no such process: the manager died before this stage got here (it was still starting, and was
        # reparented), so it is gone already
        dead = True
    else:
        dead = False
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # no pidfd (Linux < 5.3): poll our ancestry instead
            fd = None

    def gone() -> bool:
        if dead:
            return True
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has exited
            return True
        while pid in ancestors():
            time.sleep(0.2)
        return True

    def watch() -> None:
        gone()
        log.warning("the process manager (pid %d) is gone: stopping", pid)
        stop.set()
        time.sleep(grace_s)
        log.error("still running %.1f s after the process manager died: exiting now", grace_s)
        exit(1)

    thread = threading.Thread(target=watch, name="manager-watch", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def native_stderr(into: list[str] | None = None) -> Iterator[None]:
    """Hide what native code writes on fd 2 meanwhile (LiteRT and MediaPipe print notices while a
    model loads), so that a start-up failure stays one line; the lines go to ``into`` when given, to
    find the native error behind an exception. Python's own errors still arrive as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if into is not None:
                tmp.seek(0)
                into.extend(tmp.read().decode(errors="replace").splitlines())


class RuntimeDirError(OSError):
    """The private runtime directory is unsafe (another owner, open mode, not a directory)."""


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """The pipeline's private directory (ipc:// sockets, capture's progress): ``$XDG_RUNTIME_DIR/emostream``,
    else ``<tmp>/emostream-<uid>``. Made with mode 0700; an existing one must be a real directory
    owned by this user with no group/other access (another user may have made it first in /tmp,
    to listen on our endpoints), else :class:`RuntimeDirError` with one line."""
    env = os.environ if env is None else env
    base = env.get("XDG_RUNTIME_DIR")
    uid = os.geteuid()
    path = Path(base) / RUNTIME_DIR if base else Path(tempfile.gettempdir()) / f"{RUNTIME_DIR}-{uid}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RuntimeDirError(f"cannot make the runtime directory {path}: {e.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} is not a directory (a symlink?): remove it")
    if st.st_uid != uid:
        raise RuntimeDirError(
            f"runtime directory {path} belongs to uid {st.st_uid}, not to this user ({uid}): remove it or set XDG_RUNTIME_DIR"
        )
    if st.st_mode & 0o077:
        raise RuntimeDirError(
            f"runtime directory {path} has mode {stat.S_IMODE(st.st_mode):o}: other users could reach its sockets; chmod 700 it"
        )
    return path


class RateLimited:
    """Log at most one line per ``interval`` seconds per key, with the count of suppressed ones."""

    def __init__(self, log: logging.Logger, interval: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.log, self.interval, self.clock = log, interval, clock
        self.last: dict[str, float] = {}
        self.suppressed: collections.Counter[str] = collections.Counter()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self.clock()
        if now - self.last.get(key, -1e18) >= self.interval:
            extra = f" (+{self.suppressed[key]} more like it)" if self.suppressed[key] else ""
            self.log.warning(msg + extra, *args)
            self.last[key] = now
            self.suppressed[key] = 0
        else:
            self.suppressed[key] += 1


class Stats:
    """Counters and a latency window; ``maybe_log`` writes one line every ``interval`` seconds:
    fps, latency p50/p95 (capture -> this stage, ms), and drops by reason."""

    def __init__(self, log: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic):
        self.log, self.interval, self.clock = log, interval, clock
        self.count = 0
        self.total = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self.latency: collections.deque[float] = collections.deque(maxlen=1000)
        self.t0 = clock()

    def frame(self, capture_ts: float | None = None, now: float | None = None) -> None:
        self.count += 1
        self.total += 1
        if capture_ts is not None:
            self.latency.append(((now if now is not None else time.time()) - capture_ts) * 1000.0)

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    def line(self) -> str:
        dt = max(1e-9, self.clock() - self.t0)
        lat = np.percentile(self.latency, [50, 95]) if self.latency else [float("nan")] * 2
        drops = " ".join(f"{k}={v}" for k, v in sorted(self.drops.items())) or "0"
        return f"fps {self.count / dt:.1f}  latency p50 {lat[0]:.1f} ms p95 {lat[1]:.1f} ms  frames {self.total}  drops {drops}"

    def maybe_log(self) -> None:
        if self.clock() - self.t0 >= self.interval:
            self.log.info("stats: %s", self.line())
            self.count = 0
            self.latency.clear()
            self.t0 = self.clock()


class Stall:
    """Notices a stream that went quiet (a stage upstream hung or died): ``check(last, now)`` gets,
    per key, when something last arrived from a stream that should still be flowing (started and not
    ended). A key silent for more than ``after_s`` seconds gets a warning with the silence's age
    (rate-limited per key), and one info line when it flows again. ``after_s = 0`` turns it off."""

    def __init__(self, log: logging.Logger, after_s: float, what: str = "source", interval: float = 5.0):
        self.log, self.after_s, self.what = log, after_s, what
        self.limited = RateLimited(log, interval)
        self.quiet: dict[str, float] = {}  # key -> when it last sent something before going quiet

    def check(self, last: dict[str, float], now: float) -> list[str]:
        """The keys silent for longer than ``after_s`` (and log about them)."""
        if self.after_s <= 0:
            return []
        silent = []
        for key, t in last.items():
            age = now - t
            if age > self.after_s:
                silent.append(key)
                self.quiet[key] = t
                self.limited.warning(
                    f"stall_{key}",
                    "%s %s: nothing has arrived for %.1f s: a stage upstream may be stuck or dead",
                    self.what,
                    key,
                    age,
                )
            elif key in self.quiet and t > self.quiet[key]:
                self.log.info("%s %s: flowing again after %.1f s of silence", self.what, key, t - self.quiet.pop(key))
        return silent


RUN_FILE_KEEP_S = 7 * 86400.0  # per-run state files older than this belong to runs long over


def open_run_file(kind: str, key: str, append: bool = False, base: Path | None = None) -> tuple[Path, int]:
    """A run's state file ``<runtime dir>/<kind>/<hash of key>`` (capture's progress, the display's
    ledger journal): owner-only, never through a symlink; files of ``kind`` older than
    :data:`RUN_FILE_KEEP_S` are swept first. Returns its path and an open read-write descriptor."""
    folder = (base or runtime_dir()) / kind
    folder.mkdir(mode=0o700, exist_ok=True)
    cutoff = time.time() - RUN_FILE_KEEP_S
    for old in folder.iterdir():
        with contextlib.suppress(OSError):  # another stage may sweep it at the same time
            if old.lstat().st_mtime < cutoff:
                old.unlink()
    path = folder / hashlib.sha256(key.encode()).hexdigest()[:32]
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    return path, os.open(path, flags, 0o600)


def close_run_file(path: Path, fd: int, done: bool) -> None:
    """Close a run's state file; ``done`` (the run is over for this stage): remove it too."""
    os.close(fd)
    if done:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
