"""Pure helpers that turn raw measurements into figures: percentiles, the warm-up cut, the stages'
final stats lines (``bus.runtime.Stats.line``), the bench's config file and the printed tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

FINAL_STATS = re.compile(r"final stats: fps \S+\s+latency .*?frames (\d+)\s+drops (.*?)\s*$", re.MULTILINE)


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p95": ..., "p99": ...} rounded to 0.1 (None when there are no values)."""
    if not values:
        return {f"p{q}": None for q in qs}
    got = np.percentile(np.asarray(values, dtype=np.float64), list(qs))
    return {f"p{q}": round(float(v), 1) for q, v in zip(qs, got, strict=True)}


def warmup(frames: int) -> int:
    """Frames left out at the start of a run (model warm-up, connections): 5%, 10..100, at most half."""
    return max(1, min(frames // 2, max(10, min(100, frames // 20))))


def final_stats(log: str) -> dict[str, Any] | None:
    """The last ``final stats`` line of a stage log -> {"frames": n, "drops": {reason: n}} (None if absent)."""
    found = list(FINAL_STATS.finditer(log))
    if not found:
        return None
    frames, drops = found[-1].groups()
    parsed: dict[str, int] = {}
    for item in drops.split():
        key, sep, value = item.partition("=")
        if sep and value.isdigit():
            parsed[key] = int(value)
    return {"frames": int(frames), "drops": parsed}


def fmt(v: Any) -> str:
    """A table cell: floats with 1 decimal from 10 up, 2 from 1 up, 3 below."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{1 if abs(v) >= 10 else 2 if abs(v) >= 1 else 3}f}"
    if isinstance(v, dict):
        return " ".join(f"{k}={x}" for k, x in sorted(v.items())) or "0"
    return str(v)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table under a ``### title`` line."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
