"""The ``emostream`` command: one click group over the project's commands.

- ``run``: the four-process pipeline under honcho (the shipped Procfile), as ``scripts/run.sh`` does;
- ``analyze``: a video through the real pipeline to reports (``python -m analyze``), or a
  folder / glob / list of images to one row per face (:mod:`emostream.batch`, in-process API);
- ``train``: ``python -m training`` (needs the ``training`` extra: TensorFlow);
- ``bench``: ``python -m bench``.

``train`` and ``bench`` hand every argument to the delegated command, ``--help`` included. The
delegated commands replace this process (``exec``), so signals and exit codes are theirs. Relative
paths given here are the user's: they are made absolute against the current folder before anything
else runs.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from pathlib import Path
from typing import NoReturn

import click

from bus.paths import CODE_ROOT, is_path_uri, shipped_root
from emostream import __version__

VIDEO_SUFFIXES_HINT = "mp4, mkv, avi, mov, webm, gif"


def _env() -> dict[str, str]:
    """The environment for a delegated command: the stage packages importable from any folder (a
    checkout run without installing), this interpreter first on PATH (the Procfile says ``python``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    return env


def _exec(module: str, args: list[str], env: dict[str, str] | None = None) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *args], env if env is not None else _env())


def _fail(command: str, message: str) -> NoReturn:
    click.echo(f"emostream {command}: {message}", err=True)
    sys.exit(2)


def user_config(config_path: str | None) -> Path | None:
    """The config the user means: ``--config``, else ``$BUS_CONFIG``, else ``./bus.toml``; absolute."""
    path = config_path or os.environ.get("BUS_CONFIG") or ("bus.toml" if Path("bus.toml").is_file() else None)
    return Path(path).absolute() if path else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="emostream")
def main() -> None:
    """Real-time facial emotion recognition: capture -> detector -> classifier -> display over ZeroMQ.

    Python API: `from emostream import EmotionRecognizer`. Each stage also runs as `python -m <stage>`."""


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="bus.toml to use (default: $BUS_CONFIG, else ./bus.toml, else the shipped one).",
)


@main.command("run")
@click.argument("processes", nargs=-1)
@click.option("--source", help="Camera index, video, image, folder or stream URL (replaces the sources).")
@click.option("--events", help="Also write one JSON line per frame to this file.")
@click.option("--video", help="Also write the annotated video to this .mp4 file.")
@click.option("--web", help="host:port of the live page ('' turns it off).")
@config_option
def run_command(
    processes: tuple[str, ...],
    source: str | None,
    events: str | None,
    video: str | None,
    web: str | None,
    config_path: str | None,
) -> None:
    """Start the pipeline under honcho (capture, detector, classifier, display; or only PROCESSES).

    The shipped Procfile and, unless another is given, the shipped bus.toml (camera 0, live page at
    http://127.0.0.1:8000/). Stops with Ctrl-C, or by itself at the end of a file source."""
    from bus.runtime import MANAGER_ENV, RUN_ENV

    env = _env()
    config = user_config(config_path) or shipped_root() / "bus.toml"
    if not config.is_file():
        _fail("run", f"config file not found: {config}")
    env["BUS_CONFIG"] = str(config)
    if source is not None:
        env["SOURCE"] = str(Path(source).absolute()) if is_path_uri(source) else source
    for key, value in (("EVENTS", events), ("VIDEO", video)):
        if value:
            env[key] = str(Path(value).absolute())
    if web is not None:
        env["WEB"] = web
    if importlib.util.find_spec("honcho") is None:
        _fail("run", "honcho is not installed (pip install honcho)")
    # As scripts/run.sh: one run id for every stage (bus.runtime), and honcho's pid (exec keeps ours)
    # so that every stage stops when it dies.
    env.setdefault(RUN_ENV, secrets.token_hex(8))
    env[MANAGER_ENV] = str(os.getpid())
    procfile = shipped_root() / "Procfile"
    _exec("honcho", ["start", "-f", str(procfile), "-d", os.getcwd(), *processes], env)


@main.command("analyze")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder for the results (default: <video, folder or 'images'>-analysis in the current folder).",
)
@click.option("--video", "annotated", is_flag=True, help="Videos: also write the annotated video.")
@click.option("--no-plot", is_flag=True, help="Videos: skip the timeline plot.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@config_option
def analyze_command(
    sources: tuple[str, ...], out_dir: str | None, annotated: bool, no_plot: bool, quiet: bool, config_path: str | None
) -> None:
    """Analyse a video, or images: a folder, a glob ('photos/*.jpg') or image files.

    A video runs through the real pipeline (`python -m analyze`): per-frame and per-track
    tables, an emotion timeline per track. Images are analysed in this process with the same
    detector and classifier code and written as faces.csv and faces.jsonl, one row per face with
    the image's path."""
    from capture.sources import kind

    kinds = [("glob" if not Path(s).exists() and any(c in s for c in "*?[") else kind(s)) for s in sources]
    if "camera" in kinds or "stream" in kinds:
        _fail("analyze", "cameras and streams are live: use `emostream run --source ...`")
    if "video" in kinds:
        if len(sources) != 1:
            _fail("analyze", f"give one video at a time ({VIDEO_SUFFIXES_HINT}), or only images")
        args = [str(Path(sources[0]).absolute())]
        args += ["--out", str(Path(out_dir or f"{Path(sources[0]).stem}-analysis").absolute())]
        config = user_config(config_path)
        if config is not None:
            args += ["--config", str(config)]
        if annotated:
            args.append("--video")
        if no_plot or importlib.util.find_spec("matplotlib") is None:
            if not no_plot:
                click.echo("emostream analyze: matplotlib is not installed, so no timeline plot", err=True)
            args.append("--no-plot")
        if quiet:
            args.append("--quiet")
        _exec("analyze", args)
    _analyze_images(sources, kinds, out_dir, config_path, quiet)


def _analyze_images(
    sources: tuple[str, ...], kinds: list[str], out_dir: str | None, config_path: str | None, quiet: bool
) -> None:
    from itertools import chain

    from tqdm import tqdm

    from emostream.api import EmotionRecognizer, RecognizerError
    from emostream.batch import write_tables

    default = Path(sources[0]).name if len(sources) == 1 and kinds[0] == "folder" else "images"
    out = Path(out_dir or f"{default}-analysis")
    try:
        recognizer = EmotionRecognizer(config=user_config(config_path))
        with recognizer:
            results = chain.from_iterable(recognizer.analyze(s) for s in sources)
            bar = tqdm(results, unit="image", disable=quiet, file=sys.stderr)
            summary = write_tables(bar, recognizer.labels, out)
    except RecognizerError as e:
        _fail("analyze", str(e))
    except OSError as e:
        _fail("analyze", f"cannot write the results: {e}")
    click.echo(f"results in {out}: {', '.join(summary.files)}")
    click.echo(
        f"{summary.images} image(s), {summary.faces} face(s); "
        f"{len(summary.without_face)} without a face, {len(summary.unreadable)} unreadable"
    )
    for line in summary.unreadable:
        click.echo(f"  unreadable: {line}", err=True)


PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@main.command("train", context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_command(args: tuple[str, ...]) -> None:
    """Train, evaluate and export emotion models (`python -m training`; needs the training extra).

    Every argument goes to `python -m training`: `emostream train --help` shows its options."""
    wants_help = any(a in ("-h", "--help") for a in args)
    if not wants_help and importlib.util.find_spec("tensorflow") is None:
        _fail("train", "needs TensorFlow: pip install 'emostream[training]'")
    _exec("training", list(args))


@main.command("bench", context_settings=PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(args: tuple[str, ...]) -> None:
    """Benchmark the pipeline against its stages run in one process (`python -m bench`).

    Every argument goes to `python -m bench`: `emostream bench --help` shows its options."""
    _exec("bench", list(args))
