"""Frame pixels in shared memory: a ring of slots per capture source, so that a 640x480 frame
(921,600 bytes) is written once and never crosses a socket between stages on one host.

How it works
------------
- Capture owns one :class:`Ring` per source: a file in ``/dev/shm`` named
  ``emostream-<pid>-<n>-<token>`` holding ``slots`` equal slots. :meth:`Ring.put` copies a frame into
  a free slot, bumps the slot's generation and marks it busy; the message then carries
  ``image = {"fmt": "shm", "ring", "slot", "gen", "shape"}`` (:class:`bus.codec.ShmRef`) instead of
  the pixels.
- Stages that read pixels (the detector, the display) look them up with :meth:`Rings.view`, and
  check :meth:`Rings.valid` after using them: a slot whose generation changed was reused, and the
  frame becomes a ``drop`` (reason ``overwritten``), never a wrong picture.
- The stage where a frame's journey ends (the display, for frames and drop markers alike; a stage
  printing instead of sending) calls :meth:`Rings.release`; the slot is free again.
- The ring bounds the frames in flight: when every slot is busy, capture waits for one (file
  sources, at most the send timeout) and otherwise drops the frame, counted (``ring_full``); a frame
  that does not fit a slot (:meth:`Ring.fits`) travels in the message, as with ``shm_slots = 0``.
  A slot that stays busy for :data:`RECLAIM_S` (a stage died holding it) is taken back, counted.

Only capture writes pixels; the only other write is a reader's release (the slot's ``state``
word). One 8-byte aligned store each, so no locks are needed. Stages on other hosts cannot see the
ring: set ``[bus] shm_slots = 0`` (or ``jpeg_quality > 0``) there.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bus.codec import ShmRef

log = logging.getLogger("bus.shm")

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
PREFIX = "emostream-"
NAME = re.compile(r"^emostream-\d{1,10}-\d{1,6}-[0-9a-f]{8}$")
MAGIC = b"EMOSHM01"
HEAD = 64  # magic, slots (u64), slot_bytes (u64)
META = 3  # per slot, u64 each: generation, state (0 free, 1 busy), busy since (monotonic ns)
ALIGN = 64
RECLAIM_S = 10.0  # a slot busy this long belongs to a frame that will not come back
MAX_SLOTS = 1024

_counter = iter(range(1, 1_000_000))
_counter_lock = threading.Lock()


class ShmError(ValueError):
    """A reference to a ring or slot that is not there (another host, a restarted capture, garbage)."""

    reason = "shm_missing"  # the drop reason a stage counts


class Overwritten(ShmError):
    """The slot holds a newer frame: capture took it back (:data:`RECLAIM_S`) before we read it."""

    reason = "overwritten"


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _layout(slots: int, slot_bytes: int) -> tuple[int, int, int]:
    """(offset of the pixel area, bytes per slot rounded up, file size)."""
    pixels_at = _align(HEAD + slots * META * 8)
    stride = _align(slot_bytes)
    return pixels_at, stride, pixels_at + slots * stride


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
        if not NAME.match(path.name):
            continue
        pid = int(path.name.split("-")[1])
        if pid != os.getpid() and not _pid_alive(pid):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


class Ring:
    """Capture's side: a ring of ``slots`` slots of ``slot_bytes`` each (one writer thread)."""

    def __init__(self, slots: int, slot_bytes: int, directory: Path = SHM_DIR):
        if not 1 <= slots <= MAX_SLOTS or slot_bytes <= 0:
            raise ValueError(f"ring of {slots} slots of {slot_bytes} bytes")
        with _counter_lock:
            n = next(_counter)
        self.name = f"{PREFIX}{os.getpid()}-{n}-{secrets.token_hex(4)}"
        self.path = directory / self.name
        self.slots, self.slot_bytes = slots, slot_bytes
        pixels_at, self.stride, size = _layout(slots, slot_bytes)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # faces: owner only
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        self._map = np.memmap(self.path, np.uint8, "r+", 0, (size,))
        self._map[:] = 0  # all pages now: the ring's memory is fixed from the first frame on, never grows
        self._map[:8] = np.frombuffer(MAGIC, np.uint8)
        self._map[8:24].view(np.uint64)[:] = (slots, slot_bytes)
        self.meta = self._map[HEAD : HEAD + slots * META * 8].view(np.uint64).reshape(slots, META)
        self.pixels = self._map[pixels_at:].reshape(slots, self.stride)
        self.next = 0
        self.reclaimed = 0

    def _free_slot(self) -> int | None:
        state = self.meta[:, 1]
        for k in range(self.slots):
            i = (self.next + k) % self.slots
            if state[i] == 0:
                return i
        oldest = int(np.argmin(self.meta[:, 2]))
        if time.monotonic_ns() - int(self.meta[oldest, 2]) > RECLAIM_S * 1e9:
            self.reclaimed += 1
            log.warning("ring %s: slot %d busy for over %.0f s: taken back", self.name, oldest, RECLAIM_S)
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

    def busy(self) -> int:
        return int(np.count_nonzero(self.meta[:, 1]))

    def close(self) -> None:
        """Remove the ring's name (stages that mapped it keep their view until they drop it)."""
        self.path.unlink(missing_ok=True)
        self.__dict__.pop("_map", None)  # idempotent: a second close is a no-op


class Rings:
    """A reader's side: the rings it has mapped (at most ``max_open``, least recently used closed)."""

    def __init__(self, directory: Path = SHM_DIR, max_open: int = 16):
        self.directory, self.max_open = directory, max_open
        self._open: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray, int]] = collections.OrderedDict()

    def _ring(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        got = self._open.get(name)
        if got is not None:
            self._open.move_to_end(name)
            return got
        if not NAME.match(name):
            raise ShmError(f"not a ring name: {name!r}")
        path = self.directory / name
        try:
            size = path.stat().st_size
            mm = np.memmap(path, np.uint8, "r+", 0, (size,)) if size >= HEAD else None
        except (OSError, ValueError) as e:
            raise ShmError(
                f"ring {name} is not on this host ({type(e).__name__}); stages on other hosts need [bus] shm_slots = 0"
            ) from None
        if mm is None:
            raise ShmError(f"ring {name}: truncated ({size} bytes)")
        slots, slot_bytes = (int(v) for v in mm[8:24].view(np.uint64))
        pixels_at, stride, expected = _layout(slots, slot_bytes)
        if bytes(mm[:8]) != MAGIC or not 1 <= slots <= MAX_SLOTS or expected != size:
            raise ShmError(f"ring {name}: bad header")
        meta = mm[HEAD : HEAD + slots * META * 8].view(np.uint64).reshape(slots, META)
        pixels = mm[pixels_at:].reshape(slots, stride)
        int(mm[::4096].sum())  # map every page now (memory fixed from the start, as in the writer)
        self._open[name] = (meta, pixels, slot_bytes)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return meta, pixels, slot_bytes

    def view(self, ref: ShmRef) -> np.ndarray:
        """The frame's pixels, in place (valid until the slot is released; check :meth:`valid` after use)."""
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
        """The frame's journey ended here: its slot is free for capture. False when it was not ours
        to release any more (reused, or the ring is gone)."""
        meta = self._current(ref)
        if meta is None:
            return False
        meta[ref.slot, 1] = 0
        return True

    def close(self) -> None:
        self._open.clear()
