"""Model soups: several fine-tuned runs of one network averaged into one model of the same size.

Runs fine-tuned from the same initial weights (here: the shipped FER2013 model) with different seeds or
augmentation usually land in one basin of the loss, so the mean of their weights is itself a good model,
often better than each of them, at no cost at run time (Wortsman et al., 2022, "Model soups").

- :func:`average`: the element-wise mean of the models' weights (same network, checked).
- :func:`greedy_soup`: the ingredients sorted by PublicTest accuracy, each added to the soup only where
  the soup's PublicTest accuracy does not drop (the paper's *greedy soup*). Batch-norm statistics of a
  mean of weights are not the mean of the statistics, so every candidate soup gets its statistics
  recalibrated on the training images (:func:`training.train.recalibrate_bn`) before it is scored.
  Selection uses PublicTest only, one forward pass per image as the runtime runs; PrivateTest is
  reported, never used.
- The *uniform soup* (all ingredients) is scored too; the one saved is whichever of the two scores higher
  on PublicTest (on a tie the greedy one). Greedy adds one ingredient at a time, so it can stop short of a
  mix that only helps as a whole (measured: s2 + s1 greedy 69.63 %, with s2's epoch 24 uniform 69.74 %).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

log = logging.getLogger("training.soup")


def check_same(weights: list[list[np.ndarray]]) -> None:
    """Raise ValueError unless every weight list (``model.get_weights()``) has the first one's shapes."""
    if not weights:
        raise ValueError("a soup needs at least one model")
    shapes = [w.shape for w in weights[0]]
    for i, other in enumerate(weights[1:], start=1):
        if [w.shape for w in other] != shapes:
            raise ValueError(f"model {i} is another network than model 0 (weight shapes differ)")


def average(weights: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of several models' weight lists (``model.get_weights()``), one network."""
    check_same(weights)
    first = weights[0]
    return [np.mean([w[k] for w in weights], axis=0).astype(first[k].dtype) for k in range(len(first))]


def greedy(scores: list[float], score_soup: Callable[[list[int]], float]) -> tuple[list[int], float]:
    """The greedy soup's ingredients (indices, in the order added) and its score: start from the best
    ingredient, try the others best first, keep each one whose addition does not lower the score."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    chosen, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        score = score_soup([*chosen, i])
        log.info("soup %s + %d: %.4f (best so far %.4f)", chosen, i, score, best)
        if score >= best:
            chosen, best = [*chosen, i], score
    return chosen, best


def greedy_soup(paths: list[Path], source: str, data: Path, out: Path) -> dict[str, Any]:
    """Score each ``.keras`` ingredient on PublicTest, make the greedy soup, save it to ``out`` (a
    ``.keras`` to export with ``python -m training export``) and return the figures."""
    from training.evaluate import metrics
    from training.models import MODELS
    from training.pipelines import load_source
    from training.train import model_pixels, predict, recalibrate_bn

    splits = load_source(source, data)
    models = [keras.models.load_model(p, compile=False) for p in paths]
    names = {m.name for m in models}
    if len(names) != 1:
        raise ValueError(f"the ingredients are different networks: {sorted(names)}")
    info = MODELS[models[0].name]
    pixels = {k: model_pixels(s, info.size, info.colour) for k, s in splits.items()}
    weights = [m.get_weights() for m in models]
    check_same(weights)
    model = models[0]

    def accuracy(split: str) -> float:
        p = predict(model, pixels[split], tta=False)
        return metrics(splits[split].labels, p.argmax(1), splits[split].classes)["accuracy"]

    def mix(chosen: list[int]) -> None:
        model.set_weights(average([weights[i] for i in chosen]))
        if len(chosen) > 1:
            recalibrate_bn(model, pixels["train"])

    rows: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        model.set_weights(weights[i])
        rows.append(
            {"model": str(path), "PublicTest": round(accuracy("val"), 4), "PrivateTest": round(accuracy("test"), 4)}
        )
        log.info(
            "ingredient %d %s: PublicTest %.4f  PrivateTest %.4f",
            i,
            path,
            rows[-1]["PublicTest"],
            rows[-1]["PrivateTest"],
        )

    def score(chosen: list[int]) -> float:
        mix(chosen)
        return accuracy("val")

    chosen, _ = greedy([r["PublicTest"] for r in rows], score)
    every = list(range(len(paths)))
    candidates = {"greedy": chosen}
    if len(paths) > 1 and sorted(chosen) != every:
        candidates["uniform"] = every
    scored, mixed = {}, {}
    for kind, members in candidates.items():
        mix(members)
        mixed[kind] = model.get_weights()  # BN recalibrated: kept, not recalibrated again
        scored[kind] = {"PublicTest": round(accuracy("val"), 4), "PrivateTest": round(accuracy("test"), 4)}
    kept = max(candidates, key=lambda k: (scored[k]["PublicTest"], k == "greedy"))
    model.set_weights(mixed[kept])
    report: dict[str, Any] = {
        "ingredients": rows,
        "greedy": [str(paths[i]) for i in chosen],
        "greedy_soup": scored["greedy"],
        "uniform_soup": scored.get("uniform", scored["greedy"] if len(paths) > 1 else None),
        "kept": kept,
        "selected": [str(paths[i]) for i in candidates[kept]],
        "selection": "greedy or uniform soup, the higher on PublicTest accuracy (one forward pass), "
        "batch-norm recalibrated",
        "soup_PublicTest": scored[kept]["PublicTest"],
        "soup_PrivateTest": scored[kept]["PrivateTest"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    log.info(
        "%s soup of %d of %d: PublicTest %.4f  PrivateTest %.4f -> %s",
        kept,
        len(candidates[kept]),
        len(paths),
        report["soup_PublicTest"],
        report["soup_PrivateTest"],
        out,
    )
    return report
