"""Per-face tracking within one source: each face keeps an id while it stays in view. Pure, no I/O.

:class:`Tracker` follows boxes; :class:`Follow` joins it with a per-track
:class:`display.smooth.Smoother` and gives each classified face a :class:`Tracked` (id, smoothed
probabilities, smoothed label) for the events record, the overlay and the web page.

Consumes, frame by frame in ``seq`` order, the face boxes ``[x, y, w, h]`` of one source; produces
one track id per box (ints from 1, never reused). No identity recognition: a face that leaves and
comes back after the track ended gets a new id.

Matching: every live track predicts its box at the new frame (last box moved by its smoothed
velocity, so two faces that cross keep their ids), then pairs (track, box) are taken greedily by
decreasing IoU, each at least ``iou_min``. A box left over starts a track (birth); a track that
found no box for more than ``max_missed`` frames ends (death). Gaps in ``seq`` (frames dropped
upstream) count as missed frames. A frame older than the newest one seen (it arrived late through
a parallel detector/classifier copy) is matched read-only: it gets the ids of the tracks it
overlaps and changes no state, so tracking stays sequential. A scene cut (see :class:`Follow`)
ends every track.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bus.codec import Face
from bus.config import DisplayConfig
from display.smooth import Smoother

Box = tuple[float, float, float, float]  # x, y, w, h
VELOCITY_GAIN = 0.5  # how much of the newest displacement enters the velocity estimate
MAX_CUTS = 10000  # scene cuts remembered per source (for reports)


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """IoU of every box of ``a`` (rows) with every box of ``b`` (columns); empty boxes give 0."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    p, q = np.asarray(a, float)[:, None, :], np.asarray(b, float)[None, :, :]
    w = np.clip(np.minimum(p[..., 0] + p[..., 2], q[..., 0] + q[..., 2]) - np.maximum(p[..., 0], q[..., 0]), 0, None)
    h = np.clip(np.minimum(p[..., 1] + p[..., 3], q[..., 1] + q[..., 3]) - np.maximum(p[..., 1], q[..., 1]), 0, None)
    inter = w * h
    union = np.clip(p[..., 2] * p[..., 3], 0, None) + np.clip(q[..., 2] * q[..., 3], 0, None) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_pairs(scores: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """(row, column) pairs by decreasing score, each row and column used once, scores >= ``minimum``."""
    rows, cols = np.nonzero(scores >= minimum)
    order = np.argsort(-scores[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for i in order:
        r, c = int(rows[i]), int(cols[i])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


@dataclass
class Track:
    id: int
    box: Box
    first_seq: int
    last_seq: int
    hits: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)  # box corner displacement per frame

    def predict(self, seq: int) -> Box:
        gap = seq - self.last_seq
        x, y, w, h = self.box
        return (x + self.velocity[0] * gap, y + self.velocity[1] * gap, w, h)

    def update(self, seq: int, box: Box) -> None:
        gap = max(1, seq - self.last_seq)
        dx, dy = (box[0] - self.box[0]) / gap, (box[1] - self.box[1]) / gap
        if self.hits == 1:
            self.velocity = (dx, dy)
        else:
            g = VELOCITY_GAIN
            self.velocity = (
                self.velocity[0] + g * (dx - self.velocity[0]),
                self.velocity[1] + g * (dy - self.velocity[1]),
            )
        self.box, self.last_seq = box, seq
        self.hits += 1


class Tracker:
    """The tracks of one source. ``update`` once per frame, in ``seq`` order (late frames are read-only)."""

    def __init__(self, iou_min: float = DisplayConfig().track_iou, max_missed: int = DisplayConfig().track_max_missed):
        if not 0.0 < iou_min < 1.0 or max_missed < 0:
            raise ValueError("iou_min must be in (0, 1) and max_missed >= 0")
        self.iou_min, self.max_missed = iou_min, max_missed
        self.tracks: list[Track] = []
        self.next_id = 1
        self.seq: int | None = None  # the newest frame seen

    def end_all(self) -> None:
        """Every track ends (a scene cut): the next faces get new ids."""
        self.tracks = []

    def ids(self) -> set[int]:
        """Ids of the live tracks."""
        return {t.id for t in self.tracks}

    def update(self, seq: int, boxes: Sequence[Box]) -> list[int | None]:
        """One id per box. None only for a box of a late frame that matches no live track."""
        if self.seq is not None and seq <= self.seq:
            return self._lookup(seq, boxes)
        self.seq = seq
        self.tracks = [t for t in self.tracks if seq - t.last_seq - 1 <= self.max_missed]
        predicted = [t.predict(seq) for t in self.tracks]
        ids: list[int | None] = [None] * len(boxes)
        for r, c in greedy_pairs(iou_matrix(predicted, boxes), self.iou_min):
            self.tracks[r].update(seq, boxes[c])
            ids[c] = self.tracks[r].id
        for c, box in enumerate(boxes):
            if ids[c] is None:
                track = Track(self.next_id, box, seq, seq)
                self.next_id += 1
                self.tracks.append(track)
                ids[c] = track.id
        return ids

    def _lookup(self, seq: int, boxes: Sequence[Box]) -> list[int | None]:
        ids: list[int | None] = [None] * len(boxes)
        predicted = [t.predict(seq) for t in self.tracks]
        for r, c in greedy_pairs(iou_matrix(predicted, boxes), self.iou_min):
            ids[c] = self.tracks[r].id
        return ids


@dataclass(frozen=True)
class Tracked:
    """What tracking adds to one face: its track id and smoothed probabilities (``labels`` order)."""

    track: int | None
    smoothed: list[float] | None = None
    smoothed_label: str | None = None


class Follow:
    """One source's tracker and per-track smoother: a classified frame's faces -> :class:`Tracked`.

    With ``cut`` > 0 it also ends every track at a scene cut (an edited video: another shot, so
    another person may stand where the last one stood): a frame whose grey 48x64 thumbnail
    (:func:`bus.preprocess.thumbnail`, made from the pixels by the display or, when the display gets
    none, by the detector: the frame's ``thumb``) differs from the previous frame's by more than
    ``cut`` (mean absolute difference, 0..255). Measured on the research videos: cuts 17..57,
    consecutive frames of one shot at most 7.2.
    """

    def __init__(self, tracker: Tracker, smoother: Smoother, cut: float = 0.0):
        self.tracker, self.smoother, self.cut = tracker, smoother, cut
        self.thumb: np.ndarray | None = None
        self.cuts: collections.deque[int] = collections.deque(maxlen=MAX_CUTS)  # seqs of the latest cuts

    def _scene_cut(self, thumb: np.ndarray) -> bool:
        now = thumb.astype(np.float32)
        prev, self.thumb = self.thumb, now
        return prev is not None and float(np.mean(np.abs(now - prev))) > self.cut

    def faces(
        self, seq: int, faces: Sequence[Face], labels: Sequence[str] | None, thumb: np.ndarray | None = None
    ) -> list[Tracked]:
        """The tracking of one frame's ``faces``; ``thumb``: its grey thumbnail
        (:func:`bus.preprocess.thumbnail`), for the scene cuts (None: no cut detection on this frame)."""
        late = self.tracker.seq is not None and seq <= self.tracker.seq
        if not late and self.cut > 0 and thumb is not None and self._scene_cut(thumb):
            self.tracker.end_all()
            self.cuts.append(seq)
        ids = self.tracker.update(seq, [f.box for f in faces])
        out = []
        for face, tid in zip(faces, ids, strict=True):
            if face.probs is None or not face.probs:
                out.append(Tracked(tid))
                continue
            got: tuple[np.ndarray, int] | None = None
            if tid is not None:
                got = self.smoother.current(tid) if late else self.smoother.update(tid, seq, face.probs)
            if got is None or len(got[0]) != len(face.probs):
                got = np.asarray(face.probs, dtype=np.float64), int(np.argmax(face.probs))
            s, top = got
            label = labels[top] if labels is not None and len(labels) == len(s) else str(top)  # as event() keys
            out.append(Tracked(tid, [float(v) for v in s], label))
        if not late:
            self.smoother.retain(self.tracker.ids())
        return out
