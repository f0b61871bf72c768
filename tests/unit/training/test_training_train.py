"""training.train.recalibrate_bn: batch-norm statistics set to their exact averages over the data."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.train import recalibrate_bn  # noqa: E402


def tiny(inner: bool = False) -> keras.Model:
    inp = keras.Input((4, 4, 1))
    x = keras.layers.Rescaling(1.0)(inp)
    bn = keras.layers.BatchNormalization(name="bn", momentum=0.99)
    if inner:  # a BN inside a nested model (as in a backbone) is found too
        sub = keras.Sequential([keras.Input((4, 4, 1)), bn], name="backbone")
        x = sub(x)
    else:
        x = bn(x)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    return keras.Model(inp, out)


@pytest.mark.parametrize("inner", [False, True])
def test_moving_statistics_become_the_data_mean_and_variance(inner: bool) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1000, 4, 4, 1), dtype=np.uint8)
    model = tiny(inner)
    bn = model.get_layer("backbone").get_layer("bn") if inner else model.get_layer("bn")
    dense_before = [w.copy() for w in model.layers[-1].get_weights()]
    assert recalibrate_bn(model, pixels, batch=100) == 1
    x = pixels.astype(np.float32) / 255.0
    # equal batches: the mean of the batch means is the mean; the variance is the mean of batch variances
    batch_var = np.mean([x[i : i + 100].var() for i in range(0, 1000, 100)])
    np.testing.assert_allclose(bn.moving_mean.numpy(), [x.mean()], rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), [batch_var], rtol=1e-4)
    assert bn.momentum == 0.99  # restored
    for a, b in zip(dense_before, model.layers[-1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing but the moving statistics changes


def test_no_batch_norm_or_no_data_changes_nothing() -> None:
    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    assert recalibrate_bn(model, np.zeros((10, 4, 4, 1), np.uint8)) == 0
    assert recalibrate_bn(tiny(), np.zeros((0, 4, 4, 1), np.uint8)) == 0
