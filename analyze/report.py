"""Video analysis reports: the display's events records of one video -> tables, summary and plot.

Consumes the events records of :func:`display.worker.event` (with tracking: ``track``,
``smoothed``, ``smoothed_label`` per face), the model's labels and the video's fps; produces in a
folder:

- ``frames.jsonl``: one events record per analysed frame (also frames without faces), plus ``time_s``;
  its faces are the face objects of :meth:`bus.codec.Face.to_json`;
- ``frames.csv``: one row per face and frame, flat because it is a table (one value a cell): src,
  seq, time_s, track, x, y, w, h, score, label, smoothed_label, ``p_<label>`` (raw probabilities)
  and ``smoothed_<label>``;
- ``tracks.csv`` / ``tracks.json``: one row per track: first/last frame and time, frames, dominant
  emotion (the most frequent smoothed label), ``share_<label>`` (the fraction of the track's
  frames with that smoothed label, i.e. its time share), ``mean_<label>`` (mean raw probability),
  and how often the raw and the smoothed label changed; the JSON adds the run's figures;
- ``timeline.png`` (matplotlib, Agg): on top, every track (up to ``MAX_ROWS``, the longest) on one
  time axis, one row each, coloured by its smoothed label frame by frame (uncertain frames grey and
  hatched); below, the smoothed probabilities of the ``MAX_PANELS`` longest tracks that have at
  least ``MIN_PANEL_S`` seconds of frames, one panel each. Readable with one track or fifty.

A face is uncertain when the classifier said so (``uncertain``) and, for the smoothed label,
``smoothed_uncertain``; the tables carry both, the track summary its ``share_uncertain``.
"""

from __future__ import annotations

import collections
import csv
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from display.draw import hex_colour

MAX_PANELS = 6  # probability panels: the longest tracks; the tables have all of them
MAX_ROWS = 40  # rows of the one-axis overview (the longest tracks)
MIN_PANEL_S = 1.0  # a track needs this much video (and at least 5 frames) for a probability panel
UNCERTAIN_COLOUR = "#969696"


class ReportError(RuntimeError):
    """A report cannot be written (missing optional dependency, unwritable folder)."""


def frame_rows(records: Iterable[dict[str, Any]], labels: Sequence[str], fps: float) -> list[dict[str, Any]]:
    """One flat row per face of every record, in (seq, track) order."""
    rows = []
    for rec in records:
        for f in rec["faces"]:
            x, y, w, h = f["box"]
            row: dict[str, Any] = {
                "src": rec["src"],
                "seq": rec["seq"],
                "time_s": round(rec["seq"] / fps, 4),
                "track": f.get("track"),
                "x": x,
                "y": y,
                "w": w,
                "h": h,
                "score": f["score"],
                "label": f["label"],
                "smoothed_label": f.get("smoothed_label", f["label"]),
                "uncertain": bool(f.get("uncertain", False)),
                "smoothed_uncertain": bool(f.get("smoothed_uncertain", f.get("uncertain", False))),
            }
            smoothed = f.get("smoothed") or f["probs"]
            row.update({f"p_{n}": f["probs"].get(n) for n in labels})
            row.update({f"smoothed_{n}": smoothed.get(n) for n in labels})
            rows.append(row)
    rows.sort(key=lambda r: (r["src"], r["seq"], -1 if r["track"] is None else r["track"]))
    return rows


def changes(values: Sequence[Any]) -> int:
    """How often consecutive values differ."""
    return sum(1 for a, b in itertools.pairwise(values) if a != b)


def _dominant(labels: Sequence[str | None], means: dict[str, float]) -> str | None:
    counts = collections.Counter(x for x in labels if x is not None)
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], means.get(k, 0.0)))


def track_summary(rows: Sequence[dict[str, Any]], labels: Sequence[str], fps: float) -> list[dict[str, Any]]:
    """One summary per (source, track), by track id; rows without a track are left out."""
    by_track: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        if r["track"] is not None:
            by_track[(r["src"], r["track"])].append(r)
    out = []
    for (src, track), rs in sorted(by_track.items()):
        rs = sorted(rs, key=lambda r: r["seq"])
        smoothed = [r["smoothed_label"] for r in rs]
        raw = [r["label"] for r in rs]
        means = {n: float(np.mean([r[f"p_{n}"] or 0.0 for r in rs])) for n in labels}
        counts = collections.Counter(smoothed)
        summary: dict[str, Any] = {
            "src": src,
            "track": track,
            "first_frame": rs[0]["seq"],
            "last_frame": rs[-1]["seq"],
            "first_s": round(rs[0]["seq"] / fps, 3),
            "last_s": round(rs[-1]["seq"] / fps, 3),
            "frames": len(rs),
            "dominant": _dominant(smoothed, means),
            "raw_dominant": _dominant(raw, means),
            "label_changes": changes(raw),
            "smoothed_label_changes": changes(smoothed),
        }
        summary.update({f"share_{n}": round(counts[n] / len(rs), 4) for n in labels})
        summary.update({f"mean_{n}": round(means[n], 4) for n in labels})
        summary["share_uncertain"] = round(sum(1 for r in rs if r["smoothed_uncertain"]) / len(rs), 4)
        out.append(summary)
    return out


def suspected_switches(rows: Sequence[dict[str, Any]], within: int = 15, cuts: Iterable[int] = ()) -> int:
    """Track births that look like a lost id: a new track whose first box overlaps (IoU > 0.1) the
    last box of a track of the same source that ended at most ``within`` frames before. Births at
    a scene cut (``cuts``: frame numbers) are new shots, not lost ids."""
    from display.track import iou_matrix

    first: dict[tuple[str, int], dict[str, Any]] = {}
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["seq"]):
        if r["track"] is None:
            continue
        key = (r["src"], r["track"])
        first.setdefault(key, r)
        last[key] = r
    n = 0
    at_cut = set(cuts)
    for key, born in first.items():
        if born["seq"] in at_cut:
            continue
        box = (born["x"], born["y"], born["w"], born["h"])
        for other, end in last.items():
            if other[0] != key[0] or other == key or not 0 <= born["seq"] - end["seq"] <= within:
                continue
            if (
                first[other]["seq"] < born["seq"]
                and iou_matrix([(end["x"], end["y"], end["w"], end["h"])], [box])[0, 0] > 0.1
            ):
                n += 1
                break
    return n


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def frame_columns(labels: Sequence[str]) -> list[str]:
    base = ["src", "seq", "time_s", "track", "x", "y", "w", "h", "score", "label", "smoothed_label"]
    return base + [f"p_{n}" for n in labels] + [f"smoothed_{n}" for n in labels] + ["uncertain", "smoothed_uncertain"]


def track_columns(labels: Sequence[str]) -> list[str]:
    base = ["src", "track", "first_frame", "last_frame", "first_s", "last_s", "frames", "dominant", "raw_dominant"]
    return (
        base
        + ["label_changes", "smoothed_label_changes"]
        + [f"share_{n}" for n in labels]
        + [f"mean_{n}" for n in labels]
        + ["share_uncertain"]
    )


def require_matplotlib() -> None:
    """Raise :class:`ReportError` with the fix when matplotlib (optional) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError("timeline.png needs matplotlib: pip install matplotlib (or pass --no-plot)") from None


def segments(rows: Sequence[dict[str, Any]], fps: float) -> list[tuple[float, float, str]]:
    """(start_s, duration_s, key) runs of consecutive frames of one track with the same smoothed
    label (key ``"uncertain"`` for smoothed-uncertain frames); a gap in seq ends a run."""
    out: list[tuple[float, float, str]] = []
    start = prev = -2
    key = ""
    for r in sorted(rows, key=lambda r: r["seq"]):
        k = "uncertain" if r["smoothed_uncertain"] else str(r["smoothed_label"])
        if start >= 0 and (k != key or r["seq"] != prev + 1):
            out.append((start / fps, (prev + 1 - start) / fps, key))
            start = -2
        if start < 0:
            start, key = int(r["seq"]), k
        prev = int(r["seq"])
    if start >= 0:
        out.append((start / fps, (prev + 1 - start) / fps, key))
    return out


def plot_timeline(
    path: Path,
    rows: Sequence[dict[str, Any]],
    labels: Sequence[str],
    tracks: Sequence[dict[str, Any]],
    fps: float = 30.0,
) -> None:
    """The one-axis overview of every track and the probability panels of the longest (module docstring)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no screen needed, no GUI toolkit imported
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    by_track: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        if r["track"] is not None:
            by_track[(r["src"], r["track"])].append(r)
    longest = sorted(tracks, key=lambda t: (-t["frames"], t["src"], t["track"]))
    overview = sorted(longest[:MAX_ROWS], key=lambda t: (t["src"], t["first_frame"], t["track"]))
    min_frames = max(5, round(MIN_PANEL_S * fps))
    panels = sorted(
        [t for t in longest if t["frames"] >= min_frames][:MAX_PANELS], key=lambda t: (t["src"], t["track"])
    )
    n_rows = max(1, len(overview))
    heights = [0.6 + 0.28 * n_rows] + [1.6] * len(panels)
    fig = plt.figure(figsize=(10, 0.9 + sum(heights)), layout="constrained")  # constrained: titles never overlap
    axes = fig.subplots(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]
    try:
        ax = axes[0]
        for i, t in enumerate(overview):
            for start, dur, key in segments(by_track[(t["src"], t["track"])], fps):
                unc = key == "uncertain"
                ax.broken_barh(
                    [(start, dur)],
                    (i - 0.4, 0.8),
                    facecolors=UNCERTAIN_COLOUR if unc else hex_colour(key),
                    hatch="////" if unc else None,
                    edgecolor="#555555" if unc else "none",
                    linewidth=0,
                )
        ax.set_yticks(range(len(overview)), [f"#{t['track']}" for t in overview], fontsize=7 if n_rows > 15 else 9)
        ax.set_ylim(n_rows - 0.5, -0.5)
        ax.set_xlabel("time (s)")
        ax.grid(axis="x", alpha=0.3)
        hidden = len(tracks) - len(overview)
        ax.set_title(
            f"smoothed label per track over time ({len(tracks)} tracks"
            + (f", the {len(overview)} longest shown" if hidden else "")
            + ")"
            if tracks
            else "no faces found",
            fontsize=10,
        )
        if tracks:
            handles = [Patch(facecolor=hex_colour(lab), label=lab) for lab in labels]
            handles.append(Patch(facecolor=UNCERTAIN_COLOUR, hatch="////", edgecolor="#555555", label="uncertain"))
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        for ax, t in zip(axes[1:], panels, strict=True):
            rs = sorted(by_track[(t["src"], t["track"])], key=lambda r: r["seq"])
            time_s = [r["time_s"] for r in rs]
            for lab in labels:
                ax.plot(time_s, [r[f"smoothed_{lab}"] or 0.0 for r in rs], color=hex_colour(lab), lw=1.5, label=lab)
            share = t.get(f"share_{t['dominant']}", 0.0)
            ax.set_title(
                f"{t['src']} track #{t['track']}: smoothed probabilities; {t['dominant']} {100 * share:.0f}% of its frames",
                fontsize=9,
            )
            ax.set_ylim(0, 1)
            ax.set_ylabel("p")
            ax.set_xlabel("time (s)")
            ax.grid(alpha=0.3)
        if panels:
            axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_reports(
    out: Path,
    records: Sequence[dict[str, Any]],
    labels: Sequence[str],
    fps: float,
    meta: dict[str, Any],
    plot: bool = True,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write every report file into ``out``; returns (name -> path, the tracks.json document)."""
    out.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: (r["src"], r["seq"]))
    rows = frame_rows(records, labels, fps)
    tracks = track_summary(rows, labels, fps)
    paths = {name: out / name for name in ("frames.jsonl", "frames.csv", "tracks.csv", "tracks.json")}
    with paths["frames.jsonl"].open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps({**rec, "time_s": round(rec["seq"] / fps, 4)}, separators=(",", ":")) + "\n")
    _write_csv(paths["frames.csv"], rows, frame_columns(labels))
    _write_csv(paths["tracks.csv"], tracks, track_columns(labels))
    switches = suspected_switches(rows, cuts=meta.get("scene_cuts", ()))
    doc = {**meta, "fps": fps, "labels": list(labels), "suspected_switches": switches, "tracks": tracks}
    paths["tracks.json"].write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    if plot:
        paths["timeline.png"] = out / "timeline.png"
        plot_timeline(paths["timeline.png"], rows, labels, tracks, fps)
    return paths, doc
