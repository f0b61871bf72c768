"""Evaluation: accuracy, per-class precision/recall/F1, confusion matrix (JSON + PNG), training curves.

Consumes a model (Keras, or an int8 .tflite run by the LiteRT interpreter) and a test
:class:`training.data.Dataset`; writes ``report.json`` and ``confusion.png`` into the given folder.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bus.preprocess import grey_to_model_pixels
from bus.sidecar import load_spec
from training.data import Dataset

log = logging.getLogger("training.evaluate")


def metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    k = len(classes)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(k), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "images": int(cm.sum()),
        "per_class": {
            c: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(s),
            }
            for c, p, r, f, s in zip(classes, precision, recall, f1, cm.sum(1), strict=True)
        },
        "macro_f1": float(f1.mean()),
        "confusion": cm.tolist(),
        "classes": classes,
    }


def plot_confusion(report: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(report["confusion"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    classes = report["classes"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.7 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {report['accuracy']:.2%}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(run: Path) -> Path | None:
    """history.csv (Keras CSVLogger) -> curves.png with loss and accuracy per epoch."""
    src = run / "history.csv"
    if not src.is_file():
        return None
    rows = list(csv.DictReader(src.open()))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [float(r[key]) for r in rows], label=f"train {key}")
        if f"val_{key}" in rows[0]:
            ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _write(report: dict[str, Any], out: Path, title: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_confusion(report, out / "confusion.png", title)
    log.info(
        "%s: accuracy %.4f (macro F1 %.4f) on %d images -> %s",
        title,
        report["accuracy"],
        report["macro_f1"],
        report["images"],
        out,
    )
    return report


def evaluate_model(model: Any, data: Dataset, info: Any, out: Path, tag: str) -> dict[str, Any]:
    """Keras model on ``data``: plain and with horizontal-flip test-time augmentation (TTA)."""
    from training.train import model_pixels, predict

    x = model_pixels(data, info.size, info.colour)
    plain = predict(model, x, tta=False)
    both = predict(model, x, tta=True)
    report = metrics(data.labels, both.argmax(1), data.classes)
    report["accuracy_no_tta"] = metrics(data.labels, plain.argmax(1), data.classes)["accuracy"]
    report["tta"] = "mean of image and its mirror"
    return _write(report, out, f"{tag} (flip TTA)")


def tflite_predict(
    path: Path,
    pixels: np.ndarray,
    batch: int = 256,
    mirror: bool | None = None,
    calibrated: bool = True,
    mirror_zoom: float | None = None,
) -> np.ndarray:
    """Class probabilities from a .tflite model (with its sidecar) for uint8 model pixels (N x S x S x C),
    through the runtime classifier's own code path (quantisation, batching, dequantisation, the mean
    with the mirror image where the sidecar or ``mirror`` says so, zoomed as the sidecar or ``mirror_zoom``
    says, and the sidecar's class bias and temperature unless ``calibrated`` is off)."""
    from classifier.model import EmotionModel

    model = EmotionModel(path, threads=2, mirror=mirror, mirror_zoom=mirror_zoom)
    if not calibrated:
        model.temperature, model.class_bias = 1.0, None
    chunks = [model.classify(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(model.labels)), np.float32)


def evaluate_tflite(path: Path, data: Dataset, out: Path) -> dict[str, Any]:
    spec = load_spec(path)
    x = grey_to_model_pixels(data.images, spec.size, spec.colour)
    p = tflite_predict(path, x)
    if list(spec.labels) != data.classes:
        raise ValueError(f"{path}: labels {list(spec.labels)} differ from the dataset's {data.classes}")
    report = metrics(data.labels, p.argmax(1), data.classes)
    return _write(report, out, f"{path.stem} int8 (LiteRT)")


def latency_ms(path: Path, repeats: int = 300) -> dict[str, float]:
    """Median (and p95) ms per single-face invoke on one thread with the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.zeros(inp["shape"], inp["dtype"])
    times = []
    for _ in range(repeats + 20):
        t = time.perf_counter()
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        times.append((time.perf_counter() - t) * 1000)
    t_ = np.array(times[20:])
    return {"median_ms": round(float(np.median(t_)), 4), "p95_ms": round(float(np.percentile(t_, 95)), 4)}
