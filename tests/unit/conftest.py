"""Unit-test fixtures shared across packages: the tiny emotion models (classifier, training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def load_tiny_model_module() -> ModuleType:
    """tiny_model.py by path, so it loads the same way under any pytest import mode."""
    path = Path(__file__).parent / "classifier" / "tiny_model.py"
    spec = importlib.util.spec_from_file_location("emostream_tests_tiny_model", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tiny_model = load_tiny_model_module()


@pytest.fixture(scope="session")
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny int8 and float models with sidecars (built once with TensorFlow, then cached)."""
    # pytest's cache when it is on (-p no:cacheprovider turns it off): a temporary folder otherwise
    cache_ = getattr(request.config, "cache", None)
    cache = cache_.mkdir("tiny_tflite") if cache_ is not None else tmp_path_factory.mktemp("tiny_tflite")
    try:
        return tiny_model.tiny_models(cache)
    except ImportError as e:
        pytest.skip(f"tensorflow is needed to build the test model: {e}")


@pytest.fixture(scope="session")
def tiny_lib() -> ModuleType:
    """The tiny_model helpers (write_sidecar, LABELS, SIZE)."""
    return tiny_model
