"""CK+48 folders (``<root>/<class>/S<subject>_<seq>_<frame>.png``) and the generic image-folder layout
(``<root>/<class>/*.jpg|png``, or ``<root>/train|test/<class>/...``).

CK+ subject ids come from the file names, so cross-validation can keep every subject on one side.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from bus.preprocess import to_model_pixels
from training.data import Dataset, DatasetError, report_skipped

CK_CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
# CK+ folder names -> the label vocabulary the runtime shows (same words as FER2013 where they mean the same).
CK_LABELS = ["angry", "contempt", "disgust", "fear", "happy", "sad", "surprise"]
CK_NAME = re.compile(r"^S(\d+)_(\d+)_(\d+)\.png$", re.IGNORECASE)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".webp"}


def _read_grey(path: Path, size: int) -> np.ndarray | None:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    return to_model_pixels(image, size, "grey")[:, :, 0]


def load_folder(root: Path, classes: list[str] | None = None, size: int = 48) -> Dataset:
    """``root/<class>/<image>``; classes are the sub-folder names (sorted) unless given."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    names = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise DatasetError(f"{root}: no class sub-folders")
    images, labels, skipped = [], [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise DatasetError(f"{root}: class folder {name!r} missing")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(f"{path}: not an image file")
                continue
            grey = _read_grey(path, size)
            if grey is None:
                skipped.append(f"{path}: unreadable image")
                continue
            images.append(grey)
            labels.append(label)
    report_skipped(skipped, str(root))
    if not images:
        raise DatasetError(f"{root}: no readable images")
    return Dataset(np.stack(images), np.array(labels, np.int64), list(names), skipped=skipped)


def load_ck(root: Path) -> Dataset:
    """CK+48 with ``groups`` = subject id. Files not named ``S<subj>_<seq>_<frame>.png`` are skipped."""
    data = load_folder(root, CK_CLASSES)
    paths = [
        p
        for name in CK_CLASSES
        for p in sorted((Path(root) / name).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and cv2.haveImageReader(str(p))
    ]
    if len(paths) != len(data):
        raise DatasetError(f"{root}: {len(paths)} files but {len(data)} readable images")
    subjects, keep, skipped = [], [], []
    for i, p in enumerate(paths):
        m = CK_NAME.match(p.name)
        if m is None:
            skipped.append(f"{p}: name is not S<subject>_<seq>_<frame>.png")
            continue
        subjects.append(int(m.group(1)))
        keep.append(i)
    report_skipped(skipped, "CK+")
    if not keep:
        raise DatasetError(f"{root}: no CK+ images (S<subject>_<seq>_<frame>.png)")
    idx = np.array(keep)
    return Dataset(
        data.images[idx],
        data.labels[idx],
        CK_LABELS,
        groups=np.array(subjects, np.int64),
        skipped=data.skipped + skipped,
    )


def subject_folds(groups: np.ndarray, k: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Split indices into ``k`` folds with no subject in two folds (subjects shuffled, then dealt
    greedily to the smallest fold so folds are balanced by image count)."""
    subjects = np.unique(groups)
    if len(subjects) < k:
        raise ValueError(f"{len(subjects)} subjects: fewer than {k} folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(subjects)
    sizes = {s: int((groups == s).sum()) for s in order}
    ranked = sorted(order, key=lambda s: -sizes[s])  # largest first, ties in shuffled order
    folds: list[list[int]] = [[] for _ in range(k)]
    load = [0] * k
    for s in ranked:
        j = int(np.argmin(load))
        folds[j].append(int(s))
        load[j] += sizes[s]
    return [np.flatnonzero(np.isin(groups, f)) for f in folds]
