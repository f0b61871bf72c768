"""``python -m training``: train, evaluate and export emotion models.

python -m training --source fer --data ../shared/data/fer2013           # train + evaluate + export
python -m training --source ck --data ../shared/data/ck48               # 10-fold CV + shipped model
python -m training evaluate runs/fer-emonet/best.keras --source fer
python -m training export runs/fer-emonet/best.keras --source fer --name fer2013_emonet
python -m training soup runs/ferplus-s*/final.keras --source ferplus --out runs/ferplus-soup/soup.keras
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from bus.paths import research_data

DATA = research_data()  # $EMOSTREAM_DATA, else ../shared/data beside the repository
DEFAULT_DATA = {"ck": DATA / "ck48", "fer": DATA / "fer2013", "ferplus": DATA / "fer2013"}
SOURCES = click.Choice(["ck", "fer", "ferplus"])
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"  # written only with --ship


def _check_checkout() -> None:
    if not (SHIPPED_MODELS.parent / "pyproject.toml").is_file():
        raise click.UsageError(
            "--ship replaces the models of a source checkout; an installed package has none: use --models-dir"
        )


def _setup(mixed: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter (no GPU here, ...)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    from training.runtime import configure

    configure(mixed)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", type=SOURCES, help="dataset: CK+48 folders, FER2013 CSV, or FER2013 with FER+ labels")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="dataset path (default: $EMOSTREAM_DATA or ../shared/data: ck48, fer2013)",
)
@click.option("--model", "model_name", default="emonet", show_default=True, help="emonet | mini_xception | mobilenetv2")
@click.option("--epochs", type=int, help="training epochs (default: 40 for FER, 60 for CK+)")
@click.option("--batch", type=int, default=128, show_default=True)
@click.option("--retrain", is_flag=True, help="train even where weights already exist in --out")
@click.option("--out", type=click.Path(path_type=Path), help="run folder (default: runs/<source>-<model>)")
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    help="where the int8 .tflite and its JSON sidecar are written (default: <out>/models; never the shipped "
    "models/ unless --ship)",
)
@click.option("--ship", is_flag=True, help="export into the shipped models/ folder, replacing the model there")
@click.option("--no-export", is_flag=True, help="train and evaluate only (teachers): no int8 model")
@click.option("--name", help="exported model name (default: <dataset>_<model>)")
@click.option(
    "--init",
    "init",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Keras model to fine-tune from (CK+: a FER2013 model); not read when --out holds an interrupted run",
)
@click.option(
    "--keep-head",
    is_flag=True,
    help="with --init: keep its softmax layer and continue training on the same labels (no fresh head)",
)
@click.option("--lr", type=float, help="peak learning rate (default: 2e-3 from scratch, 1e-3 when fine-tuning CK+)")
@click.option("--folds", type=int, default=10, show_default=True, help="CK+ cross-validation folds")
@click.option("--limit", type=int, help="use only the first N training images (smoke runs)")
@click.option(
    "--mixed",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="bfloat16 mixed precision (auto: where the CPU has avx512_bf16/AMX, or a GPU)",
)
@click.option("--seed", type=int, default=1, show_default=True, help="random seed (shuffling, augmentation, init)")
@click.option(
    "--mix",
    type=click.Choice(["none", "mixup", "cutmix"]),
    default="none",
    show_default=True,
    help="blend image pairs and their targets in each batch",
)
@click.option("--mix-alpha", type=float, default=0.3, show_default=True, help="Beta(alpha, alpha) of --mix")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option(
    "--ferplus-blend",
    type=float,
    default=0.0,
    help="FER2013: soften each training label with the FER+ votes of the same image (0..1, their weight)",
)
@click.option(
    "--distill",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="teacher soft labels (.npz from `python -m training ensemble`): train a student on them",
)
@click.option("--distill-temperature", type=float, default=4.0, show_default=True, help="softmax temperature T")
@click.option(
    "--distill-alpha",
    type=float,
    default=0.7,
    show_default=True,
    help="weight of the teachers' term; 1 - alpha weights the hard labels",
)
@click.option(
    "--snapshots-from",
    type=click.IntRange(min=0),
    default=0,
    help="also keep the weights after every epoch from this one on (<out>/snaps/ep<N>.keras), the "
    "ingredients of `soup`; 0: none",
)
@click.pass_context
def cli(
    ctx: click.Context,
    source: str | None,
    data: Path | None,
    model_name: str,
    epochs: int | None,
    batch: int,
    retrain: bool,
    out: Path | None,
    models_dir: Path | None,
    ship: bool,
    no_export: bool,
    name: str | None,
    init: Path | None,
    keep_head: bool,
    lr: float | None,
    folds: int,
    limit: int | None,
    mixed: str,
    seed: int,
    mix: str,
    mix_alpha: float,
    label_smoothing: float,
    ferplus_blend: float,
    distill: Path | None,
    distill_temperature: float,
    distill_alpha: float,
    snapshots_from: int,
) -> None:
    """Train a model on --source, evaluate it on the test protocol, export int8 TFLite."""
    if ctx.invoked_subcommand is not None:
        return
    if source is None:
        raise click.UsageError("--source is required (ck, fer or ferplus)")
    if keep_head and init is None:
        raise click.UsageError("--keep-head needs --init")
    if lr is not None and not 0 < lr < 1:
        raise click.UsageError(f"--lr must be in (0, 1), got {lr}")
    for opt, value, lo, hi in (
        ("--ferplus-blend", ferplus_blend, 0.0, 1.0),
        ("--distill-alpha", distill_alpha, 0.0, 1.0),
        ("--label-smoothing", label_smoothing, 0.0, 0.5),
    ):
        if not lo <= value <= hi:
            raise click.UsageError(f"{opt} must be in [{lo}, {hi}], got {value}")
    if not 0 < mix_alpha <= 10 or not 0.5 <= distill_temperature <= 20:
        raise click.UsageError("--mix-alpha must be in (0, 10] and --distill-temperature in [0.5, 20]")
    if ship and (no_export or models_dir is not None):
        raise click.UsageError("--ship exports into models/: leave out --models-dir and --no-export")
    if distill is not None and source != "fer":
        raise click.UsageError("--distill takes FER2013 teacher soft labels: use it with --source fer")
    _setup(mixed)
    from training.pipelines import RunSpec, run_ck, run_fer
    from training.train import TrainConfig

    data = data or DEFAULT_DATA[source]
    out = out or Path("runs") / f"{source}-{model_name}"
    from training.train import interrupted

    if init is not None and not init.is_file() and (retrain or not interrupted(out)):
        raise click.BadParameter(
            f"{init}: no such file (and no interrupted run in {out} to resume)", param_hint="--init"
        )
    if ship:
        _check_checkout()
        models_dir = SHIPPED_MODELS
    elif models_dir is None and not no_export:
        models_dir = out / "models"
    run = RunSpec(
        data=data,
        out=out,
        model_name=model_name,
        models_dir=None if no_export else models_dir,
        name=name,
        init=init,
        keep_head=keep_head,
        retrain=retrain,
        limit=limit,
        folds=folds,
        ferplus_blend=ferplus_blend,
        distill=distill,
    )
    default_lr = (1e-3 if init else 2e-3) if source == "ck" else TrainConfig.lr
    cfg = TrainConfig(
        epochs=epochs or (60 if source == "ck" else 40),
        batch=min(batch, 64) if source == "ck" else batch,
        lr=lr or default_lr,
        warmup_epochs=3 if source == "ck" else TrainConfig.warmup_epochs,
        label_smoothing=label_smoothing,
        seed=seed,
        mix=mix,
        mix_alpha=mix_alpha,
        distill_temperature=distill_temperature,
        distill_alpha=distill_alpha if distill is not None else 0.0,
        snapshots_from=snapshots_from,
    )
    try:
        summary = run_ck(run, cfg) if source == "ck" else run_fer(run, cfg, ferplus=source == "ferplus")
    except Exception as e:
        from training.data import DatasetError

        if isinstance(e, (DatasetError, ValueError, FileNotFoundError)):
            raise click.ClickException(str(e)) from None
        raise
    click.echo(summary)


@cli.command()
@click.argument("model_path", type=click.Path(path_type=Path, exists=True))
@click.option("--source", type=SOURCES, required=True)
@click.option("--data", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="report folder (default: next to the model)")
@click.option("--mixed", type=click.Choice(["auto", "on", "off"]), default="off")
def evaluate(model_path: Path, source: str, data: Path | None, out: Path | None, mixed: str) -> None:
    """Evaluate a .keras or int8 .tflite model on the source's test split (FER: PrivateTest)."""
    _setup(mixed)
    from training.pipelines import evaluate_file

    click.echo(evaluate_file(model_path, source, data or DEFAULT_DATA[source], out))


@cli.command()
@click.argument("model_path", type=click.Path(path_type=Path, exists=True))
@click.option("--source", type=SOURCES, required=True)
@click.option("--data", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="file stem of the .tflite and .json")
@click.option("--models-dir", type=click.Path(path_type=Path), help="default: <model's folder>/models")
@click.option("--ship", is_flag=True, help="export into the shipped models/ folder, replacing the model there")
@click.option(
    "--recalibrate-bn",
    is_flag=True,
    help="first set the batch-norm statistics to their averages over the training split (what training "
    "now does after its last epoch); the result is also saved as <model>.recalibrated.keras",
)
def export(
    model_path: Path,
    source: str,
    data: Path | None,
    name: str,
    models_dir: Path | None,
    ship: bool,
    recalibrate_bn: bool,
) -> None:
    """Export a .keras model to full-integer int8 TFLite + JSON sidecar, and evaluate both."""
    if ship and models_dir is not None:
        raise click.UsageError("--ship exports into models/: leave out --models-dir")
    if ship:
        _check_checkout()
    models_dir = SHIPPED_MODELS if ship else models_dir or model_path.parent / "models"
    _setup("off")
    from training.pipelines import export_file

    click.echo(export_file(model_path, source, data or DEFAULT_DATA[source], name, models_dir, recalibrate_bn))


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="FER2013 folder (default: $EMOSTREAM_DATA or ../shared/data: fer2013)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("models/teachers/fer2013_soft.npz"),
    show_default=True,
    help="soft labels (.npz, float16); the figures go beside it as .json",
)
@click.option("--no-tta", is_flag=True, help="one pass per image instead of the mean with its mirror")
@click.option(
    "--predictions",
    type=click.Path(path_type=Path, file_okay=False),
    help="also save each .keras teacher's probabilities on every split here (<name>.npz, float16); "
    "such a file can stand for the teacher in a later run",
)
@click.option("--select", is_flag=True, help="average only the teachers greedy forward selection picks on PublicTest")
def ensemble(
    models: tuple[Path, ...], data: Path | None, out: Path, no_tta: bool, predictions: Path | None, select: bool
) -> None:
    """Teachers (.keras, or their saved .npz predictions) -> each one's and their mean's FER2013 accuracy,
    and the mean's soft labels on Training."""
    _setup("off")
    from training.distill import ensemble as run_ensemble

    try:
        report = run_ensemble(
            list(models), data or DEFAULT_DATA["fer"], out, tta=not no_tta, predictions=predictions, select=select
        )
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(report, indent=2))


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--source", type=click.Choice(["fer", "ferplus"]), required=True)
@click.option("--data", type=click.Path(path_type=Path), help="default: $EMOSTREAM_DATA or ../shared/data: fer2013")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="the soup (.keras); its figures beside it as .json"
)
def soup(models: tuple[Path, ...], source: str, data: Path | None, out: Path) -> None:
    """Runs fine-tuned from one model (.keras) -> their greedy weight-average on PublicTest, one .keras
    (export it with `export`); each run's, the soup's and the uniform soup's accuracy."""
    if out.suffix != ".keras":
        raise click.UsageError(f"--out must end in .keras, got {out}")
    _setup("off")
    from training.soup import greedy_soup

    try:
        report = greedy_soup(list(models), source, data or DEFAULT_DATA[source], out)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    text = json.dumps(report, indent=2)
    out.with_suffix(".json").write_text(text)
    click.echo(text)


def _word_or_number(value: str | None, words: tuple[str, ...], lo: float, hi: float) -> float | str | None:
    """An option's value: None, one of ``words``, or a number in [lo, hi]; anything else is a usage error."""
    if value is None or value in words:
        return value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not lo <= number <= hi:
        names = ", ".join(f"'{w}'" for w in words)
        raise click.BadParameter(f"{value!r} is neither {names} nor a number in [{lo}, {hi}]")
    return number


def _prior_tau(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    from training.calibrate import FIT_RULES

    return _word_or_number(value, tuple(FIT_RULES), 0, 1)


def _mirror_zoom(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    from bus.sidecar import MIRROR_ZOOM_RANGE

    return _word_or_number(value, ("auto",), *MIRROR_ZOOM_RANGE)


@cli.command()
@click.argument("model_path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="FER2013 folder (default: $EMOSTREAM_DATA or ../shared/data: fer2013)",
)
@click.option("--ck", type=click.Path(path_type=Path), help="also the cross-dataset check on this CK+48 folder")
@click.option("--dry-run", is_flag=True, help="report only; leave the sidecar as it is")
@click.option(
    "--mirror/--no-mirror",
    default=None,
    help="run the model on each image and its mirror (the mean of the two), fit the temperature so and "
    "write it into the sidecar (input.mirror); default: as the sidecar says",
)
@click.option(
    "--prior-tau",
    callback=_prior_tau,
    help="class bias -TAU * log(training class share), added before the temperature (post-hoc logit "
    "adjustment: rare classes such as disgust are called more often): a number in [0, 1] (0: none), or "
    "'auto' to pick the most accurate on PublicTest, or 'no-cost' the largest that costs no PublicTest "
    "accuracy against none (the most balanced classifier that is free in-domain); default: as the sidecar "
    "says (none)",
)
@click.option(
    "--mirror-zoom",
    callback=_mirror_zoom,
    help="zoom the mirror view by this factor (above 1 out, below 1 in; input.mirror_zoom), or 'auto' to pick "
    "the most accurate on PublicTest from 0.85-1.2; picked before the class bias and temperature; "
    "default: as the sidecar says (1: the plain mirror)",
)
@click.option(
    "--fit",
    "objective",
    type=click.Choice(["top", "nll"]),
    default="top",
    show_default=True,
    help="what the temperature minimises on PublicTest: the log loss of the top class's probability as the "
    "chance it is right (top: the confidence the product shows and flags as uncertain), or the NLL of the "
    "labels (nll: the whole distribution); the other's temperature and ECE are reported beside it",
)
def calibrate(
    model_path: Path,
    data: Path | None,
    ck: Path | None,
    dry_run: bool,
    mirror: bool | None,
    prior_tau: Any,
    mirror_zoom: Any,
    objective: str,
) -> None:
    """Fit an int8 FER2013 model's class bias (optional) and temperature on PublicTest, report accuracy and
    ECE on PrivateTest before and after, and write them into the sidecar (the classifier applies them).
    With --ck: the CK+48 cross-dataset figures."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    import numpy as np

    from bus.sidecar import load_spec
    from training.calibrate import calibrate as fit
    from training.calibrate import cross_dataset
    from training.pipelines import load_source

    try:
        source = "ferplus" if load_spec(model_path).dataset == "ferplus" else "fer"
        splits = load_source(source, data or DEFAULT_DATA["fer"])
        train = splits["train"]
        counts = np.bincount(train.labels, minlength=len(train.classes))
        result: dict = {
            "calibration": fit(
                model_path,
                splits["val"],
                splits["test"],
                write=not dry_run,
                mirror=mirror,
                prior_tau=prior_tau,
                train_counts=counts,
                mirror_zoom=mirror_zoom,
                objective="nll" if objective == "nll" else "top",
            )
        }
        if ck is not None:
            ck_data = load_source("ck", ck)["all"]
            result["ck48_cross_dataset"] = cross_dataset(model_path, ck_data, mirror, result["calibration"])
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(result, indent=2))


@cli.command("align-check")
@click.option(
    "--video",
    "videos",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="videos for label stability (default: the two head-pose clips in $EMOSTREAM_DATA/media/videos)",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=SHIPPED_MODELS / "fer2013_emonet.tflite",
    show_default=True,
)
@click.option("--fer", type=click.Path(path_type=Path), help="FER2013 folder: accuracy on PrivateTest as is / aligned")
@click.option("--ck", type=click.Path(path_type=Path), help="CK+48 folder: accuracy as is / aligned")
@click.option("--out", type=click.Path(path_type=Path), help="also write the figures to this JSON file")
def align_check(videos: tuple[Path, ...], model: Path, fer: Path | None, ck: Path | None, out: Path | None) -> None:
    """Label stability on videos and accuracy on upright faces, with and without [detector] align."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    from training.alignment import check

    media = DATA / "media" / "videos"
    chosen = list(videos) or [media / f"head-pose-face-detection-{s}.mp4" for s in ("male", "female")]
    report = check(chosen, model, fer, ck)
    text = json.dumps(report, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    click.echo(text)


if __name__ == "__main__":
    cli()
