"""Folders, globs and lists of images -> one row per face with the image's path.

Consumes :class:`emostream.api.Result` objects; writes

- ``faces.jsonl``: one JSON object a line, ``path`` (the image), ``face`` (its index in the image,
  left to right) and the face object of the events record (:meth:`bus.codec.Face.to_json`:
  ``box`` [x, y, w, h], ``score``, ``kp``, ``label``, ``probs`` label -> p, ``uncertain``);
- ``faces.csv``: the same faces as a table, so flat: path, face, x, y, w, h, score, label,
  uncertain, ``p_<label>``... (no keypoints; a cell holds one value, for spreadsheets and pandas).

Images without a face and unreadable ones have no row; :class:`Summary` counts and names them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emostream.api import Result

FIELDS = ("path", "face", "x", "y", "w", "h", "score", "label", "uncertain")


@dataclass
class Summary:
    images: int = 0
    faces: int = 0
    without_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "path: why"
    files: dict[str, Path] = field(default_factory=dict)


def face_objects(result: Result) -> list[dict[str, Any]]:
    """The ``faces.jsonl`` lines of one image: ``path``, ``face`` (index) and the face object."""
    return [{"path": result.path, "face": i, **f.to_dict()} for i, f in enumerate(result.faces)]


def csv_row(face: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """A ``faces.jsonl`` line flattened into a ``faces.csv`` row (box -> x, y, w, h; probs -> p_<label>)."""
    x, y, w, h = face["box"]
    row = {k: face[k] for k in ("path", "face", "score", "label")}
    row.update(x=x, y=y, w=w, h=h, uncertain=str(face["uncertain"]).lower())
    return {**row, **{f"p_{n}": face["probs"].get(n) for n in labels}}


def write_tables(results: Iterable[Result], labels: Sequence[str], out: Path) -> Summary:
    """Write ``faces.csv`` and ``faces.jsonl`` into ``out`` as the results arrive."""
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(files={"faces.csv": out / "faces.csv", "faces.jsonl": out / "faces.jsonl"})
    with (
        summary.files["faces.csv"].open("w", newline="", encoding="utf-8") as c,
        summary.files["faces.jsonl"].open("w", encoding="utf-8") as j,
    ):
        writer = csv.DictWriter(c, [*FIELDS, *(f"p_{n}" for n in labels)])
        writer.writeheader()
        for r in results:
            summary.images += 1
            if r.error is not None:
                summary.unreadable.append(f"{r.path}: {r.error}")
                continue
            if not r.faces:
                summary.without_face.append(str(r.path))
            for face in face_objects(r):
                summary.faces += 1
                j.write(json.dumps(face) + "\n")
                writer.writerow(csv_row(face, labels))
    return summary
