"""Model sidecar: ``models/<name>.json`` next to ``models/<name>.tflite``.

The runtime takes labels, input size, colour mode, pixel scaling and face-crop margin from here,
never from constants, so any exported model (CK+ with *contempt*, FER2013 with *neutral*) just works::

    {"name": "fer2013_emonet", "labels": ["angry", ...], "dataset": "fer2013",
     "input": {"size": 48, "colour": "grey", "scaling": "x/255", "crop_margin": 0.2, "mirror": false},
     "quantization": "int8", "metrics": {...},
     "calibration": {"temperature": 1.3, "fitted_on": "...", ...}}

``input.mirror`` (default false): the model is run on each crop and on its mirror image, and its
probabilities are the mean of the two (test-time augmentation: one batch of 2N, about twice the time
per face); the temperature is fitted in the same mode (``python -m training calibrate --mirror``).
``input.mirror_zoom`` (default 1; only with ``mirror``): the mirror view is also zoomed by this factor
(``bus.preprocess.zoom``: above 1 out, below 1 in, within ``MIRROR_ZOOM_RANGE``), so the two views of a face
differ by more than the flip; picked on the validation split (``calibrate --mirror-zoom auto``).
``calibration.temperature`` (default 1: none) and ``calibration.class_bias`` (default none: a list of one
number per label, added to the log-probabilities before the temperature; post-hoc logit adjustment for
the training split's class prior) are applied to the model's probabilities at run time
(:mod:`bus.calibration`); the rest of ``calibration`` records how they were fitted and what they changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from bus.calibration import BIAS_LIMIT, T_RANGE
from bus.preprocess import SCALING, Colour

MIRROR_ZOOM_RANGE = (0.5, 2.0)


class SidecarError(ValueError):
    """A missing or invalid model sidecar."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    labels: tuple[str, ...]
    size: int
    colour: Colour
    scaling: str = SCALING
    crop_margin: float = 0.2
    mirror: bool = False
    mirror_zoom: float = 1.0
    dataset: str = ""
    metrics: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    temperature: float = 1.0
    class_bias: tuple[float, ...] = ()  # empty: none
    calibration: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "dataset": self.dataset,
            "input": {
                "size": self.size,
                "colour": self.colour,
                "scaling": self.scaling,
                "crop_margin": self.crop_margin,
                "mirror": self.mirror,
                **({"mirror_zoom": self.mirror_zoom} if self.mirror_zoom != 1.0 else {}),
            },
            "quantization": "int8",
            "metrics": self.metrics,
            "calibration": {
                **{k: v for k, v in self.calibration.items() if k != "class_bias"},
                "temperature": self.temperature,
                **({"class_bias": list(self.class_bias)} if self.class_bias else {}),
            },
        }


def _flag(value: Any, path: Path, name: str) -> bool:
    if not isinstance(value, bool):
        raise SidecarError(f"{path}: {name} must be true or false, got {value!r}")
    return value


def _bias(value: Any, path: Path, labels: int) -> tuple[float, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) != labels:
        raise SidecarError(f"{path}: calibration.class_bias must be a list of {labels} numbers, one per label")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= BIAS_LIMIT for v in value):
        raise SidecarError(f"{path}: calibration.class_bias values must be numbers in [-{BIAS_LIMIT}, {BIAS_LIMIT}]")
    return tuple(float(v) for v in value)


def _mirror_zoom(value: Any, path: Path) -> float:
    lo, hi = MIRROR_ZOOM_RANGE
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise SidecarError(f"{path}: input.mirror_zoom must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def sidecar_path(model: str | Path) -> Path:
    return Path(model).with_suffix(".json")


def load_spec(model: str | Path) -> ModelSpec:
    """Read and validate the sidecar of ``model`` (the .tflite path or the .json path)."""
    path = sidecar_path(model)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        if Path(model) != path and not Path(model).exists():  # the model itself is what is missing
            raise SidecarError(f"model file not found: {model}") from None
        raise SidecarError(f"model sidecar not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SidecarError(f"{path}: not valid JSON: {e}") from None
    try:
        labels = d["labels"]
        inp = d["input"]
        colour = inp["colour"]
        if colour not in get_args(Colour):
            raise SidecarError(f"{path}: input.colour must be 'grey' or 'rgb', got {colour!r}")
        spec = ModelSpec(
            name=str(d.get("name", path.stem)),
            labels=tuple(labels),
            size=int(inp["size"]),
            colour=colour,
            scaling=str(inp.get("scaling", SCALING)),
            crop_margin=float(inp.get("crop_margin", 0.2)),
            mirror=_flag(inp.get("mirror", False), path, "input.mirror"),
            mirror_zoom=_mirror_zoom(inp.get("mirror_zoom", 1.0), path),
            dataset=str(d.get("dataset", "")),
            metrics=dict(d.get("metrics", {})),
            temperature=float(d.get("calibration", {}).get("temperature", 1.0)),
            class_bias=_bias(d.get("calibration", {}).get("class_bias"), path, len(labels)),
            calibration=dict(d.get("calibration", {})),
        )
    except SidecarError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise SidecarError(f"{path}: missing or invalid field: {e}") from None
    if not spec.labels or not all(isinstance(x, str) and x for x in spec.labels):
        raise SidecarError(f"{path}: labels must be a non-empty list of strings")
    if spec.scaling != SCALING:
        raise SidecarError(f"{path}: input.scaling {spec.scaling!r} is not supported (only {SCALING!r})")
    lo, hi = T_RANGE
    if not lo <= spec.temperature <= hi:
        raise SidecarError(f"{path}: calibration.temperature {spec.temperature} is not in [{lo}, {hi}]")
    if not 8 <= spec.size <= 512:
        raise SidecarError(f"{path}: input.size {spec.size} out of range")
    return spec
