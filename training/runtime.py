"""TensorFlow process settings: threads and bfloat16 mixed precision."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("training")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def configure(mixed: str = "auto") -> bool:
    """Set the Keras dtype policy; returns whether bfloat16 mixed precision is on."""
    import keras
    import tensorflow as tf

    on = mixed == "on" or (mixed == "auto" and (cpu_has_bf16() or bool(tf.config.list_physical_devices("GPU"))))
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if on else "float32")
    log.info("mixed precision: %s", "bfloat16" if on else "off (float32)")
    return on
