"""Dataset loaders. Each returns a :class:`Dataset`: uint8 N x 48 x 48 grey images plus labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("training.data")


class DatasetError(Exception):
    """A dataset is missing, empty or unreadable."""


@dataclass
class Dataset:
    """Images (N x H x W uint8 grey), integer labels, optional soft targets and group ids."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    soft: np.ndarray | None = None
    groups: np.ndarray | None = None
    rows: np.ndarray | None = None  # each image's row in the source file (FER2013: CSV data row, from 0)
    teacher: np.ndarray | None = None  # teachers' probabilities (distillation), N x classes
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(
            self.images[index],
            self.labels[index],
            self.classes,
            None if self.soft is None else self.soft[index],
            None if self.groups is None else self.groups[index],
            None if self.rows is None else self.rows[index],
            teacher=None if self.teacher is None else self.teacher[index],
        )

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, c, strict=True)}


def report_skipped(skipped: list[str], what: str) -> None:
    """Log every malformed entry (first 20 in full) and the total: nothing is dropped silently."""
    for line in skipped[:20]:
        log.warning("%s: skipped %s", what, line)
    if skipped:
        log.warning("%s: %d malformed entries skipped in total", what, len(skipped))
