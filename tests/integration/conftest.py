"""Integration helpers over :mod:`emostream.launch` (free loopback ports, a temporary bus.toml, stage
processes that are always reaped), a receive helper that fails instead of hanging, and the tiny test
model."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from emostream.launch import Launcher, free_port, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bus_toml(tmp_path: Path) -> Callable[[dict[str, dict[str, Any]]], Path]:
    """Write a temporary bus.toml from {section: {key: value}}; returns its path."""
    return lambda sections: write_config(tmp_path / "bus.toml", sections)


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("detector", "classifier", "display", "web")}


@pytest.fixture
def stages(tmp_path: Path) -> Iterator[Launcher]:
    """``stages.start("display", "--config", ...)``: stage processes logging into ``tmp_path``,
    every one stopped and reaped at teardown."""
    with Launcher(tmp_path) as launcher:
        yield launcher


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def recv_or_fail(sock: zmq.Socket, timeout_s: float = 5.0) -> list[bytes]:
    if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
        pytest.fail(f"nothing received within {timeout_s} s")
    return sock.recv_multipart()


def _tiny_model_module() -> Any:
    path = ROOT / "tests" / "unit" / "classifier" / "tiny_model.py"
    spec = importlib.util.spec_from_file_location("emostream_tests_tiny_model", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tiny_int8(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny int8 test model (with sidecar), built once with TensorFlow and cached."""
    cache_ = getattr(request.config, "cache", None)
    cache = cache_.mkdir("tiny_tflite") if cache_ is not None else tmp_path_factory.mktemp("tiny_tflite")
    try:
        return Path(_tiny_model_module().tiny_models(cache)["int8"])
    except ImportError as e:
        pytest.skip(f"tensorflow is needed to build the test model: {e}")
