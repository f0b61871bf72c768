"""FER2013 / FER+ loaders on tiny CSVs written by the tests, and on the real files where present."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data import DatasetError
from training.data.fer import FER_CLASSES, FERPLUS_COLUMNS, load_fer

PIX = " ".join(["7"] * 2304)


def rows(n: int = 3) -> list[str]:
    out = []
    for i, usage in enumerate(["Training"] * n + ["PublicTest"] * 2 + ["PrivateTest"] * 2):
        out.append(f"{i % 7},{PIX},{usage}")
    return out


def write(path: Path, lines: list[str], header: str = "emotion,pixels,Usage") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def random_fer_csv(path: Path, seed: int = 0, training: list[int] | None = None) -> Path:
    """A FER2013 CSV of random images: ``training`` labels (default: each class twice), then 7
    PublicTest and 7 PrivateTest images, one of each class."""
    rng = np.random.default_rng(seed)
    rows = [(c, "Training") for c in (training or [i % 7 for i in range(14)])]
    rows += [(i, usage) for usage in ("PublicTest", "PrivateTest") for i in range(7)]
    lines = []
    for label, usage in rows:
        pixels = " ".join(str(v) for v in rng.integers(0, 256, 48 * 48))
        lines.append(f"{label},{pixels},{usage}")
    return write(path, lines)


@pytest.mark.parametrize("layout", ["plain", "gzip", "parts"])
def test_layouts(tmp_path: Path, layout: str) -> None:
    text = ("\n".join(["emotion,pixels,Usage", *rows()]) + "\n").encode()
    if layout == "plain":
        target = tmp_path / "fer2013.csv"
        target.write_bytes(text)
    elif layout == "gzip":
        target = tmp_path / "fer2013.csv.gz"
        target.write_bytes(gzip.compress(text))
    else:  # two gzip members whose concatenation is the file
        half = len(text) // 2
        (tmp_path / "fer2013.csv.gz.part1").write_bytes(gzip.compress(text[:half]))
        (tmp_path / "fer2013.csv.gz.part2").write_bytes(gzip.compress(text[half:]))
        target = tmp_path
    splits = load_fer(target)
    assert [len(splits[s]) for s in ("Training", "PublicTest", "PrivateTest")] == [3, 2, 2]
    assert splits["Training"].images.shape == (3, 48, 48) and splits["Training"].images.dtype == np.uint8
    assert splits["Training"].classes == FER_CLASSES


def test_malformed_rows_reported_with_line_numbers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        f"1,{' '.join(['1'] * 100)},Training",
        f"9,{PIX},Training",
        f"2,{PIX},Validation",
        f"x,{PIX},Training",
        f"3,{PIX.replace('7', 'z', 1)},Training",
        f"4,{PIX.replace('7', '300', 1)},Training",
        "5",
    ]
    path = write(tmp_path / "fer2013.csv", rows() + bad)
    splits = load_fer(path)
    skipped = splits["Training"].skipped
    assert len(splits["Training"]) == 3 and len(skipped) == len(bad)
    assert skipped[0].startswith("line 9: 100 pixels")
    assert any("unknown label '9'" in s for s in skipped) and any("unknown Usage 'Validation'" in s for s in skipped)
    assert "7 malformed entries skipped" in caplog.text


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "empty CSV"), ("a,b,c\n", "expected emotion,pixels,Usage"), ("emotion,pixels,Usage\n", "no usable rows")],
)
def test_empty_or_wrong_files(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "fer2013.csv").write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_fer(tmp_path / "fer2013.csv")


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_fer(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match=r"no fer2013\.csv"):
        load_fer(tmp_path)


def test_ferplus_majority_and_soft_labels(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "fer2013.csv", rows(3))
    header = "Usage,Image name," + ",".join(FERPLUS_COLUMNS) + ",unknown,NF"
    votes = [
        "Training,a,0,10,0,0,0,0,0,0,0,0",  # happy
        "Training,b,4,3,3,0,0,0,0,0,0,0",  # no majority -> skipped
        "Training,c,0,0,0,0,0,0,0,0,0,10",  # not a face -> skipped
        "PublicTest,d,6,0,0,0,0,0,0,4,0,0",  # neutral, soft 0.6/0.4 contempt
        "PublicTest,e,0,0,10,0,0,0,0,0,0,0",
        "PrivateTest,f,0,0,0,9,0,0,0,0,1,0",
        "PrivateTest,g,0,0,0,0,10,0,0,0,0,0",
    ]
    plus = write(tmp_path / "fer2013new.csv", votes, header)
    splits = load_fer(csv_path, plus)
    assert len(splits["Training"]) == 1 and splits["Training"].classes[splits["Training"].labels[0]] == "happy"
    pub = splits["PublicTest"]
    assert pub.soft is not None and np.allclose(pub.soft[0], [0.6, 0, 0, 0, 0, 0, 0, 0.4])
    assert [pub.classes[i] for i in pub.labels] == ["neutral", "surprise"]


def test_real_fer2013(shared_data: Path) -> None:
    splits = load_fer(shared_data / "fer2013")
    assert {s: len(d) for s, d in splits.items()} == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    assert splits["PrivateTest"].counts()["happy"] == 879 and not splits["Training"].skipped
