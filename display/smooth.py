"""Temporal smoothing of each track's emotion probabilities, and its label. Pure, no I/O.

Consumes, per track id, the classifier's probability vector of each frame (in ``seq`` order);
produces the smoothed vector and the index of the track's smoothed label:

- ``ema``: exponential moving average, ``s <- s + a * (p - s)``. A gap of ``g`` frames (dropped
  upstream) weighs the new frame as ``g`` frames would have: ``a = 1 - (1 - alpha) ** g``. While a
  track is young, ``a`` is at least ``1 / n`` (``n``: its frames so far), so its first frames are
  averaged instead of the very first one dominating for ``1 / alpha`` frames.
- ``window``: the mean over the frames of the last ``window`` seqs (a gap shortens the window).
- ``off``: the raw vector and its arg-max (single images, or when asked).

The label has hysteresis in time: another label replaces the current one only after it has led
the smoothed probabilities for ``hold`` consecutive frames (1: the plain arg-max). Where two
near-equal probabilities cross back and forth (and a raw arg-max flickers) the label stays; a
real change costs ``hold - 1`` frames more. An amplitude margin was measured and rejected: with
the flat probabilities of a weak model a track's first label stuck for its whole life.
State is per track; :meth:`Smoother.retain` forgets the tracks that ended.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bus.config import DisplayConfig

MODES = ("ema", "window", "off")


@dataclass
class _State:
    seq: int
    vec: np.ndarray
    top: int
    n: int = 1
    rival: int = -1  # the label now leading the smoothed vector, if not ``top``
    lead: int = 0  # for how many consecutive frames it has led
    recent: collections.deque[tuple[int, np.ndarray]] = field(default_factory=collections.deque)


D = DisplayConfig()  # the defaults are [display]'s, written once in bus/config.py


class Smoother:
    def __init__(
        self,
        mode: str = D.smoothing,
        alpha: float = D.smoothing_alpha,
        window: int = D.smoothing_window,
        hold: int = D.smoothing_hold,
    ):
        if mode not in MODES:
            raise ValueError(f"smoothing mode must be one of {MODES}, got {mode!r}")
        if not 0.0 < alpha <= 1.0 or window < 1 or hold < 1:
            raise ValueError("alpha must be in (0, 1], window >= 1 and hold >= 1")
        self.mode, self.alpha, self.window, self.hold = mode, alpha, window, hold
        self.tracks: dict[int, _State] = {}

    def update(self, track: int, seq: int, probs: Sequence[float]) -> tuple[np.ndarray, int]:
        """The smoothed vector of ``track`` after frame ``seq`` (frames in seq order) and its label index."""
        p = np.asarray(probs, dtype=np.float64)
        if self.mode == "off":
            return p, int(np.argmax(p))
        st = self.tracks.get(track)
        if st is None or st.vec.shape != p.shape:  # a new track (or another model): start over
            st = self.tracks[track] = _State(seq, p, int(np.argmax(p)), recent=collections.deque([(seq, p)]))
            return p, st.top
        gap = max(1, seq - st.seq)
        st.n += 1
        if self.mode == "ema":
            a = max(1.0 - (1.0 - self.alpha) ** gap, 1.0 / st.n)
            st.vec = st.vec + a * (p - st.vec)
        else:
            st.recent.append((seq, p))
            while st.recent[0][0] <= seq - self.window:
                st.recent.popleft()
            st.vec = np.mean([v for _, v in st.recent], axis=0)
        st.seq = seq
        top = int(np.argmax(st.vec))
        if top == st.top:
            st.rival, st.lead = -1, 0
        else:
            st.lead = st.lead + 1 if top == st.rival else 1
            st.rival = top
            if st.lead >= self.hold:
                st.top, st.rival, st.lead = top, -1, 0
        return st.vec, st.top

    def current(self, track: int) -> tuple[np.ndarray, int] | None:
        """The latest smoothed vector and label index of ``track`` (None: unknown, or ``off``)."""
        st = self.tracks.get(track)
        return None if st is None else (st.vec, st.top)

    def retain(self, tracks: Iterable[int]) -> None:
        """Forget every track not in ``tracks``."""
        keep = set(tracks)
        for k in [k for k in self.tracks if k not in keep]:
            del self.tracks[k]
