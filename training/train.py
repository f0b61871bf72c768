"""Training loop: in-memory arrays -> augmented ``tf.data`` pipeline -> ``model.fit``.

Consumes :class:`training.data.Dataset` objects (uint8 grey 48x48) and produces a trained Keras model
plus ``history.csv`` / ``best.keras`` in the run folder. Batches use ``drop_remainder=True``: TF 2.21's
``fit`` crashes on a last partial batch meeting a strided 1x1 conv.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bus.preprocess import SCALING, Colour, grey_to_model_pixels
from training.data import Dataset
from training.distill import DistillLoss, hard_accuracy  # also registers them for load_model

log = logging.getLogger("training.train")
assert SCALING == "x/255"  # the dataset map below implements this rule


@dataclass
class TrainConfig:
    epochs: int = 40
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: int = 2
    erase_prob: float = 0.5
    seed: int = 1
    verbose: int = 1
    mix: str = "none"  # "none" | "mixup" | "cutmix": blend image pairs and their targets (teachers)
    mix_alpha: float = 0.3  # Beta(alpha, alpha) for the blend weight
    distill_temperature: float = 4.0  # softmax temperature of the distillation term
    distill_alpha: float = 0.0  # weight of the teachers' term (0: plain training on the labels)
    snapshots_from: int = 0  # keep the weights after each epoch from this one on (snaps/ep<N>.keras); 0: none


def model_pixels(data: Dataset, size: int, colour: Colour) -> np.ndarray:
    """Dataset images -> the model's uint8 input layout via the runtime's preprocessing."""
    if data.images.shape[1:3] == (size, size) and colour == "grey":
        return data.images[..., None]
    return grey_to_model_pixels(data.images, size, colour)


def _targets(data: Dataset, distill: bool = False) -> np.ndarray:
    """Training targets: soft ones where the dataset has them, else one-hot; for distillation the
    teachers' probabilities follow in the same row (``training.distill``; one-hot again where a split,
    e.g. validation, has no teacher labels)."""
    base = (
        data.soft.astype(np.float32)
        if data.soft is not None
        else np.eye(len(data.classes), dtype=np.float32)[data.labels]
    )
    if not distill:
        return base
    teacher = data.teacher if data.teacher is not None else base
    return np.concatenate([base, teacher.astype(np.float32)], axis=1)


def augmenter(size: int, seed: int) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32"),
            keras.layers.RandomRotation(0.04, fill_mode="reflect", seed=seed + 1, dtype="float32"),  # +-15 degrees
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2, dtype="float32"),
            keras.layers.RandomZoom((-0.15, 0.15), fill_mode="reflect", seed=seed + 3, dtype="float32"),
        ],
        name="augment",
    )


def _photometric(x: tf.Tensor, erase_prob: float) -> tf.Tensor:
    n = tf.shape(x)[0]
    size = tf.shape(x)[1]
    b = tf.random.uniform((n, 1, 1, 1), -0.15, 0.15)
    c = tf.random.uniform((n, 1, 1, 1), 0.7, 1.3)
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = tf.clip_by_value((x - mean) * c + mean + b, 0.0, 1.0)
    if erase_prob <= 0:
        return x
    # Random erasing: one rectangle (10-35 % of each side) per image, with probability erase_prob.
    s = tf.cast(size, tf.float32)
    h = tf.cast(tf.random.uniform((n,), 0.1, 0.35) * s, tf.int32)
    w = tf.cast(tf.random.uniform((n,), 0.1, 0.35) * s, tf.int32)
    y0 = tf.cast(tf.random.uniform((n,)) * tf.cast(size - h, tf.float32), tf.int32)
    x0 = tf.cast(tf.random.uniform((n,)) * tf.cast(size - w, tf.float32), tf.int32)
    r = tf.range(size)[None, :]
    rows = (r >= y0[:, None]) & (r < (y0 + h)[:, None])
    cols = (r >= x0[:, None]) & (r < (x0 + w)[:, None])
    box = tf.logical_and(rows[:, :, None], cols[:, None, :])
    on = tf.random.uniform((n, 1, 1)) < erase_prob
    mask = tf.cast(tf.logical_and(box, on), tf.float32)[..., None]
    noise = tf.random.uniform(tf.shape(x))
    return x * (1.0 - mask) + noise * mask


def _beta(n: tf.Tensor, alpha: float) -> tf.Tensor:
    a = tf.random.gamma((n,), alpha)
    b = tf.random.gamma((n,), alpha)
    return a / (a + b + 1e-12)


def mix_batch(x: tf.Tensor, y: tf.Tensor, mode: str, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) inside one batch: each image is blended with
    a random partner, and its target with the same weight (for CutMix, the pasted box's area share)."""
    if mode == "none":
        return x, y
    n = tf.shape(x)[0]
    partner = tf.random.shuffle(tf.range(n))
    lam = _beta(n, alpha)
    if mode == "mixup":
        w = lam[:, None, None, None]
        return x * w + tf.gather(x, partner) * (1.0 - w), y * lam[:, None] + tf.gather(y, partner) * (
            1.0 - lam[:, None]
        )
    if mode != "cutmix":
        raise ValueError(f"unknown mix mode {mode!r}")
    size = tf.shape(x)[1]
    s = tf.cast(size, tf.float32)
    cut = tf.sqrt(1.0 - lam)  # side share of the pasted box: area share 1 - lam
    h = tf.cast(cut * s, tf.int32)
    cy = tf.cast(tf.random.uniform((n,)) * s, tf.int32)
    cx = tf.cast(tf.random.uniform((n,)) * s, tf.int32)
    y0, y1 = tf.clip_by_value(cy - h // 2, 0, size), tf.clip_by_value(cy + h // 2, 0, size)
    x0, x1 = tf.clip_by_value(cx - h // 2, 0, size), tf.clip_by_value(cx + h // 2, 0, size)
    r = tf.range(size)[None, :]
    rows = (r >= y0[:, None]) & (r < y1[:, None])
    cols = (r >= x0[:, None]) & (r < x1[:, None])
    box = tf.cast(tf.logical_and(rows[:, :, None], cols[:, None, :]), tf.float32)[..., None]
    area = tf.reduce_mean(box, axis=[1, 2, 3])  # the exact share pasted, after clipping at the border
    x = x * (1.0 - box) + tf.gather(x, partner) * box
    return x, y * (1.0 - area[:, None]) + tf.gather(y, partner) * area[:, None]


def pipeline(pixels: np.ndarray, targets: np.ndarray, batch: int, train: bool, cfg: TrainConfig) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((pixels, targets))
    if train:
        ds = ds.shuffle(len(pixels), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch, drop_remainder=train)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE)
    if train:
        aug = augmenter(pixels.shape[1], cfg.seed)
        ds = ds.map(
            lambda x, y: (_photometric(aug(x, training=True), cfg.erase_prob), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if cfg.mix != "none":
            ds = ds.map(lambda x, y: mix_batch(x, y, cfg.mix, cfg.mix_alpha), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def compile_model(model: keras.Model, steps: int, cfg: TrainConfig, lr: float | None = None) -> None:
    lr = cfg.lr if lr is None else lr
    warm = min(cfg.warmup_epochs * steps, max(0, cfg.epochs * steps - 1))
    schedule = keras.optimizers.schedules.CosineDecay(
        lr / 10 if warm else lr,
        max(1, cfg.epochs * steps - warm),
        alpha=0.01,
        warmup_target=lr if warm else None,
        warmup_steps=warm,
    )
    loss: keras.losses.Loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    metric: Any = "accuracy"
    if cfg.distill_alpha > 0:
        k = int(model.output_shape[-1])
        loss = DistillLoss(k, cfg.distill_temperature, cfg.distill_alpha, cfg.label_smoothing)
        metric = keras.metrics.MeanMetricWrapper(hard_accuracy, name="accuracy")
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
        loss=loss,
        metrics=[metric],
    )


class Progress(keras.callbacks.Callback):
    """After every epoch: ``last.keras`` (weights and optimizer state) and ``progress.json`` (epochs done,
    best validation accuracy), so that a run stopped at any point continues where it was (:func:`fit`).
    From epoch ``snapshots_from`` on (1-based; 0: never) also a copy of the epoch's weights,
    ``snaps/ep<N>.keras``: the ingredients of a model soup (``python -m training soup``)."""

    def __init__(self, out: Path, best: float, snapshots_from: int = 0) -> None:
        super().__init__()
        self.out, self.best, self.snapshots_from = out, best, snapshots_from

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        val = (logs or {}).get("val_accuracy")
        if val is not None and val > self.best:
            self.best = float(val)
        tmp = self.out / "last.tmp.keras"
        self.model.save(tmp)
        tmp.replace(self.out / "last.keras")
        if self.snapshots_from and epoch + 1 >= self.snapshots_from:
            # loaded uncompiled: saved without the optimizer's state (a third of the size)
            (self.out / "snaps").mkdir(exist_ok=True)
            keras.models.load_model(self.out / "last.keras", compile=False).save(
                self.out / "snaps" / f"ep{epoch + 1}.keras"
            )
        write_progress(self.out, epoch + 1, self.best)


def resume(model: keras.Model, last: Path) -> None:
    """Load an interrupted run's weights and optimizer state (moments, step count: the learning-rate
    schedule carries on from its step) into ``model``, compiled with the same recipe."""
    saved = keras.models.load_model(last)
    model.set_weights(saved.get_weights())
    model.optimizer.build(model.trainable_variables)
    mine, theirs = model.optimizer.variables, saved.optimizer.variables
    if len(mine) != len(theirs):
        raise ValueError(f"{last}: optimizer state of {len(theirs)} variables, this recipe has {len(mine)}")
    for a, b in zip(mine, theirs, strict=True):
        a.assign(b)


def write_progress(out: Path, epochs_done: int, best: float) -> None:
    (out / "progress.json").write_text(json.dumps({"epochs_done": epochs_done, "best_val_accuracy": best}))


def read_progress(out: Path) -> tuple[int, float]:
    """(epochs done, best validation accuracy) of an interrupted run in ``out``; (0, -inf) for none."""
    try:
        p = json.loads((out / "progress.json").read_text())
    except (OSError, ValueError):
        return 0, -math.inf
    if not (out / "last.keras").is_file():
        return 0, -math.inf
    return int(p["epochs_done"]), float(p["best_val_accuracy"])


def interrupted(out: Path) -> bool:
    """Whether ``out`` holds a run stopped before its last epoch: :func:`fit` continues it."""
    return read_progress(out)[0] > 0 and not (out / "final.keras").is_file()


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch (for background runs whose stdout is a file)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs, self.t0 = epochs, time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        log.info(
            "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  (%.0f s)",
            epoch + 1,
            self.epochs,
            logs.get("loss", math.nan),
            logs.get("accuracy", math.nan),
            logs.get("val_loss", math.nan),
            logs.get("val_accuracy", math.nan),
            time.time() - self.t0,
        )
        self.t0 = time.time()


def fit(
    model: keras.Model,
    train: Dataset,
    val: Dataset | None,
    out: Path,
    cfg: TrainConfig,
    size: int,
    colour: Colour,
    lr: float | None = None,
) -> keras.callbacks.History:
    """Train ``model``; keeps the weights with the best validation accuracy (or the last without val),
    then recalibrates its batch-norm statistics on the training images (:func:`recalibrate_bn`)."""
    out.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(cfg.seed)
    x = model_pixels(train, size, colour)
    batch = min(cfg.batch, len(x))
    steps = len(x) // batch
    if steps == 0:
        raise ValueError(f"{len(x)} training images: fewer than one batch")
    distill = cfg.distill_alpha > 0
    if distill and train.teacher is None:
        raise ValueError("distillation (distill_alpha > 0) needs teacher soft labels on the training set")
    train_ds = pipeline(x, _targets(train, distill), batch, True, cfg)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(str(out / "history.csv")),
        EpochLog(cfg.epochs),
    ]
    val_ds = None
    if val is not None and len(val):
        val_ds = pipeline(model_pixels(val, size, colour), _targets(val, distill), 256, False, cfg)
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(out / "best.keras"), monitor="val_accuracy", mode="max", save_best_only=True
            )
        )
    compile_model(model, steps, cfg, lr)
    done, best = read_progress(out)
    if done:
        resume(model, out / "last.keras")
        log.info("resuming %s after epoch %d of %d (best validation accuracy %.4f)", out, done, cfg.epochs, best)
        callbacks[0] = keras.callbacks.CSVLogger(str(out / "history.csv"), append=True)
        if val_ds is not None and math.isfinite(best):
            callbacks[-1] = keras.callbacks.ModelCheckpoint(
                str(out / "best.keras"),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
                initial_value_threshold=best,
            )
    callbacks.append(Progress(out, best, cfg.snapshots_from))
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        initial_epoch=done,
        callbacks=callbacks,
        verbose=cfg.verbose,
    )
    if val_ds is not None and (out / "best.keras").exists():
        model.set_weights(keras.models.load_model(out / "best.keras").get_weights())
    n = recalibrate_bn(model, x)
    log.info("batch-norm statistics of %d layers recalibrated on the %d training images", n, len(x))
    model.save(out / "final.keras")
    return history


def recalibrate_bn(model: keras.Model, pixels: np.ndarray, batch: int = 256) -> int:
    """Set every BatchNormalization layer's moving mean and variance to their exact averages over
    ``pixels`` (uint8 model input, no augmentation), one pass ("precise BN"). During training they
    are running averages over augmented batches of a moving network; measured on FER2013 this alone
    took PublicTest from 66.79 % to 67.65 % and PrivateTest from 67.12 % to 67.93 % (docs in
    models/README.md). Only the moving statistics change. Returns how many layers were recalibrated."""
    layers = [la for la in _all_layers(model) if isinstance(la, keras.layers.BatchNormalization)]
    if not layers or not len(pixels):
        return 0
    saved = [la.momentum for la in layers]
    try:
        for i, start in enumerate(range(0, len(pixels), batch)):
            for la in layers:
                la.momentum = i / (i + 1)  # moving = mean of the batch statistics so far
            model(pixels[start : start + batch].astype(np.float32) / 255.0, training=True)
    finally:
        for la, m in zip(layers, saved, strict=True):
            la.momentum = m
    return len(layers)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    out = []
    for la in model.layers:
        out.extend(_all_layers(la) if isinstance(la, keras.Model) else [la])
    return out


def predict(model: keras.Model, pixels: np.ndarray, tta: bool = True, batch: int = 256) -> np.ndarray:
    """Class probabilities for uint8 model pixels; with ``tta`` the mean over the image and its mirror."""
    x = pixels.astype(np.float32) / 255.0
    p = model.predict(x, batch_size=batch, verbose=0)
    if tta:
        p = (p + model.predict(x[:, :, ::-1], batch_size=batch, verbose=0)) / 2
    return p
