"""The display's ledger, kept on disk for the length of a pipeline run, so a restarted display goes on
counting where the killed one stopped (issue 11: read = in events + dropped + lost stays exact across
a ``kill -9`` of the display under a process manager).

Consumes the ledger's updates (one short JSON line per frame, drop marker or eos, written with one
unbuffered ``write``: a killed process leaves at most a torn last line, which replay skips); produces,
at start-up, the same updates again for a fresh :class:`display.worker.Ledger`. Kept in
``<runtime dir>/ledger/<hash of run id and events path>`` (owner-only, like capture's progress), only
when the run has an id (``EMOSTREAM_RUN``): without one a later, unrelated run must never inherit
counts. A clean end of the run removes it; old files are swept (:func:`bus.runtime.open_run_file`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus.runtime import close_run_file, open_run_file


class Journal:
    def __init__(self, run: str, events: str, base: Path | None = None):
        self.fd: int | None
        self.path, self.fd = open_run_file("ledger", f"{run}\0{events}", append=True, base=base)

    def replay(self) -> Iterator[list[Any]]:
        """The updates of the displays of this run before this one (a torn last line skipped)."""
        with open(self.path, "rb") as f:
            data = f.read()
        *lines, torn = data.split(b"\n")  # torn: what follows the last newline (a kill's half line, or b"")
        if torn:
            assert self.fd is not None
            os.ftruncate(self.fd, len(data) - len(torn))
        for line in lines:
            if line:
                with contextlib.suppress(ValueError):
                    yield json.loads(line)

    def write(self, update: list[Any]) -> None:
        if self.fd is not None:
            os.write(self.fd, json.dumps(update, separators=(",", ":")).encode() + b"\n")

    def close(self, done: bool) -> None:
        """``done``: the run ended and was accounted for: the journal is not needed any more."""
        if self.fd is not None:
            close_run_file(self.path, self.fd, done)
            self.fd = None
