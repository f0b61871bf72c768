"""``python -m training``: train, evaluate and export emotion models.

python -m training --source fer --data ../shared/data/fer2013           # train + evaluate + export
python -m training --source ck --data ../shared/data/ck48               # 10-fold CV + shipped model
python -m training evaluate runs/fer-emonet/best.keras --source fer
python -m training export runs/fer-emonet/best.keras --source fer --name fer2013_emonet
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

DEFAULT_DATA = {"ck": "../shared/data/ck48", "fer": "../shared/data/fer2013", "ferplus": "../shared/data/fer2013"}
SOURCES = click.Choice(["ck", "fer", "ferplus"])


def _setup(mixed: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter (no GPU here, ...)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    from training.runtime import configure

    configure(mixed)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", type=SOURCES, help="dataset: CK+48 folders, FER2013 CSV, or FER2013 with FER+ labels")
@click.option("--data", type=click.Path(path_type=Path), help="dataset path (default: ../shared/data/...)")
@click.option("--model", "model_name", default="emonet", show_default=True, help="emonet | mini_xception | mobilenetv2")
@click.option("--epochs", type=int, help="training epochs (default: 40 for FER, 60 for CK+)")
@click.option("--batch", type=int, default=128, show_default=True)
@click.option("--retrain", is_flag=True, help="train even where weights already exist in --out")
@click.option("--out", type=click.Path(path_type=Path), help="run folder (default: runs/<source>-<model>)")
@click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    default=Path("models"),
    show_default=True,
    help="where the int8 .tflite and its JSON sidecar are written",
)
@click.option("--name", help="exported model name (default: <dataset>_<model>)")
@click.option(
    "--init",
    "init",
    type=click.Path(path_type=Path, exists=True),
    help="Keras model to fine-tune from (CK+: a FER2013 model)",
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
    models_dir: Path,
    name: str | None,
    init: Path | None,
    keep_head: bool,
    lr: float | None,
    folds: int,
    limit: int | None,
    mixed: str,
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
    _setup(mixed)
    from training.pipelines import run_ck, run_fer

    data = data or Path(DEFAULT_DATA[source])
    out = out or Path("runs") / f"{source}-{model_name}"
    try:
        if source == "ck":
            summary = run_ck(
                data, model_name, epochs or 60, batch, retrain, out, models_dir, name, init, folds, limit, lr, keep_head
            )
        else:
            summary = run_fer(
                data,
                source == "ferplus",
                model_name,
                epochs or 40,
                batch,
                retrain,
                out,
                models_dir,
                name,
                init,
                limit,
                lr,
                keep_head,
            )
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

    click.echo(evaluate_file(model_path, source, data or Path(DEFAULT_DATA[source]), out))


@cli.command()
@click.argument("model_path", type=click.Path(path_type=Path, exists=True))
@click.option("--source", type=SOURCES, required=True)
@click.option("--data", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="file stem of the .tflite and .json")
@click.option("--models-dir", type=click.Path(path_type=Path), default=Path("models"), show_default=True)
@click.option(
    "--recalibrate-bn",
    is_flag=True,
    help="first set the batch-norm statistics to their averages over the training split (what training "
    "now does after its last epoch); the result is also saved as <model>.recalibrated.keras",
)
def export(model_path: Path, source: str, data: Path | None, name: str, models_dir: Path, recalibrate_bn: bool) -> None:
    """Export a .keras model to full-integer int8 TFLite + JSON sidecar, and evaluate both."""
    _setup("off")
    from training.pipelines import export_file

    click.echo(export_file(model_path, source, data or Path(DEFAULT_DATA[source]), name, models_dir, recalibrate_bn))


if __name__ == "__main__":
    cli()
