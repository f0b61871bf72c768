"""FER2013 (canonical ``emotion,pixels,Usage`` CSV) and FER+ labels (``fer2013new.csv``).

The CSV may be plain, gzipped, or given as several gzip parts whose concatenation is one gzip
(``fer2013.csv.gz.part1`` + ``.part2``). Splits: Training, PublicTest, PrivateTest.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from training.data import Dataset, DatasetError, report_skipped

FER_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
# FER+ column order in fer2013new.csv, mapped to our label vocabulary.
FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FERPLUS_CLASSES = ["neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt"]
SPLITS = ("Training", "PublicTest", "PrivateTest")
PIXELS = 48 * 48


def find_csv(path: Path) -> list[Path]:
    """The file(s) that make up the FER2013 CSV under ``path`` (a file, a part, or a folder)."""
    path = Path(path)
    if path.is_dir():
        for name in ("fer2013.csv", "fer2013.csv.gz"):
            if (path / name).is_file():
                return [path / name]
        parts = sorted(path.glob("fer2013.csv.gz.part*"))
        if parts:
            return parts
        raise DatasetError(f"no fer2013.csv, fer2013.csv.gz or fer2013.csv.gz.part* in {path}")
    if path.is_file():
        if ".part" in path.name:
            return sorted(path.parent.glob(path.name.split(".part")[0] + ".part*"))
        return [path]
    raise DatasetError(f"FER2013 data not found: {path}")


def _open_text(files: list[Path]) -> io.TextIOBase:
    raw = b"".join(f.read_bytes() for f in files) if len(files) > 1 else files[0].read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)  # multi-member gzip: the parts' concatenation
    return io.StringIO(raw.decode("ascii", errors="replace"))


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(_open_text(find_csv(path)))
    header = next(reader, None)
    if header is None:
        raise DatasetError(f"{path}: empty CSV")
    if [h.strip() for h in header[:3]] != ["emotion", "pixels", "Usage"]:
        raise DatasetError(f"{path}: header is {header!r}, expected emotion,pixels,Usage")
    yield from enumerate(reader, start=2)


def load_fer(path: Path, ferplus: Path | None = None) -> dict[str, Dataset]:
    """Load every split. With ``ferplus`` (fer2013new.csv), labels become the FER+ majority vote
    (8 classes) and ``soft`` holds the vote distribution; rows FER+ marks unknown/not-a-face, or
    with no majority, are skipped and counted."""
    images: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    rows_of: dict[str, list[int]] = {s: [] for s in SPLITS}
    skipped: list[str] = []
    for index, (lineno, row) in enumerate(_rows(path)):
        if len(row) < 3:
            skipped.append(f"line {lineno}: {len(row)} fields")
            continue
        emotion, pixels, usage = row[0].strip(), row[1], row[2].strip()
        if usage not in images:
            skipped.append(f"line {lineno}: unknown Usage {usage!r}")
            continue
        if not emotion.isdigit() or int(emotion) >= len(FER_CLASSES):
            skipped.append(f"line {lineno}: unknown label {emotion!r}")
            continue
        try:
            values = np.array(pixels.split(), dtype=np.int32)
        except ValueError:
            skipped.append(f"line {lineno}: non-numeric pixels")
            continue
        if values.size != PIXELS or values.min(initial=0) < 0 or values.max(initial=0) > 255:
            skipped.append(f"line {lineno}: {values.size} pixels (expected {PIXELS}) or out of 0..255")
            continue
        images[usage].append(values.astype(np.uint8).reshape(48, 48))
        labels[usage].append(int(emotion))
        rows_of[usage].append(index)
    report_skipped(skipped, "FER2013")
    if not any(labels.values()):
        raise DatasetError(f"{path}: no usable rows")
    out = {
        s: Dataset(
            np.stack(images[s]) if images[s] else np.zeros((0, 48, 48), np.uint8),
            np.array(labels[s], np.int64),
            FER_CLASSES,
            rows=np.array(rows_of[s], np.int64),
            skipped=skipped,
        )
        for s in SPLITS
    }
    if ferplus is None:
        return out
    votes = load_ferplus_votes(ferplus)
    for s in SPLITS:
        idx = np.array(rows_of[s], np.int64)
        out[s] = _relabel_ferplus(out[s], votes, idx, s)
    return out


def load_ferplus_votes(path: Path) -> np.ndarray:
    """fer2013new.csv -> (rows x 10) vote counts: 8 emotions, unknown, not-a-face; row order = CSV."""
    path = Path(path)
    if path.is_dir():
        path = path / "fer2013new.csv"
    if not path.is_file():
        raise DatasetError(f"FER+ labels not found: {path}")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[2:10] != FERPLUS_COLUMNS:
            raise DatasetError(f"{path}: header {header!r} is not the FER+ layout")
        rows = []
        for lineno, row in enumerate(reader, start=2):
            try:
                rows.append([int(v) for v in row[2:12]])
            except ValueError as e:
                raise DatasetError(f"{path}: line {lineno}: {e}") from None
    return np.array(rows, np.int64)


def _relabel_ferplus(data: Dataset, votes: np.ndarray, rows: np.ndarray, split: str) -> Dataset:
    v = votes[rows]
    emo = v[:, :8].astype(np.float32)
    total = emo.sum(axis=1)
    top = emo.argmax(axis=1)
    # Majority vote as in the FER+ paper: the winner must hold more than half of the emotion votes
    # and beat "unknown" and "not a face".
    keep = (total > 0) & (emo.max(axis=1) > total / 2) & (emo.max(axis=1) > v[:, 8]) & (emo.max(axis=1) > v[:, 9])
    soft = emo / np.maximum(total, 1)[:, None]
    dropped = int((~keep).sum())
    if dropped:
        from training.data import log

        log.info("FER+ %s: %d images without a clear majority or not a face skipped", split, dropped)
    return Dataset(data.images[keep], top[keep].astype(np.int64), FERPLUS_CLASSES, soft[keep], rows=rows[keep])


def ferplus_blend(data: Dataset, votes: np.ndarray, weight: float) -> Dataset:
    """FER2013 labels softened by the FER+ crowd votes of the same images: target = (1 - weight) * one-hot
    + weight * the vote share of the seven FER2013 emotions (contempt, unknown and not-a-face votes left
    out). Images with none of those votes keep their one-hot label. Labels (and so the test protocol) stay
    FER2013's."""
    if data.rows is None:
        raise ValueError("ferplus_blend needs FER2013 rows (load_fer sets them)")
    v = votes[data.rows]
    order = [FERPLUS_CLASSES.index(c) for c in FER_CLASSES]
    emo = v[:, order].astype(np.float32)
    total = emo.sum(axis=1, keepdims=True)
    onehot = np.eye(len(FER_CLASSES), dtype=np.float32)[data.labels]
    share = np.where(total > 0, emo / np.maximum(total, 1), onehot)
    soft = (1.0 - weight) * onehot + weight * share
    return Dataset(data.images, data.labels, data.classes, soft, data.groups, data.rows, skipped=data.skipped)
