"""End-to-end recipes behind the CLI: data -> train (or reuse weights) -> evaluate -> export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from training.data import Dataset
from training.models import MODELS, build, replace_head
from training.train import TrainConfig, fit

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
    if existing is not None and not retrain:
        log.info("reusing weights %s (pass --retrain to train again)", existing)
        return keras.models.load_model(existing), False
    if init is not None:
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
    fit(model, train, val, out, cfg, info.size, info.colour)  # type: ignore[arg-type]
    return model, True


def run_fer(
    data: Path,
    ferplus: bool,
    model_name: str,
    epochs: int,
    batch: int,
    retrain: bool,
    out: Path,
    models_dir: Path,
    name: str | None,
    init: Path | None,
    limit: int | None,
    lr: float | None = None,
    keep_head: bool = False,
) -> str:
    source = "ferplus" if ferplus else "fer"
    splits = load_source(source, data)
    train = splits["train"]
    if limit:
        train = train.subset(np.arange(min(limit, len(train))))
    log.info(
        "train %d  val %d  test %d  classes %s", len(train), len(splits["val"]), len(splits["test"]), train.classes
    )
    cfg = TrainConfig(epochs=epochs, batch=batch, lr=lr or TrainConfig.lr)
    model, _ = _load_or_train(model_name, train, splits["val"], out, cfg, retrain, init, keep_head)
    from training.evaluate import evaluate_model, plot_history
    from training.export import export_and_check

    plot_history(out)
    dataset = "ferplus" if ferplus else "fer2013"
    report = evaluate_model(model, splits["test"], MODELS[model_name], out / "eval-float", "float")
    name = name or f"{dataset}_{model_name}"
    exported = export_and_check(model, splits, MODELS[model_name], models_dir, name, dataset, report, out)
    return exported["summary"]


def run_ck(
    data: Path,
    model_name: str,
    epochs: int,
    batch: int,
    retrain: bool,
    out: Path,
    models_dir: Path,
    name: str | None,
    init: Path | None,
    folds: int,
    limit: int | None,
    lr: float | None = None,
    keep_head: bool = False,
) -> str:
    """Subject-independent k-fold CV (per-fold JSON), then a model on all subjects, exported."""
    from training.data.ck import subject_folds
    from training.evaluate import evaluate_model
    from training.export import export_and_check

    ck = load_source("ck", data)["all"]
    if limit:
        ck = ck.subset(np.arange(min(limit, len(ck))))
    assert ck.groups is not None
    info = MODELS[model_name]
    cfg = TrainConfig(epochs=epochs, batch=min(batch, 64), lr=lr or (1e-3 if init else 2e-3), warmup_epochs=3)
    results = []
    for k, test_idx in enumerate(subject_folds(ck.groups, folds)):
        train_idx = np.setdiff1d(np.arange(len(ck)), test_idx)
        assert not set(ck.groups[train_idx]) & set(ck.groups[test_idx]), "subject in train and test"
        fold_out = out / f"fold{k}"
        model, _ = _load_or_train(model_name, ck.subset(train_idx), None, fold_out, cfg, retrain, init, keep_head)
        rep = evaluate_model(model, ck.subset(test_idx), info, fold_out / "eval", "float")
        results.append(
            {
                "fold": k,
                "test_images": int(len(test_idx)),
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
        "epochs": epochs,
        "model": model_name,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv.json").write_text(json.dumps(cv, indent=2))
    log.info("CK+ %d-fold: mean %.4f  std %.4f", folds, cv["mean_accuracy"], cv["std_accuracy"])
    model, _ = _load_or_train(model_name, ck, None, out / "all", cfg, retrain, init, keep_head)
    name = name or f"ck_{model_name}"
    # The shipped model is trained on every subject: its float-vs-int8 check runs on those images,
    # and its accuracy estimate is the cross-validation mean above.
    report = evaluate_model(model, ck, info, out / "all" / "eval-float", "float (training images)")
    exported = export_and_check(model, {"train": ck, "test": ck}, info, models_dir, name, "ck+", report, out, cv=cv)
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

        n = recalibrate_bn(model, model_pixels(splits["train"], info.size, info.colour))  # type: ignore[arg-type]
        log.info("batch-norm statistics of %d layers recalibrated on %d training images", n, len(splits["train"]))
        model.save(path.with_name(path.stem + ".recalibrated.keras"))
    report = evaluate_model(model, splits["test"], info, path.parent / "eval-float", "float")
    dataset = {"fer": "fer2013", "ferplus": "ferplus", "ck": "ck+"}[source]
    # A CK+ run keeps its cross-validation results in the run folder (runs/ck-<model>/cv.json).
    cv_file = next((p / "cv.json" for p in (path.parent, path.parent.parent) if (p / "cv.json").is_file()), None)
    cv = json.loads(cv_file.read_text()) if cv_file is not None and source == "ck" else None
    return export_and_check(model, splits, info, models_dir, name, dataset, report, path.parent, cv=cv)["summary"]
