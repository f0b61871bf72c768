"""``EmotionModel``: the int8 (or float) TFLite emotion classifier, run by LiteRT.

Consumes a batch of uint8 face crops (N x S x S x C, ``bus.preprocess.crop_face`` with the sidecar's
size and colour) and produces N x len(labels) probabilities in the sidecar's label order, calibrated
with the sidecar's class bias and temperature (``bus.calibration``; none and 1 = as the network outputs
them). Where the sidecar says ``input.mirror``, each crop's probabilities are the mean over the crop and
its mirror image, both in the same batch (test-time augmentation), before the calibration; with
``input.mirror_zoom`` the mirror image is also zoomed by that factor (``bus.preprocess.zoom``).

All faces of a frame run as ONE batch: the interpreter's input is resized to (N, S, S, C) only when
N changes. Measured on this project's emonet (int8, 1 thread): resize + allocate costs ~5 us, while
one interpreter per batch size seen was ~3x slower per frame (each keeps its own arena and XNNPACK
state cold), so a single interpreter that is resized on change is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from bus.calibration import apply_calibration
from bus.preprocess import zoom
from bus.runtime import native_stderr
from bus.sidecar import ModelSpec, SidecarError, load_spec
from classifier.preprocess import InputQuantizer, dequantize, normalise

log = logging.getLogger("classifier.model")


class ModelError(RuntimeError):
    """A model that cannot be loaded, or one that disagrees with its sidecar."""


def _channels(colour: str) -> int:
    return 1 if colour == "grey" else 3


class EmotionModel:
    """Load ``model_path`` and its sidecar, check they agree, classify batches of crops. ``mirror`` and
    ``mirror_zoom`` override the sidecar's ``input.mirror`` and ``input.mirror_zoom`` (training's
    calibration and evaluation compare them)."""

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 1,
        mirror: bool | None = None,
        mirror_zoom: float | None = None,
    ):
        path = Path(model_path)
        if not path.is_file():  # first: a missing model is not a missing sidecar
            raise ModelError(f"model file not found: {path}")
        try:
            self.spec: ModelSpec = load_spec(path)
        except SidecarError as e:
            raise ModelError(str(e)) from None
        try:
            with native_stderr():
                self._it = Interpreter(model_path=str(path), num_threads=max(1, threads))
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: not a loadable TFLite model: {e}") from None
        self.path = path
        self.mirror: bool = self.spec.mirror if mirror is None else mirror
        self.mirror_zoom: float = self.spec.mirror_zoom if mirror_zoom is None else mirror_zoom
        self.temperature: float = self.spec.temperature  # 1.0: the network's own probabilities
        self.class_bias: np.ndarray | None = np.array(self.spec.class_bias) if self.spec.class_bias else None
        self.labels: tuple[str, ...] = self.spec.labels
        self.size: int = self.spec.size
        self.channels: int = _channels(self.spec.colour)
        inputs, outputs = self._it.get_input_details(), self._it.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}")
        self._in, self._out = inputs[0], outputs[0]
        self._check_shapes(path)
        try:
            in_scale, in_zero = self._in["quantization"]
            self.quantize = InputQuantizer(self._in["dtype"], float(in_scale), int(in_zero))
        except ValueError as e:
            raise ModelError(f"{path}: {e}") from None
        out_scale, out_zero = self._out["quantization"]
        self._out_scale, self._out_zero = float(out_scale), int(out_zero)
        self._batch = int(self._in["shape"][0])
        self.batching = True  # one invoke per frame; False after a model refused a batch

    def _check_shapes(self, path: Path) -> None:
        s, c = self.spec.size, self.channels
        shape = [int(v) for v in self._in["shape"]]
        if len(shape) != 4 or shape[1:] != [s, s, c]:
            raise ModelError(
                f"{path}: model input shape {shape} does not match the sidecar "
                f"(size {s}, colour {self.spec.colour!r} -> [n, {s}, {s}, {c}])"
            )
        out = [int(v) for v in self._out["shape"]]
        if len(out) != 2 or out[1] != len(self.labels):
            raise ModelError(
                f"{path}: model output shape {out} does not give one score per sidecar label "
                f"({len(self.labels)} labels)"
            )

    @property
    def info(self) -> dict[str, Any]:
        """What was loaded, for the start-up log line."""
        return {
            "model": str(self.path),
            "labels": list(self.labels),
            "size": self.spec.size,
            "colour": self.spec.colour,
            "input": np.dtype(self._in["dtype"]).name,
            "fast_path": self.quantize.fast,
            "mirror": self.mirror,
            "mirror_zoom": self.mirror_zoom,
            "temperature": self.temperature,
            "class_bias": self.class_bias is not None,
        }

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """uint8 N x S x S x C crops -> float32 N x len(labels) probabilities (rows sum to 1)."""
        s, c = self.spec.size, self.channels
        if crops.ndim != 4 or crops.shape[1:] != (s, s, c):
            raise ValueError(f"crops of shape {crops.shape} do not fit the model ({s}x{s}x{c})")
        n = len(crops)
        if n == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        if self.mirror:
            both = self._batched(np.concatenate([crops, zoom(crops, self.mirror_zoom)[:, :, ::-1]]))
            probs = (both[:n] + both[n:]) / 2
        else:
            probs = self._batched(crops)
        return apply_calibration(probs, self.temperature, self.class_bias)

    def _batched(self, crops: np.ndarray) -> np.ndarray:
        n = len(crops)
        if n > 1 and self.batching and n != self._batch and not self._resize(n):
            self.batching = False  # a model exported with a fixed batch of 1: face by face from now on
        if n > 1 and not self.batching:
            return np.concatenate([self._run(crops[i : i + 1]) for i in range(n)])
        return self._run(crops)

    def _resize(self, n: int) -> bool:
        s, c = self.spec.size, self.channels
        try:
            self._it.resize_tensor_input(self._in["index"], [n, s, s, c])
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            log.warning("%s cannot take a batch of %d (%s): classifying one face at a time", self.path, n, e)
            self._it.resize_tensor_input(self._in["index"], [self._batch, s, s, c])
            self._it.allocate_tensors()
            return False
        self._batch = n
        return True

    def _run(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) != self._batch and not self._resize(len(crops)):
            raise RuntimeError(f"{self.path}: cannot resize the input to {len(crops)} faces")
        self._it.set_tensor(self._in["index"], np.ascontiguousarray(self.quantize(crops)))
        self._it.invoke()
        raw = self._it.get_tensor(self._out["index"])
        return normalise(dequantize(raw, self._out_scale, self._out_zero))
