"""Model families. Every model takes float input in [0, 1] (``bus.preprocess.SCALING``) and ends in
softmax probabilities, so the exported int8 model and the runtime agree on both ends.

- ``emonet``: VGG-style CNN for 48x48 grey (4 conv blocks, BN, dropout); the shipped default.
- ``mini_xception``: the 58k-parameter depthwise-separable residual net of Arriaga et al. (2017).
- ``mobilenetv2``: MobileNetV2 backbone on 96x96 RGB, ImageNet weights when Keras can fetch them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import layers

from bus.preprocess import Colour

log = logging.getLogger("training.models")


@dataclass(frozen=True)
class ModelInfo:
    build: Callable[..., keras.Model]
    size: int
    colour: Colour


def _conv_bn(x, filters: int, kernel: int = 3):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def emonet(num_classes: int, size: int = 48, width: int = 32, dropout: float = 0.0) -> keras.Model:
    inp = keras.Input((size, size, 1), name="face")
    x = layers.Rescaling(4.0, offset=-2.0)(inp)  # [0, 1] -> [-2, 2]: centred, unit-ish variance
    for f in (width, width * 2, width * 4, width * 8):
        x = _conv_bn(x, f)
        x = _conv_bn(x, f)
        x = layers.MaxPooling2D()(x)
        if dropout:  # off by default: dropout feeding BN shifts its variance (train vs test) and slows learning
            x = layers.SpatialDropout2D(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.5)(x)
    out = layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name="emonet")


def mini_xception(num_classes: int, size: int = 48) -> keras.Model:
    reg = keras.regularizers.l2(0.01)
    inp = keras.Input((size, size, 1), name="face")
    x = layers.Rescaling(2.0, offset=-1.0)(inp)
    for _ in range(2):
        x = layers.Conv2D(8, 3, use_bias=False, kernel_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    for f in (16, 32, 64, 128):
        res = layers.Conv2D(f, 1, strides=2, padding="same", use_bias=False)(x)
        res = layers.BatchNormalization()(res)
        x = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, depthwise_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.SeparableConv2D(f, 3, padding="same", use_bias=False, depthwise_regularizer=reg)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Add()([x, res])
    x = layers.Conv2D(num_classes, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Softmax(name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name="mini_xception")


def mobilenetv2(num_classes: int, size: int = 96, weights: str | None = "imagenet") -> keras.Model:
    """MobileNetV2 backbone (layer name ``backbone``) + a small head. Falls back to random init
    when ImageNet weights cannot be fetched, and says so in the log."""
    try:
        base = keras.applications.MobileNetV2((size, size, 3), include_top=False, weights=weights, alpha=1.0)
        log.info("MobileNetV2: ImageNet weights loaded")
    except Exception as e:  # offline or no cache: keras raises URL/OS errors of several types
        log.warning("MobileNetV2: ImageNet weights unavailable (%s): training from scratch", type(e).__name__)
        base = keras.applications.MobileNetV2((size, size, 3), include_top=False, weights=None, alpha=1.0)
    base._name = "backbone"
    inp = keras.Input((size, size, 3), name="face")
    x = layers.Rescaling(2.0, offset=-1.0)(inp)  # MobileNetV2 expects [-1, 1]
    x = base(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inp, out, name="mobilenetv2")


MODELS: dict[str, ModelInfo] = {
    "emonet": ModelInfo(emonet, 48, "grey"),
    "mini_xception": ModelInfo(mini_xception, 48, "grey"),
    "mobilenetv2": ModelInfo(mobilenetv2, 96, "rgb"),
}


def build(name: str, num_classes: int) -> keras.Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    info = MODELS[name]
    return info.build(num_classes, size=info.size)


def replace_head(model: keras.Model, num_classes: int) -> keras.Model:
    """Same network with a fresh softmax layer of ``num_classes`` (fine-tuning across datasets)."""
    features = model.get_layer("probs").input
    if model.name == "mini_xception":
        raise ValueError("mini_xception has a convolutional head; fine-tune emonet or mobilenetv2")
    out = layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(features)
    return keras.Model(model.input, out, name=model.name)
