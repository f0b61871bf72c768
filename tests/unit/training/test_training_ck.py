"""CK+48 and image-folder loaders, and subject-independent folds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import DatasetError
from training.data.ck import CK_CLASSES, CK_LABELS, load_ck, load_folder, subject_folds


def make_ck(root: Path, subjects: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CK_CLASSES):
        (root / name).mkdir(parents=True)
        for s in range(subjects):
            for frame in range(2):
                img = rng.integers(0, 255, (48, 48), dtype=np.uint8)
                cv2.imwrite(str(root / name / f"S{s + 10:03d}_{c + 1:03d}_{frame:08d}.png"), img)
    return root


def test_ck_layout(tmp_path: Path) -> None:
    data = load_ck(make_ck(tmp_path / "ck"))
    assert len(data) == 7 * 4 * 2 and data.classes == CK_LABELS
    assert data.groups is not None and sorted(set(data.groups.tolist())) == [10, 11, 12, 13]


def test_ck_bad_files_are_reported(tmp_path: Path) -> None:
    root = make_ck(tmp_path / "ck")
    (root / "happy" / "notes.txt").write_text("hello")
    (root / "happy" / "broken.png").write_bytes(b"")
    cv2.imwrite(str(root / "happy" / "face.png"), np.zeros((48, 48), np.uint8))
    data = load_ck(root)
    assert len(data) == 56
    assert any("not an image" in s for s in data.skipped)
    assert any("unreadable" in s for s in data.skipped)
    assert any("S<subject>" in s for s in data.skipped)


def test_image_folder_layout_resizes_and_greys(tmp_path: Path) -> None:
    for name in ("angry", "happy"):
        (tmp_path / "train" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "train" / name / "a.jpg"), np.zeros((64, 80, 3), np.uint8))
    data = load_folder(tmp_path / "train")
    assert data.classes == ["angry", "happy"] and data.images.shape == (2, 48, 48)


@pytest.mark.parametrize("setup", ["missing", "no_classes", "empty_classes"])
def test_folder_errors(tmp_path: Path, setup: str) -> None:
    root = tmp_path / "d"
    if setup != "missing":
        root.mkdir()
    if setup == "empty_classes":
        (root / "happy").mkdir()
    with pytest.raises(DatasetError):
        load_folder(root)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_subject_folds_are_disjoint_and_cover(k: int) -> None:
    groups = np.repeat(np.arange(30), np.random.default_rng(k).integers(1, 9, 30))
    folds = subject_folds(groups, k)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for i in range(k):
        for j in range(i + 1, k):
            assert not set(groups[folds[i]]) & set(groups[folds[j]])
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 8


def test_too_few_subjects() -> None:
    with pytest.raises(ValueError, match="fewer than 10 folds"):
        subject_folds(np.arange(5), 10)


def test_real_ck48(shared_data: Path) -> None:
    data = load_ck(shared_data / "ck48")
    assert len(data) == 981 and data.groups is not None and len(set(data.groups.tolist())) == 118
    assert data.counts() == {
        "angry": 135,
        "contempt": 54,
        "disgust": 177,
        "fear": 75,
        "happy": 207,
        "sad": 84,
        "surprise": 249,
    }
