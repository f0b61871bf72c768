"""Tiny emotion models for tests, built with TensorFlow (tests only; the runtime never imports it).

``tiny_models(cache_dir)`` writes ``tiny_int8.tflite`` (full-integer int8, like the shipped model) and
``tiny_float.tflite`` (float32 in/out), each with a sidecar, and reuses them while this file is
unchanged: TensorFlow is imported only when they must be (re)built.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SIZE = 48


def write_sidecar(model: Path, labels: tuple[str, ...] = LABELS, size: int = SIZE, colour: str = "grey") -> Path:
    from bus.sidecar import ModelSpec

    spec = ModelSpec(name=model.stem, labels=tuple(labels), size=size, colour=colour, dataset="synthetic")
    path = model.with_suffix(".json")
    path.write_text(json.dumps(spec.to_json()))
    return path


def _convert(int8: bool) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((SIZE, SIZE, 1))
    x = tf.keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(len(LABELS), activation="softmax")(x)
    conv = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, out))
    if int8:

        def representative():
            rng = np.random.default_rng(0)
            for _ in range(8):
                yield [rng.random((1, SIZE, SIZE, 1), dtype=np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Statistics for quantized inputs were expected"
        return conv.convert()


def tiny_models(cache_dir: Path) -> dict[str, Path]:
    """{"int8": path, "float": path} of tiny .tflite models with sidecars under ``cache_dir``."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    out = cache_dir / key
    out.mkdir(parents=True, exist_ok=True)
    paths = {"int8": out / "tiny_int8.tflite", "float": out / "tiny_float.tflite"}
    for kind, path in paths.items():
        if not path.is_file():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(_convert(kind == "int8"))
            tmp.replace(path)
        write_sidecar(path)
    return paths
