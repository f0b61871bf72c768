"""The display's ledger, kept on disk for the length of a pipeline run, so a restarted display goes on
counting where the killed one stopped (issue 11: read = in events + dropped + lost stays exact across
a ``kill -9`` of the display under a process manager).

Consumes the ledger's updates (one short JSON line per frame, drop marker or eos, written with one
unbuffered ``write``: a killed process leaves at most a torn last line, which replay skips); produces,
at start-up, the same updates again for a fresh :class:`display.worker.Ledger`. Kept in
``<runtime dir>/ledger/<hash of run id and events path>`` (owner-only, like capture's progress), only
when the run has an id (``EMOSTREAM_RUN``): without one a later, unrelated run must never inherit
counts. A clean end of the run removes it; files older than :data:`KEEP_S` are swept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus.runtime import runtime_dir

KEEP_S = 7 * 86400.0


class Journal:
    def __init__(self, run: str, events: str, base: Path | None = None):
        folder = (base or runtime_dir()) / "ledger"
        folder.mkdir(mode=0o700, exist_ok=True)
        cutoff = time.time() - KEEP_S
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                if p.lstat().st_mtime < cutoff:
                    p.unlink()
        key = hashlib.sha256(f"{run}\0{events}".encode()).hexdigest()[:32]
        self.path = folder / key
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd: int | None = os.open(self.path, flags, 0o600)

    def replay(self) -> Iterator[list[Any]]:
        """The updates of the displays of this run before this one (a torn last line skipped)."""
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        if not data.endswith(b"\n") and lines[-1]:
            lines = lines[:-1]  # torn by a kill
            assert self.fd is not None
            os.ftruncate(self.fd, len(data) - len(data.split(b"\n")[-1]))
        for line in lines:
            if line:
                with contextlib.suppress(ValueError):
                    yield json.loads(line)

    def write(self, update: list[Any]) -> None:
        if self.fd is not None:
            os.write(self.fd, json.dumps(update, separators=(",", ":")).encode() + b"\n")

    def close(self, done: bool) -> None:
        """``done``: the run ended and was accounted for: the journal is not needed any more."""
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        if done:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
