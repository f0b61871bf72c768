"""Distillation (loss, teacher soft labels, ensemble), mixup/cutmix, resumable runs (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras
import tensorflow as tf

from training.data import Dataset
from training.data.fer import FER_CLASSES, FERPLUS_COLUMNS, ferplus_blend, load_fer
from training.distill import (
    DistillLoss,
    attach_teacher,
    hard_accuracy,
    load_predictions,
    save_predictions,
    select_greedy,
    teacher_name,
)
from training.train import mix_batch, read_progress

K = 3


def _softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp(z / t - (z / t).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _loss(hard: np.ndarray, teacher: np.ndarray, student: np.ndarray, **kw: float) -> float:
    y = np.concatenate([hard, teacher], axis=1).astype(np.float32)
    return float(DistillLoss(K, **kw)(tf.constant(y), tf.constant(student.astype(np.float32))))


def test_loss_by_hand() -> None:
    rng = np.random.default_rng(0)
    hard = np.eye(K)[rng.integers(0, K, 5)]
    teacher = _softmax(rng.normal(size=(5, K)))
    student = _softmax(rng.normal(size=(5, K)))
    t, a = 3.0, 0.6
    ce = -(hard * np.log(student)).sum(1)
    q, s = _softmax(np.log(teacher), t), _softmax(np.log(student), t)
    kl = (q * (np.log(q) - np.log(s))).sum(1)
    expected = ((1 - a) * ce + a * t * t * kl).mean()
    assert _loss(hard, teacher, student, temperature=t, alpha=a) == pytest.approx(expected, rel=1e-4)


def test_alpha_zero_is_cross_entropy_and_a_copy_of_the_teacher_costs_nothing() -> None:
    rng = np.random.default_rng(1)
    hard = np.eye(K)[rng.integers(0, K, 8)]
    teacher = _softmax(rng.normal(size=(8, K)))
    student = _softmax(rng.normal(size=(8, K)))
    ce = float(keras.losses.CategoricalCrossentropy()(hard, student))
    assert _loss(hard, teacher, student, alpha=0.0) == pytest.approx(ce, rel=1e-4)
    assert _loss(hard, teacher, teacher, alpha=1.0, temperature=4.0) == pytest.approx(0.0, abs=1e-5)
    assert _loss(hard, teacher, student, alpha=1.0, temperature=4.0) > 0.001


def test_loss_and_metric_survive_save_and_load(tmp_path: Path) -> None:
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(K, activation="softmax")(inp))
    model.compile(
        optimizer="adam",
        loss=DistillLoss(K, 2.0, 0.5, 0.1),
        metrics=[keras.metrics.MeanMetricWrapper(hard_accuracy, name="accuracy")],
    )
    x = np.zeros((4, 2), np.float32)
    y = np.concatenate([np.eye(K)[[0, 1, 2, 0]], np.full((4, K), 1 / K)], axis=1).astype(np.float32)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    assert back.loss.get_config()["temperature"] == 2.0 and back.loss.alpha == 0.5


def _fer(rows: np.ndarray, labels: np.ndarray) -> Dataset:
    n = len(rows)
    return Dataset(np.zeros((n, 48, 48), np.uint8), labels, list(FER_CLASSES), rows=rows)


def test_attach_teacher_matches_images_by_row(tmp_path: Path) -> None:
    soft = _softmax(np.random.default_rng(2).normal(size=(5, 7)))
    np.savez(
        tmp_path / "t.npz",
        soft=soft.astype(np.float16),
        rows=np.array([10, 11, 12, 13, 14]),
        classes=np.array(FER_CLASSES),
    )
    train = _fer(np.array([13, 10]), np.array([0, 1]))
    got = attach_teacher(train, tmp_path / "t.npz")
    assert got.teacher is not None
    np.testing.assert_allclose(got.teacher, soft[[3, 0]], atol=2e-3)
    with pytest.raises(ValueError, match="no teacher labels for 1 training images"):
        attach_teacher(_fer(np.array([10, 99]), np.array([0, 1])), tmp_path / "t.npz")
    np.savez(tmp_path / "w.npz", soft=soft, rows=np.arange(5), classes=np.array(["a"] * 7))
    with pytest.raises(ValueError, match="teacher classes"):
        attach_teacher(_fer(np.array([1]), np.array([0])), tmp_path / "w.npz")


def _one_hot(labels: list[int], k: int = 3) -> np.ndarray:
    return np.eye(k)[labels]


def test_greedy_selection_adds_a_teacher_only_when_the_mean_gains() -> None:
    labels = np.array([0, 1, 2, 0])
    right_but_last = _one_hot([0, 1, 2, 1]) * 0.6 + 0.4 / 3  # 3/4 right: the best single teacher
    # 1/4 right alone (unsure and wrong on the first three), but sure where the first errs
    fixes_last = np.array([[0.3, 0.4, 0.3], [0.3, 0.3, 0.4], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])
    useless = _one_hot([1, 1, 1, 1]) * 0.99 + 0.01 / 3  # 1/4 right; adding it only hurts
    assert select_greedy([useless, right_but_last, fixes_last], labels) == [1, 2]
    assert select_greedy([useless, right_but_last], labels) == [1]
    assert select_greedy([right_but_last], labels) == [0]


def test_saved_predictions_stand_for_the_teacher_and_refuse_other_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    splits = {
        "train": _fer(np.array([10, 11, 12]), np.array([0, 1, 2])),
        "val": _fer(np.array([20, 21]), np.array([0, 1])),
        "test": _fer(np.array([30, 31]), np.array([1, 0])),
    }
    preds = {name: _softmax(rng.normal(size=(len(d), 7))) for name, d in splits.items()}
    path = tmp_path / "preds" / f"{teacher_name(Path('runs/teachers/t9-x/final.keras'))}.npz"
    save_predictions(path, preds, splits)
    assert path.name == "t9-x.npz" and teacher_name(Path("models/fer2013_emonet.keras")) == "fer2013_emonet"
    got = load_predictions(path, splits)
    for name in splits:
        np.testing.assert_allclose(got[name], preds[name], atol=1e-3)
    other = {**splits, "train": _fer(np.array([10, 11, 13]), np.array([0, 1, 2]))}
    with pytest.raises(ValueError, match="other FER2013 images"):
        load_predictions(path, other)


def test_ferplus_blend_softens_fer_labels_with_the_votes() -> None:
    votes = np.zeros((3, 10), np.int64)
    votes[0, FERPLUS_COLUMNS.index("happiness")] = 10  # agrees with label happy
    votes[1, FERPLUS_COLUMNS.index("neutral")] = 6  # disagrees: label angry
    votes[1, FERPLUS_COLUMNS.index("anger")] = 4
    votes[2, 9] = 10  # only not-a-face votes: keeps the one-hot label
    data = _fer(np.array([0, 1, 2]), np.array([3, 0, 4]))
    got = ferplus_blend(data, votes, 0.5).soft
    assert got is not None
    np.testing.assert_allclose(got.sum(1), 1.0)
    assert got[0, 3] == pytest.approx(1.0)
    assert got[1, 0] == pytest.approx(0.5 + 0.5 * 0.4) and got[1, 6] == pytest.approx(0.3)
    assert got[2, 4] == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mix_keeps_targets_summing_to_one_and_blends_images(mode: str) -> None:
    tf.random.set_seed(0)
    x = tf.constant(np.stack([np.full((8, 8, 1), v, np.float32) for v in (0.0, 1.0, 0.0, 1.0)]))
    y = tf.constant(np.eye(4, dtype=np.float32))
    mx, my = mix_batch(x, y, mode, 1.0)
    my = my.numpy()
    np.testing.assert_allclose(my.sum(1), 1.0, atol=1e-5)
    # for each image the share of 'white' pixels equals the weight its targets give the white images
    white = mx.numpy().mean(axis=(1, 2, 3))
    np.testing.assert_allclose(white, my[:, [1, 3]].sum(1), atol=1e-5)
    assert mix_batch(x, y, "none", 1.0)[0] is x


def test_fer_rows_are_csv_rows(tmp_path: Path) -> None:
    from tests.unit.training.test_training_fer import rows, write

    splits = load_fer(write(tmp_path / "fer2013.csv", rows(3)))
    assert splits["Training"].rows.tolist() == [0, 1, 2]
    assert splits["PublicTest"].rows.tolist() == [3, 4] and splits["PrivateTest"].rows.tolist() == [5, 6]


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    from training.models import build
    from training.train import TrainConfig, fit

    rng = np.random.default_rng(0)
    train = Dataset(rng.integers(0, 255, (32, 48, 48), dtype=np.uint8), np.arange(32) % 7, list(FER_CLASSES))
    val = train.subset(np.arange(8))
    cfg = TrainConfig(epochs=3, batch=16, verbose=0, warmup_epochs=1)

    class StopAfterFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            raise KeyboardInterrupt  # the session ends here

    out = tmp_path / "run"
    keras.utils.set_random_seed(0)
    model = build("emonet", 7)
    import training.train as tt

    real = tt.EpochLog
    tt.EpochLog = lambda epochs: StopAfterFirst()  # type: ignore[assignment, misc]
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(model, train, val, out, cfg, 48, "grey")
    finally:
        tt.EpochLog = real  # type: ignore[misc]
    # the interrupt came before Progress (callbacks run in order): nothing saved for epoch 1 yet
    assert read_progress(out)[0] == 0
    fit(build("emonet", 7), train, val, out, TrainConfig(epochs=1, batch=16, verbose=0, warmup_epochs=1), 48, "grey")
    assert read_progress(out)[0] == 1
    assert json.loads((out / "progress.json").read_text())["epochs_done"] == 1
    # a longer recipe continues from epoch 1: two more epochs, history appended
    model = build("emonet", 7)
    fit(model, train, val, out, TrainConfig(epochs=3, batch=16, verbose=0, warmup_epochs=1), 48, "grey")
    assert read_progress(out)[0] == 3
    history = (out / "history.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]
    saved = keras.models.load_model(out / "last.keras")
    assert int(saved.optimizer.iterations.numpy()) == 3 * 2  # 32 images / batch 16, three epochs


def test_snapshots_keep_each_epochs_weights_from_the_given_epoch(tmp_path: Path) -> None:
    from training.models import build
    from training.train import TrainConfig, fit

    rng = np.random.default_rng(1)
    train = Dataset(rng.integers(0, 255, (32, 48, 48), dtype=np.uint8), np.arange(32) % 7, list(FER_CLASSES))
    out = tmp_path / "run"
    keras.utils.set_random_seed(0)
    cfg = TrainConfig(epochs=3, batch=16, verbose=0, warmup_epochs=1, snapshots_from=2)
    fit(build("emonet", 7), train, train.subset(np.arange(8)), out, cfg, 48, "grey")
    assert sorted(p.name for p in (out / "snaps").iterdir()) == ["ep2.keras", "ep3.keras"]
    last, snap = keras.models.load_model(out / "last.keras"), keras.models.load_model(out / "snaps" / "ep3.keras")
    # weights only (a soup ingredient, not a resume point): without the optimizer's two moments per weight
    assert (out / "snaps" / "ep3.keras").stat().st_size < 0.5 * (out / "last.keras").stat().st_size
    for a, b in zip(last.get_weights(), snap.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the epoch's weights, before BN recalibration (final.keras)
    ep2 = keras.models.load_model(out / "snaps" / "ep2.keras").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(ep2, snap.get_weights(), strict=True))
