"""Knowledge distillation: teachers' averaged soft labels -> one small student.

- :func:`ensemble`: load several trained teachers (``.keras``, or their saved predictions ``.npz``),
  predict every FER2013 image with flip test-time augmentation, report each teacher's and the
  ensemble's accuracy (PublicTest for selection, PrivateTest reported only), optionally pick the
  teachers by greedy forward selection on PublicTest, and write the ensemble's probabilities on the
  *Training* images as a small ``.npz`` (float16, with each image's CSV row so a student run can check
  it has the same images). Each teacher's own predictions can be kept (``models/teachers/preds/``), so
  teachers trained in different sessions add up without keeping their weights.
- :func:`attach_teacher`: put those soft labels beside a training :class:`Dataset`.
- :class:`DistillLoss`: ``(1 - alpha) * CE(hard) + alpha * T^2 * KL(teacher_T || student_T)`` (Hinton
  et al., 2015), where ``x_T`` is ``softmax(log(x) / T)``. The student ends in a softmax (so the exported
  int8 model outputs probabilities), so its logits are recovered as ``log(p)``, equal up to a constant
  that the softmax removes.

Targets travel as one ``N x 2K`` array: the hard (or FER+-blended, or mixed) targets, then the teachers'
probabilities, so mixup/cutmix blend both halves with the same weight.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from training.data import Dataset

log = logging.getLogger("training.distill")
EPS = 1e-7


@keras.saving.register_keras_serializable(package="emostream")
class DistillLoss(keras.losses.Loss):
    def __init__(
        self,
        classes: int,
        temperature: float = 4.0,
        alpha: float = 0.7,
        label_smoothing: float = 0.0,
        name: str = "distill",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.classes, self.temperature, self.alpha, self.label_smoothing = classes, temperature, alpha, label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        k, t = self.classes, self.temperature
        hard, teacher = y_true[:, :k], y_true[:, k:]
        if self.label_smoothing:
            hard = hard * (1.0 - self.label_smoothing) + self.label_smoothing / k
        p = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0)
        ce = -ops.sum(hard * ops.log(p), axis=-1)
        log_s = ops.log_softmax(ops.log(p) / t, axis=-1)
        q = ops.softmax(ops.log(ops.clip(teacher, EPS, 1.0)) / t, axis=-1)
        kl = ops.sum(q * (ops.log(ops.clip(q, EPS, 1.0)) - log_s), axis=-1)
        return (1.0 - self.alpha) * ce + self.alpha * (t * t) * kl

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "classes": self.classes,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "label_smoothing": self.label_smoothing,
        }


@keras.saving.register_keras_serializable(package="emostream")
def hard_accuracy(y_true: Any, y_pred: Any) -> Any:
    """Accuracy against the hard half of distillation targets (the student's own label)."""
    k = ops.shape(y_pred)[-1]
    return ops.cast(ops.argmax(y_true[:, :k], axis=-1) == ops.argmax(y_pred, axis=-1), "float32")


def attach_teacher(train: Dataset, npz: Path) -> Dataset:
    """``train`` with the teachers' probabilities of the same images (matched by CSV row)."""
    with np.load(npz) as z:
        soft, rows, classes = z["soft"].astype(np.float32), z["rows"], [str(c) for c in z["classes"]]
    if classes != train.classes:
        raise ValueError(f"{npz}: teacher classes {classes} differ from the dataset's {train.classes}")
    if train.rows is None:
        raise ValueError("distillation needs the images' CSV rows (FER2013 loader)")
    where = {int(r): i for i, r in enumerate(rows)}
    missing = [int(r) for r in train.rows if int(r) not in where]
    if missing:
        raise ValueError(f"{npz}: no teacher labels for {len(missing)} training images (first row {missing[0]})")
    teacher = soft[[where[int(r)] for r in train.rows]]
    teacher /= teacher.sum(axis=1, keepdims=True)
    agree = float((teacher.argmax(1) == train.labels).mean())
    log.info(
        "teacher soft labels for %d images from %s (argmax agrees with the label on %.1f %%)",
        len(teacher),
        npz,
        100 * agree,
    )
    out = train.subset(np.arange(len(train)))
    out.teacher = teacher
    return out


SPLIT_NAMES = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def teacher_name(path: Path) -> str:
    """``runs/teachers/t1-mixup/final.keras`` -> ``t1-mixup``; ``models/fer2013_emonet.keras`` -> ``fer2013_emonet``."""
    return path.parent.name if path.stem in ("final", "best", "last") else path.stem


def save_predictions(path: Path, preds: dict[str, np.ndarray], splits: dict[str, Dataset]) -> None:
    """One teacher's probabilities on every FER2013 split (float16), with the Training images' CSV rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {name: p.astype(np.float16) for name, p in preds.items()}
    rows, classes = np.asarray(splits["train"].rows, np.int32), np.array(splits["train"].classes)
    np.savez_compressed(path, **arrays, rows=rows, classes=classes)


def load_predictions(path: Path, splits: dict[str, Dataset]) -> dict[str, np.ndarray]:
    """A teacher's saved probabilities (:func:`save_predictions`), checked against these splits."""
    with np.load(path) as z:
        preds = {name: z[name].astype(np.float32) for name in splits}
        rows, classes = z["rows"], [str(c) for c in z["classes"]]
    train = splits["train"]
    if classes != train.classes or train.rows is None or not np.array_equal(rows, train.rows):
        raise ValueError(f"{path}: saved for other FER2013 images or classes than these")
    for name, split in splits.items():
        if preds[name].shape != (len(split), len(split.classes)):
            raise ValueError(f"{path}: {name} predictions of shape {preds[name].shape}, expected {len(split)} rows")
    return preds


def select_greedy(val_probs: list[np.ndarray], labels: np.ndarray) -> list[int]:
    """Forward selection (Caruana et al., 2004) on PublicTest: start from the best teacher, add the one
    that raises the mean's accuracy most, stop when none does. Indices into ``val_probs``, in order."""

    def acc(chosen: list[int]) -> float:
        return float((np.mean([val_probs[i] for i in chosen], axis=0).argmax(1) == labels).mean())

    chosen = [max(range(len(val_probs)), key=lambda i: acc([i]))]
    while True:
        rest = [i for i in range(len(val_probs)) if i not in chosen]
        if not rest:
            return chosen
        best = max(rest, key=lambda i: acc([*chosen, i]))
        if acc([*chosen, best]) <= acc(chosen):
            return chosen
        chosen.append(best)


def ensemble(
    models: list[Path],
    data: Path,
    out: Path,
    tta: bool = True,
    predictions: Path | None = None,
    select: bool = False,
) -> dict[str, Any]:
    """Each teacher's and the mean's accuracy on PublicTest and PrivateTest; the mean's probabilities
    on the Training images -> ``out`` (.npz, float16) and ``out`` with ``.json`` (the figures).

    A teacher is a ``.keras`` model (predicted here, with flip TTA unless ``tta`` is off; with
    ``predictions`` its probabilities are also saved there as ``<name>.npz``) or such a saved ``.npz``,
    so teachers trained in different sessions add up without their weights. With ``select`` the mean is
    over the teachers :func:`select_greedy` picks on PublicTest; otherwise over all."""
    from training.evaluate import metrics
    from training.pipelines import load_source
    from training.train import model_pixels, predict

    splits = load_source("fer", data)
    report: dict[str, Any] = {"teachers": [], "tta": "mean of image and its mirror" if tta else "none"}
    each: list[dict[str, np.ndarray]] = []
    for path in models:
        if path.suffix == ".npz":
            preds = load_predictions(path, splits)
        else:
            model = keras.models.load_model(path)
            preds = {name: predict(model, model_pixels(split, 48, "grey"), tta=tta) for name, split in splits.items()}
            keras.backend.clear_session()
            if predictions is not None:
                save_predictions(predictions / f"{teacher_name(path)}.npz", preds, splits)
        row: dict[str, Any] = {"model": str(path)}
        for name, split in splits.items():
            if name != "train":
                row[name] = round(metrics(split.labels, preds[name].argmax(1), split.classes)["accuracy"], 4)
        log.info("teacher %s: PublicTest %.4f  PrivateTest %.4f", path, row["val"], row["test"])
        report["teachers"].append(row)
        each.append(preds)
    chosen = select_greedy([p["val"] for p in each], splits["val"].labels) if select else list(range(len(each)))
    report["selected"] = [str(models[i]) for i in chosen]
    report["selection"] = "greedy forward selection on PublicTest accuracy" if select else "all teachers"
    mean = {name: np.mean([each[i][name] for i in chosen], axis=0) for name in splits}
    for name, split in splits.items():
        m = metrics(split.labels, mean[name].argmax(1), split.classes)
        report[f"ensemble_{SPLIT_NAMES[name]}"] = round(m["accuracy"], 4)
        if name == "test":
            report["ensemble_PrivateTest_per_class_recall"] = {c: v["recall"] for c, v in m["per_class"].items()}
    train = splits["train"]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        soft=mean["train"].astype(np.float16),
        rows=np.asarray(train.rows, np.int32),
        classes=np.array(train.classes),
    )
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    log.info(
        "ensemble of %d of %d teachers: PublicTest %.4f  PrivateTest %.4f -> %s",
        len(chosen),
        len(models),
        report["ensemble_PublicTest"],
        report["ensemble_PrivateTest"],
        out,
    )
    return report
