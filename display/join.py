"""Two paths joined: a frame the detector sent straight to the display (``wait``) and its
classifier's result (a ``result`` frame with labelled faces, or the ``result`` drop a classifier
sent instead), matched by ``(src, seq)`` in either order (docs/pipeline.md#two-paths).

Consumes those two halves; produces the joined frame, ready to show: with the result's faces,
``labels`` and ``uncertain_below``, or (the result was a drop) the frame's own faces and
``no_emotions`` = the drop's reason. A half waits at most ``[display] join_wait_ms``, and at most
``[display] join_max_pending`` halves wait at once (the oldest goes first): a frame released so is
shown without emotions (``join_timeout``, ``join_full``), a result released so is ``late_result``
(its frame never came, was dropped, or was shown already). Pure: callers pass ``now``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, replace

from bus.codec import Drop, DropReason, Frame

Half = Frame | Drop


@dataclass
class Released:
    """A half that waited too long or for lack of room: a frame to show without emotions
    (``no_emotions`` set to ``reason``), or a result nobody joined (``frame`` None)."""

    frame: Frame | None
    reason: DropReason


def joined(frame: Frame, result: Half) -> Frame:
    """``frame`` with ``result``'s emotions (or, for a drop, the reason it has none)."""
    t = {**frame.t, **result.t}
    if isinstance(result, Drop):
        return replace(frame, wait=False, t=t, no_emotions=result.reason)
    return replace(
        frame, wait=False, t=t, faces=result.faces, labels=result.labels, uncertain_below=result.uncertain_below
    )


class Joins:
    """The halves waiting for each other, oldest first."""

    def __init__(self, wait_s: float, max_pending: int):
        self.wait_s, self.max_pending = wait_s, max_pending
        self.pending: collections.OrderedDict[tuple[str, int], tuple[float, Half]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, half: Half, now: float) -> tuple[Frame | None, list[Released]]:
        """Take a frame marked ``wait`` or a ``result`` half: (the joined frame when the other half
        was here, else None), and what had to make room (see the module docstring)."""
        key = (half.src, half.seq)
        other = self.pending.pop(key, None)
        out: list[Released] = []
        if other is not None:
            a, b = other[1], half
            if a.kind == "frame" and not a.result and (b.result or b.kind == "drop"):
                return joined(a, b), out
            if b.kind == "frame" and not b.result and (a.result or a.kind == "drop"):
                return joined(b, a), out
            out.append(_released(a, DropReason.JOIN_FULL))  # the same half twice: the older one goes
        while len(self.pending) >= self.max_pending:
            out.append(_released(self.pending.popitem(last=False)[1][1], DropReason.JOIN_FULL))
        self.pending[key] = (now, half)
        return None, out

    def forget(self, src: str, seq: int) -> Half | None:
        """The frame ``(src, seq)`` was accounted another way (dropped): its waiting half, if any, goes."""
        got = self.pending.pop((src, seq), None)
        return None if got is None else got[1]

    def expire(self, now: float) -> list[Released]:
        """The halves that have waited ``wait_s`` or longer."""
        out = []
        while self.pending:
            since, half = next(iter(self.pending.values()))
            if now - since < self.wait_s:
                break
            self.pending.popitem(last=False)
            out.append(_released(half, DropReason.JOIN_TIMEOUT))
        return out

    def flush(self, reason: DropReason = DropReason.STOPPED) -> list[Released]:
        """Every waiting half, released (the display stops)."""
        out = [_released(half, reason) for _, half in self.pending.values()]
        self.pending.clear()
        return out


def _released(half: Half, reason: DropReason) -> Released:
    if half.kind == "frame" and not half.result:
        return Released(replace(half, wait=False, no_emotions=reason), reason)
    return Released(None, DropReason.LATE_RESULT)
