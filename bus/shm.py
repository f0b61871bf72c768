"""Frame pixels in shared memory: a ring of slots per capture source, so that a 640x480 frame
(921,600 bytes) is written once and never crosses a socket between stages on one host.

How it works
------------
- Capture owns one :class:`Ring` per source: a file in ``/dev/shm`` named
  ``emostream-<pid>-<n>-<host>-<token>`` (``host``: a tag of this machine's boot, so a reader can
  tell a ring of another host from one that is gone) holding equal slots. :meth:`Ring.put` copies a
  frame into a free slot, bumps the slot's generation and marks it busy; the message then carries
  ``image = {"fmt": "shm", "ring", "slot", "gen", "shape"}`` (:class:`bus.codec.ShmRef`) instead of
  the pixels.
- Stages that read pixels (the detector, the display) look them up with :meth:`Rings.view`, and
  check :meth:`Rings.valid` after using them: a slot whose generation changed was reused, and the
  frame becomes a ``drop`` (reason ``overwritten``), never a wrong picture.
- The stage where a frame's journey ends (the display, for frames and drop markers alike; a stage
  printing instead of sending) calls :meth:`Rings.release`; the slot is free again. So does a
  sender that could not send the frame on (nor a drop marker for it): capture's :meth:`Ring.release`,
  a detector's :meth:`Rings.release` -- at once, not after a timeout.

Limits (every one named)
------------------------
- Size: a ring holds at most ``[bus] shm_slots`` frames and ``[bus] shm_max_bytes`` bytes, and
  uses at most half of the free space of its directory at creation (``os.statvfs``); it gets
  fewer slots when the frames are large (:attr:`Ring.note` says why), and when not even
  :data:`MIN_SLOTS` fit, :func:`create` raises :class:`ShmSpaceError` (one line naming the
  directory and its size) and capture sends the pixels in the messages instead. The file is
  allocated at creation (``posix_fallocate``): a full tmpfs fails there with ``ENOSPC``, never
  later with ``SIGBUS`` on a page written mid-run.
- In flight: when every slot is busy, capture waits for one (file sources, at most the send
  timeout) and otherwise drops the frame, counted (``ring_full``); a frame that does not fit a slot
  (:meth:`Ring.fits`) travels in the message. A busy slot is taken back (counted) once its frame
  cannot be wanted any more: a live frame after ``[bus] max_age_ms`` (every stage drops it as
  stale by then), a file frame after :data:`RECLAIM_S` -- this is what frees the slots of frames
  that died inside a killed stage.
- Readers trust nothing in a name: the file is opened without following links (``O_NOFOLLOW``),
  must be a regular file of this process's user with mode 0600 and exactly the size its header
  declares, at most ``[bus] shm_max_bytes``; the pixels are mapped read-only, and only the slot
  table is writable (a release is one store to a slot's ``state`` word).

Only capture writes pixels; the only other write is a reader's release. One 8-byte aligned store
each, so no locks are needed. Stages on other hosts cannot see the ring: no reference may reach
them. On two paths with a display that draws nothing none does (the detector releases every slot
and sends on no reference: :func:`bus.stage.unshared`), so capture and detector on one host keep the
ring; otherwise set ``[bus] shm_slots = 0`` (or ``jpeg_quality > 0``) where a stage reads frames from
another host.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import mmap
import os
import re
import secrets
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bus.codec import DropReason, ShmRef

log = logging.getLogger("bus.shm")

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
PREFIX = "emostream-"
NAME = re.compile(r"^emostream-(\d{1,10})-\d{1,6}-([0-9a-f]{8})-[0-9a-f]{8}$")
OLD_NAME = re.compile(r"^emostream-(\d{1,10})-\d{1,6}-[0-9a-f]{8}$")  # before the host tag: swept only
MAGIC = b"EMOSHM02"
HEAD = 64  # magic, slots (u64), slot_bytes (u64)
META = 3  # per slot, u64 each: generation, state (0 free, 1 busy), busy since (monotonic ns)
ALIGN = 64
PAGE = mmap.ALLOCATIONGRANULARITY  # the pixels start on a page: mapped apart from the slot table, read-only
RECLAIM_S = 10.0  # a file frame's slot busy this long belongs to a frame that will not come back
MIN_SLOTS = 2
MAX_SLOTS = 1024
FREE_SHARE = 0.5  # a new ring takes at most this share of its directory's free space
DEFAULT_MAX_BYTES = 256 << 20  # [bus] shm_max_bytes' default (bus.config)

_counter = iter(range(1, 1_000_000))
_counter_lock = threading.Lock()


def _host_tag() -> str:
    """8 hex digits naming this machine's current boot (containers of one host share it)."""
    try:
        seed = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        seed = socket.gethostname()
    return hashlib.sha256(seed.encode()).hexdigest()[:8]


HOST = _host_tag()


class ShmError(ValueError):
    """A reference to a ring or slot that is not there (another host, a closed ring, garbage) or
    a file that is not a ring of ours."""

    reason = DropReason.SHM_MISSING  # the drop reason a stage counts


class Overwritten(ShmError):
    """The slot holds a newer frame: capture took it back before we read it."""

    reason = DropReason.OVERWRITTEN


class ShmSpaceError(OSError):
    """Not even :data:`MIN_SLOTS` frames fit (cap, free space, or ``ENOSPC`` at allocation)."""


def _align(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


def _layout(slots: int, slot_bytes: int) -> tuple[int, int, int]:
    """(offset of the pixel area, bytes per slot rounded up, file size)."""
    pixels_at = _align(HEAD + slots * META * 8, PAGE)
    stride = _align(slot_bytes)
    return pixels_at, stride, pixels_at + slots * stride


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(directory: Path = SHM_DIR) -> int:
    """Remove rings left by captures that died without cleaning up (SIGKILL). Returns how many."""
    removed = 0
    for path in directory.glob(PREFIX + "*"):
        new, old = NAME.match(path.name), OLD_NAME.match(path.name)
        if new is not None and new.group(2) != HOST:
            continue  # another host's ring (a shared directory): its pids are not ours to judge
        m = new or old
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def create(
    slots: int,
    slot_bytes: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    directory: Path = SHM_DIR,
    reclaim_s: float | None = None,
) -> Ring:
    """A ring for frames of ``slot_bytes``: ``slots`` of them, or fewer within ``max_bytes`` and
    :data:`FREE_SHARE` of the directory's free space (then :attr:`Ring.note` says so). Raises
    :class:`ShmSpaceError` (one line naming the directory and its size) when not even
    :data:`MIN_SLOTS` fit."""
    fs = os.statvfs(directory)
    total, free = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
    where = f"{directory} ({_mib(total)}, {_mib(free)} free)"
    stride = _layout(1, slot_bytes)[1]
    fit_cap = (max_bytes - _layout(slots, slot_bytes)[0]) // stride
    fit_free = int(free * FREE_SHARE - _layout(slots, slot_bytes)[0]) // stride
    n = max(0, min(slots, fit_cap, fit_free))
    if n < MIN_SLOTS:
        limit = f"within [bus] shm_max_bytes = {max_bytes}" if fit_cap < MIN_SLOTS else "in half its free space"
        raise ShmSpaceError(
            errno.ENOSPC,
            f"{where}: no room for {MIN_SLOTS} frames of {_mib(slot_bytes)} {limit}; pixels travel in the "
            "messages (a larger /dev/shm, e.g. docker run --shm-size=512m, or [bus] shm_max_bytes brings the ring back)",
        )
    ring = Ring(n, slot_bytes, directory, reclaim_s)
    if n < slots:
        limit = f"[bus] shm_max_bytes = {max_bytes}" if fit_cap <= fit_free else f"half the free space of {where}"
        ring.note = f"{n} slots instead of [bus] shm_slots = {slots}: frames of {_mib(slot_bytes)} within {limit}"
    return ring


class Ring:
    """Capture's side: a ring of ``slots`` slots of ``slot_bytes`` each (one writer thread). Use
    :func:`create`, which sizes it to the space there is."""

    def __init__(self, slots: int, slot_bytes: int, directory: Path = SHM_DIR, reclaim_s: float | None = None):
        if not 1 <= slots <= MAX_SLOTS or slot_bytes <= 0:
            raise ValueError(f"ring of {slots} slots of {slot_bytes} bytes")
        with _counter_lock:
            n = next(_counter)
        self.name = f"{PREFIX}{os.getpid()}-{n}-{HOST}-{secrets.token_hex(4)}"
        self.path = directory / self.name
        self.slots, self.slot_bytes, self.reclaim_s = slots, slot_bytes, reclaim_s
        self.note: str | None = None  # why the ring has fewer slots than asked for (create)
        pixels_at, self.stride, size = _layout(slots, slot_bytes)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)  # faces: owner only
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            try:
                os.posix_fallocate(fd, 0, size)  # ENOSPC now, not SIGBUS at the first frame
            except OSError as e:
                raise ShmSpaceError(
                    e.errno, f"{directory}: cannot allocate a ring of {_mib(size)}: {e.strerror}"
                ) from None
            populate = getattr(mmap, "MAP_POPULATE", 0)  # every page mapped now: memory fixed from the start
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED | populate)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        buf = np.frombuffer(self._map, np.uint8)
        buf[:8] = np.frombuffer(MAGIC, np.uint8)
        buf[8:24].view(np.uint64)[:] = (slots, slot_bytes)
        self.meta = buf[HEAD : HEAD + slots * META * 8].view(np.uint64).reshape(slots, META)
        self.pixels = buf[pixels_at:].reshape(slots, self.stride)
        self.next = 0
        self.reclaimed = 0

    def _free_slot(self) -> int | None:
        state = self.meta[:, 1]
        for k in range(self.slots):
            i = (self.next + k) % self.slots
            if state[i] == 0:
                return i
        oldest = int(np.argmin(self.meta[:, 2]))
        reclaim_s = RECLAIM_S if self.reclaim_s is None else self.reclaim_s
        if time.monotonic_ns() - int(self.meta[oldest, 2]) > reclaim_s * 1e9:
            self.reclaimed += 1
            if self.reclaim_s is None:  # a file frame's slot: rare enough to say each time
                log.warning("ring %s: slot %d busy for over %.0f s: taken back", self.name, oldest, reclaim_s)
            return oldest
        return None

    def fits(self, image: np.ndarray) -> bool:
        """A slot can hold ``image`` (contiguous uint8, at most ``slot_bytes``)."""
        return image.dtype == np.uint8 and image.nbytes <= self.slot_bytes and image.flags.c_contiguous

    def put(self, image: np.ndarray, wait_s: float = 0.0, stop: threading.Event | None = None) -> ShmRef | None:
        """Copy ``image`` into a free slot (waiting up to ``wait_s`` for one). None: it does not fit
        (:meth:`fits`), or no slot freed up in time."""
        if not self.fits(image):
            return None
        deadline = time.monotonic() + wait_s
        i = self._free_slot()
        while i is None:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return None
            time.sleep(0.0005)
            i = self._free_slot()
        gen = int(self.meta[i, 0]) + 1
        self.meta[i, 0] = gen  # first: a late reader of the old frame now sees it is gone
        self.pixels[i, : image.nbytes] = image.reshape(-1)
        self.meta[i, 2] = time.monotonic_ns()
        self.meta[i, 1] = 1
        self.next = (i + 1) % self.slots
        shape = image.shape if image.ndim == 3 else (*image.shape, 1)
        return ShmRef(self.name, i, gen, (int(shape[0]), int(shape[1]), int(shape[2])))

    def release(self, ref: ShmRef) -> bool:
        """The frame of ``ref`` was never sent: its slot is free again at once."""
        if ref.ring != self.name or not 0 <= ref.slot < self.slots:
            return False
        if int(self.meta[ref.slot, 0]) != ref.gen or int(self.meta[ref.slot, 1]) == 0:
            return False
        self.meta[ref.slot, 1] = 0
        return True

    def busy(self) -> int:
        return int(np.count_nonzero(self.meta[:, 1]))

    def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every slot to be released (frames still on their way)."""
        deadline = time.monotonic() + timeout_s
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.busy() == 0

    def close(self) -> None:
        """Remove the ring's name (stages that mapped it keep their view until they drop it)."""
        self.path.unlink(missing_ok=True)
        for attr in ("meta", "pixels", "_map"):  # idempotent: a second close is a no-op
            self.__dict__.pop(attr, None)


class Rings:
    """A reader's side: the rings it has mapped (at most ``max_open``, least recently used closed),
    each at most ``max_bytes`` (``[bus] shm_max_bytes``)."""

    def __init__(self, directory: Path = SHM_DIR, max_open: int = 16, max_bytes: int = DEFAULT_MAX_BYTES):
        self.directory, self.max_open, self.max_bytes = directory, max_open, max_bytes
        self._open: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray, int]] = collections.OrderedDict()

    def _ring(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        got = self._open.get(name)
        if got is not None:
            self._open.move_to_end(name)
            return got
        m = NAME.match(name)
        if m is None:
            raise ShmError(f"not a ring name: {name!r}")
        if m.group(2) != HOST:
            raise ShmError(f"ring {name} is on another host; stages on other hosts need [bus] shm_slots = 0")
        meta, pixels, slot_bytes = self._map(name, int(m.group(1)))
        self._open[name] = (meta, pixels, slot_bytes)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return meta, pixels, slot_bytes

    def _map(self, name: str, pid: int) -> tuple[np.ndarray, np.ndarray, int]:
        path = self.directory / name
        flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, os.O_RDONLY | flags)  # validated before anything is mapped or opened writable
        except FileNotFoundError:
            raise ShmError(f"ring {name} is gone: its capture (pid {pid}) closed it (it ended or restarted)") from None
        except OSError as e:
            raise ShmError(f"ring {name}: cannot open {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o600:
                raise ShmError(
                    f"ring {name}: {path} is not a ring of ours (a regular file of uid {os.geteuid()}, mode 0600; "
                    f"found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): refused"
                )
            size = st.st_size
            if size < HEAD:
                raise ShmError(f"ring {name}: truncated ({size} bytes)")
            if size > self.max_bytes:
                raise ShmError(f"ring {name}: {size} bytes, over [bus] shm_max_bytes = {self.max_bytes}: refused")
            head = os.pread(fd, 24, 0)
            slots, slot_bytes = (int(v) for v in np.frombuffer(head[8:24], np.uint64))
            if head[:8] != MAGIC or not 1 <= slots <= MAX_SLOTS or _layout(slots, slot_bytes)[2] != size:
                raise ShmError(f"ring {name}: bad header")
            pixels_at, stride, _ = _layout(slots, slot_bytes)
            rw = os.open(path, os.O_RDWR | flags)  # the slot table: releases are written there
            try:
                st2 = os.fstat(rw)
                if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
                    raise ShmError(f"ring {name}: {path} was replaced while being opened: refused")
                table = mmap.mmap(rw, pixels_at, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                area = mmap.mmap(rw, size - pixels_at, mmap.MAP_SHARED, mmap.PROT_READ, offset=pixels_at)
            finally:
                os.close(rw)
        except OSError as e:
            raise ShmError(f"ring {name}: cannot map {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        meta = np.frombuffer(table, np.uint64, slots * META, HEAD).reshape(slots, META)
        pixels = np.frombuffer(area, np.uint8).reshape(slots, stride)  # read-only
        int(pixels.reshape(-1)[::PAGE].sum())  # map every page now (memory fixed from the start, as in the writer)
        return meta, pixels, slot_bytes

    def view(self, ref: ShmRef) -> np.ndarray:
        """The frame's pixels, in place and read-only (valid until the slot is released; check
        :meth:`valid` after use)."""
        meta, pixels, slot_bytes = self._ring(ref.ring)
        h, w, c = ref.shape
        if not 0 <= ref.slot < len(meta) or h * w * c > slot_bytes:
            raise ShmError(f"ring {ref.ring}: slot {ref.slot} / shape {ref.shape} out of range")
        if int(meta[ref.slot, 0]) != ref.gen:
            raise Overwritten(f"ring {ref.ring} slot {ref.slot}: frame overwritten")
        return pixels[ref.slot, : h * w * c].reshape(h, w, c)

    def _current(self, ref: ShmRef) -> np.ndarray | None:
        """The ring's slot table when the slot still holds this frame, else None."""
        try:
            meta = self._ring(ref.ring)[0]
        except ShmError:
            return None
        return meta if 0 <= ref.slot < len(meta) and int(meta[ref.slot, 0]) == ref.gen else None

    def valid(self, ref: ShmRef) -> bool:
        """The slot still holds this frame (call after reading the pixels)."""
        return self._current(ref) is not None

    def release(self, ref: ShmRef) -> bool:
        """The frame's journey ended here (or it could not be sent on): its slot is free for
        capture. False when it was not ours to release any more (reused, or the ring is gone)."""
        meta = self._current(ref)
        if meta is None:
            return False
        meta[ref.slot, 1] = 0
        return True

    def close(self) -> None:
        self._open.clear()
