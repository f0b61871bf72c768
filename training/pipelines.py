"""End-to-end recipes behind the CLI: data -> train (or reuse weights) -> evaluate -> export."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import Dataset
from training.models import MODELS, build, replace_head
from training.train import TrainConfig, fit, interrupted

log = logging.getLogger("training")


def load_source(source: str, data: Path) -> dict[str, Dataset]:
    """{"train", "val", "test"} for fer/ferplus; {"all"} for ck."""
    if source == "ck":
        from training.data.ck import load_ck

        return {"all": load_ck(data)}
    from training.data.fer import find_csv, load_fer

    csv_dir = data if data.is_dir() else data.parent
    ferplus = csv_dir / "fer2013new.csv" if source == "ferplus" else None
    if ferplus is not None and not ferplus.is_file():
        from training.data import DatasetError

        raise DatasetError(f"FER+ labels not found: {ferplus}")
    find_csv(data)
    splits = load_fer(data, ferplus)
    return {"train": splits["Training"], "val": splits["PublicTest"], "test": splits["PrivateTest"]}


@dataclass(frozen=True)
class RunSpec:
    """What one ``python -m training`` run does besides the recipe (:class:`TrainConfig`)."""

    data: Path
    out: Path
    model_name: str = "emonet"
    models_dir: Path | None = None  # where the int8 model goes; None: no export (teachers)
    name: str | None = None
    init: Path | None = None
    keep_head: bool = False
    retrain: bool = False
    limit: int | None = None
    folds: int = 10
    ferplus_blend: float = 0.0  # FER2013 targets softened by the FER+ votes (teachers)
    distill: Path | None = None  # teacher soft labels (.npz from ``python -m training ensemble``)


def _weights(out: Path) -> Path | None:
    for name in ("best.keras", "final.keras"):
        if (out / name).is_file():
            return out / name
    return None


def _load_or_train(
    model_name: str,
    train: Dataset,
    val: Dataset | None,
    out: Path,
    cfg: TrainConfig,
    retrain: bool,
    init: Path | None,
    keep_head: bool = False,
):
    import keras

    info = MODELS[model_name]
    existing = _weights(out)
    resuming = not retrain and interrupted(out)
    if retrain:
        for stale in ("last.keras", "progress.json"):
            (out / stale).unlink(missing_ok=True)
    elif existing is not None and not resuming:
        log.info("reusing weights %s (pass --retrain to train again)", existing)
        return keras.models.load_model(existing), False
    if resuming:
        # the network and its weights come from the resume point (fit loads its optimizer state): --init,
        # read when the run began, need not exist any more (a run resumed on a fresh clone from a committed
        # checkpoint, started from weights that were never committed)
        model = keras.models.load_model(out / "last.keras", compile=False)
        log.info("resuming %s: the network from its last.keras (--init is not read)", out)
    elif init is not None:
        base = keras.models.load_model(init)
        if keep_head:
            n_out = base.output_shape[-1]
            if n_out != len(train.classes):
                raise ValueError(f"--keep-head: {init} has {n_out} outputs, the dataset {len(train.classes)} classes")
            model = base
            log.info("continuing training of %s (same head, peak lr %g)", init, cfg.lr)
        else:
            model = replace_head(base, len(train.classes))
            log.info("fine-tuning from %s (fresh head, peak lr %g)", init, cfg.lr)
    else:
        model = build(model_name, len(train.classes))
    fit(model, train, val, out, cfg, info.size, info.colour)
    return model, True


def run_fer(run: RunSpec, cfg: TrainConfig, ferplus: bool = False) -> str:
    source = "ferplus" if ferplus else "fer"
    splits = load_source(source, run.data)
    train = splits["train"]
    if run.limit:
        train = train.subset(np.arange(min(run.limit, len(train))))
    if run.ferplus_blend:
        if ferplus:
            raise ValueError("--ferplus-blend softens FER2013 labels; --source ferplus trains on the votes already")
        from training.data.fer import ferplus_blend, load_ferplus_votes

        csv_dir = run.data if run.data.is_dir() else run.data.parent
        train = ferplus_blend(train, load_ferplus_votes(csv_dir / "fer2013new.csv"), run.ferplus_blend)
        log.info("targets: FER2013 labels blended with the FER+ votes (weight %.2f)", run.ferplus_blend)
    if run.distill is not None:
        from training.distill import attach_teacher

        train = attach_teacher(train, run.distill)
    log.info(
        "train %d  val %d  test %d  classes %s", len(train), len(splits["val"]), len(splits["test"]), train.classes
    )
    model, _ = _load_or_train(run.model_name, train, splits["val"], run.out, cfg, run.retrain, run.init, run.keep_head)
    from training.evaluate import evaluate_model, plot_history

    plot_history(run.out)
    dataset = "ferplus" if ferplus else "fer2013"
    report = evaluate_model(model, splits["test"], MODELS[run.model_name], run.out / "eval-float", "float")
    if run.models_dir is None:
        return f"{run.out}: float {report['accuracy_no_tta']:.2%} (flip TTA {report['accuracy']:.2%}) on PrivateTest"
    from training.export import export_and_check

    name = run.name or f"{dataset}_{run.model_name}"
    exported = export_and_check(
        model, splits, MODELS[run.model_name], run.models_dir, name, dataset, report, run.out, distill=run.distill
    )
    return exported["summary"]


def run_ck(run: RunSpec, cfg: TrainConfig) -> str:
    """Subject-independent k-fold CV (per-fold JSON), then a model on all subjects, exported."""
    from training.data.ck import subject_folds
    from training.evaluate import evaluate_model
    from training.export import export_and_check

    ck = load_source("ck", run.data)["all"]
    if run.limit:
        ck = ck.subset(np.arange(min(run.limit, len(ck))))
    assert ck.groups is not None
    info = MODELS[run.model_name]
    folds, init, keep_head, retrain = run.folds, run.init, run.keep_head, run.retrain
    results = []
    for k, test_idx in enumerate(subject_folds(ck.groups, folds)):
        train_idx = np.setdiff1d(np.arange(len(ck)), test_idx)
        assert not set(ck.groups[train_idx]) & set(ck.groups[test_idx]), "subject in train and test"
        fold_out = run.out / f"fold{k}"
        model, _ = _load_or_train(run.model_name, ck.subset(train_idx), None, fold_out, cfg, retrain, init, keep_head)
        rep = evaluate_model(model, ck.subset(test_idx), info, fold_out / "eval", "float")
        results.append(
            {
                "fold": k,
                "test_images": len(test_idx),
                "test_subjects": sorted(int(s) for s in set(ck.groups[test_idx])),
                "accuracy_flip_tta": rep["accuracy"],
                "accuracy_single_pass": rep["accuracy_no_tta"],
            }
        )
        log.info("fold %d/%d: accuracy %.4f on %d images", k + 1, folds, rep["accuracy_no_tta"], len(test_idx))
    single = np.array([r["accuracy_single_pass"] for r in results])
    tta = np.array([r["accuracy_flip_tta"] for r in results])
    cv = {
        "folds": results,
        # single pass = one forward pass, as the shipped model runs; the export reports this one
        "mean_accuracy": float(single.mean()),
        "std_accuracy": float(single.std()),
        "mean_accuracy_flip_tta": float(tta.mean()),
        "std_accuracy_flip_tta": float(tta.std()),
        "protocol": f"{folds}-fold subject-independent cross-validation on CK+48",
        "init": str(init) if init else None,
        "epochs": cfg.epochs,
        "model": run.model_name,
    }
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "cv.json").write_text(json.dumps(cv, indent=2))
    log.info("CK+ %d-fold: mean %.4f  std %.4f", folds, cv["mean_accuracy"], cv["std_accuracy"])
    model, _ = _load_or_train(run.model_name, ck, None, run.out / "all", cfg, retrain, init, keep_head)
    name = run.name or f"ck_{run.model_name}"
    # The shipped model is trained on every subject: its float-vs-int8 check runs on those images,
    # and its accuracy estimate is the cross-validation mean above.
    report = evaluate_model(model, ck, info, run.out / "all" / "eval-float", "float (training images)")
    if run.models_dir is None:
        return f"CK+ {cv['protocol']}: mean {cv['mean_accuracy']:.2%} +- {cv['std_accuracy']:.2%} (not exported)"
    exported = export_and_check(
        model, {"train": ck, "test": ck}, info, run.models_dir, name, "ck+", report, run.out, cv=cv
    )
    return exported["summary"]


def evaluate_file(path: Path, source: str, data: Path, out: Path | None) -> str:
    from training.evaluate import evaluate_model, evaluate_tflite

    splits = load_source(source, data)
    test = splits.get("test") or splits["all"]
    out = out or path.parent / f"eval-{path.stem}"
    if path.suffix == ".tflite":
        report = evaluate_tflite(path, test, out)
    else:
        import keras

        model = keras.models.load_model(path)
        info = next(i for n, i in MODELS.items() if model.name == n)
        report = evaluate_model(model, test, info, out, path.stem)
    return f"{path}: accuracy {report['accuracy']:.4f} on {len(test)} images; report in {out}"


def export_file(path: Path, source: str, data: Path, name: str, models_dir: Path, recalibrate: bool = False) -> str:
    import keras

    from training.evaluate import evaluate_model
    from training.export import export_and_check

    splits = load_source(source, data)
    if "all" in splits:
        splits = {"train": splits["all"], "test": splits["all"]}
    model = keras.models.load_model(path)
    info = MODELS[model.name]
    if recalibrate:
        from training.train import model_pixels, recalibrate_bn

        n = recalibrate_bn(model, model_pixels(splits["train"], info.size, info.colour))
        log.info("batch-norm statistics of %d layers recalibrated on %d training images", n, len(splits["train"]))
        model.save(path.with_name(path.stem + ".recalibrated.keras"))
    report = evaluate_model(model, splits["test"], info, path.parent / "eval-float", "float")
    dataset = {"fer": "fer2013", "ferplus": "ferplus", "ck": "ck+"}[source]
    # A CK+ run keeps its cross-validation results in the run folder (runs/ck-<model>/cv.json).
    cv_file = next((p / "cv.json" for p in (path.parent, path.parent.parent) if (p / "cv.json").is_file()), None)
    cv = json.loads(cv_file.read_text()) if cv_file is not None and source == "ck" else None
    return export_and_check(model, splits, info, models_dir, name, dataset, report, path.parent, cv=cv)["summary"]
