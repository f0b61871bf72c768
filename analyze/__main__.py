"""``python -m analyze VIDEO``: run the pipeline on a video (no live view) and write the reports.

Exit codes: 0 done, 1 the run failed, 2 bad input or start-up failure, 130 interrupted; a failure
is one line on stderr.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import click

from analyze.pipeline import AnalyzeError, analyze, stop_on_signals
from bus.cli import config_option
from bus.runtime import setup_logging


@click.command()
@click.argument("video", type=str)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder for the reports (default: <video name>-analysis in the current folder).",
)
@click.option("--video", "annotated", is_flag=True, help="Also write the annotated video (annotated.mp4).")
@config_option
@click.option("--no-plot", is_flag=True, help="Skip timeline.png (needs matplotlib).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def main(video: str, out_dir: str | None, annotated: bool, config_path: str | None, no_plot: bool, quiet: bool) -> None:
    """Run capture, detector and classifier on VIDEO (no live view) and write per-frame and per-track
    tables (CSV, JSON), an emotion timeline per track and, with --video, the annotated video."""
    out = Path(out_dir) if out_dir else Path(f"{Path(video).stem}-analysis")
    log = setup_logging("analyze", logging.WARNING)
    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            result = analyze(video, out, config_path, annotated, not no_plot, not quiet, stop, log)
    except AnalyzeError as e:
        click.echo(f"analyze: {e}", err=True)
        sys.exit(e.code)
    s = result.summary
    click.echo(f"reports in {out}: {', '.join(result.paths)}")
    drops = " ".join(f"{k}={v}" for k, v in sorted(s["dropped"].items())) or "0"
    click.echo(f"frames read {s['frames_read']}, analysed {s['frames_analysed']}, dropped {drops}, lost {s['lost']}")
    click.echo(
        f"{len(s['tracks'])} track(s), {len(s['scene_cuts'])} scene cut(s), {s['suspected_switches']} suspected id switch(es)"
    )
    for t in s["tracks"]:
        share = t.get(f"share_{t['dominant']}", 0.0)
        click.echo(
            f"  #{t['track']}: frames {t['first_frame']}-{t['last_frame']} ({t['frames']}), "
            f"{t['dominant']} {100 * share:.0f}% of them; label changes raw {t['label_changes']}, "
            f"smoothed {t['smoothed_label_changes']}"
        )


if __name__ == "__main__":
    main()
