"""Folders, globs and lists of images -> one row per face with the image's path.

Consumes :class:`emostream.api.Result` objects; writes ``faces.csv`` (path, face, x, y, w, h, score,
label, uncertain, ``p_<label>``...) and ``faces.jsonl`` (the same, one JSON object a line, the
probabilities as a map). Images without a face and unreadable ones have no row; :class:`Summary`
counts and names them.
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


def face_rows(result: Result) -> list[dict[str, Any]]:
    rows = []
    for i, f in enumerate(result.faces):
        x, y, w, h = (round(v, 1) for v in f.box)
        row: dict[str, Any] = {"path": result.path, "face": i, "x": x, "y": y, "w": w, "h": h}
        row.update(score=round(f.score, 4), label=f.label, uncertain=f.uncertain)
        row["probs"] = {k: round(v, 4) for k, v in f.probs.items()}
        rows.append(row)
    return rows


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
            for row in face_rows(r):
                summary.faces += 1
                j.write(json.dumps(row) + "\n")
                probs = row.pop("probs")
                row["uncertain"] = "" if row["uncertain"] is None else str(row["uncertain"]).lower()
                writer.writerow({**row, **{f"p_{n}": probs.get(n) for n in labels}})
    return summary
