"""Messages a stage owes downstream: what it could not send when it tried.

A live frame that finds the next stage's queue full is dropped, and the sink must still account
for it; but the ``drop`` marker that says so usually finds the same full queue. Such markers (and
``drop``/``eos`` messages that could not be passed on) wait here and go out, without blocking,
before the next message and whenever the stage is idle, so the display's ledger stays exact
(issue 11 case 14: detector send drops of live frames used to show up as ``lost``). At most
:data:`OWED_MAX` wait (markers are a few hundred bytes: under 1 MB); beyond, the oldest is
forgotten and counted.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

OWED_MAX = 4096

Parts = list[Any]


class Owed:
    def __init__(self, limit: int = OWED_MAX):
        self.queue: collections.deque[Parts] = collections.deque()
        self.limit = limit
        self.forgotten = 0

    def add(self, parts: Parts) -> None:
        if len(self.queue) >= self.limit:
            self.queue.popleft()
            self.forgotten += 1
        self.queue.append(parts)

    def flush(self, send: Callable[[Parts], bool]) -> int:
        """Send in order until one does not go; how many went."""
        sent = 0
        while self.queue and send(self.queue[0]):
            self.queue.popleft()
            sent += 1
        return sent

    def __len__(self) -> int:
        return len(self.queue)
