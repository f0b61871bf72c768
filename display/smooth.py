"""Temporal smoothing of each track's emotion probabilities. Pure, no I/O.

Consumes, per track id, the classifier's probability vector of each frame (in ``seq`` order);
produces the smoothed vector, whose arg-max is the track's ``smoothed_label``:

- ``ema``: exponential moving average, ``s <- s + a * (p - s)``. A gap of ``g`` frames (dropped
  upstream) weighs the new frame as ``g`` frames would have: ``a = 1 - (1 - alpha) ** g``.
- ``window``: the mean over the frames of the last ``window`` seqs (a gap shortens the window).
- ``off``: the raw vector (single images, or when asked).

State is per track; :meth:`Smoother.retain` forgets the tracks that ended.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

import numpy as np

MODES = ("ema", "window", "off")


class Smoother:
    def __init__(self, mode: str = "ema", alpha: float = 0.2, window: int = 15):
        if mode not in MODES:
            raise ValueError(f"smoothing mode must be one of {MODES}, got {mode!r}")
        if not 0.0 < alpha <= 1.0 or window < 1:
            raise ValueError("alpha must be in (0, 1] and window >= 1")
        self.mode, self.alpha, self.window = mode, alpha, window
        self.state: dict[int, tuple[int, np.ndarray]] = {}  # ema: track -> (last seq, average)
        self.recent: dict[int, collections.deque[tuple[int, np.ndarray]]] = {}  # window: track -> (seq, probs)

    def update(self, track: int, seq: int, probs: Sequence[float]) -> np.ndarray:
        """The smoothed vector of ``track`` after the frame ``seq`` (frames in seq order)."""
        p = np.asarray(probs, dtype=np.float64)
        if self.mode == "off":
            return p
        if self.mode == "ema":
            last = self.state.get(track)
            if last is None or last[1].shape != p.shape:
                s = p
            else:
                a = 1.0 - (1.0 - self.alpha) ** max(1, seq - last[0])
                s = last[1] + a * (p - last[1])
            self.state[track] = (seq, s)
            return s
        q = self.recent.setdefault(track, collections.deque())
        if q and q[-1][1].shape != p.shape:
            q.clear()
        q.append((seq, p))
        while q[0][0] <= seq - self.window:
            q.popleft()
        return np.mean([v for _, v in q], axis=0)

    def current(self, track: int) -> np.ndarray | None:
        """The latest smoothed vector of ``track`` without a new frame (None: unknown, or ``off``)."""
        if self.mode == "ema" and track in self.state:
            return self.state[track][1]
        if self.mode == "window" and self.recent.get(track):
            return np.mean([v for _, v in self.recent[track]], axis=0)
        return None

    def retain(self, tracks: Iterable[int]) -> None:
        """Forget every track not in ``tracks``."""
        keep = set(tracks)
        for d in (self.state, self.recent):
            for k in [k for k in d if k not in keep]:
                del d[k]
