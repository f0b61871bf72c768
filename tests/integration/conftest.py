"""Integration helpers: free loopback ports, a temporary bus.toml, stage processes that are always
reaped, a receive helper that fails instead of hanging, and the tiny test model."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items()) + "\n"
            for name, table in sections.items()
        )
    )
    return path


@pytest.fixture
def bus_toml(tmp_path: Path) -> Callable[[dict[str, dict[str, Any]]], Path]:
    """Write a temporary bus.toml from {section: {key: value}}; returns its path."""
    return lambda sections: write_config(tmp_path / "bus.toml", sections)


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in ("detector", "classifier", "display", "web")}


class Stages:
    """Start ``python -m <stage>`` processes; every one is stopped and reaped at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, stage: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        for key in ("BUS_CONFIG", "SOURCE", "EVENTS", "WEB", "VIDEO", "DISPLAY"):
            env.pop(key, None)
        err = open(self.tmp / f"{stage}-{len(self.procs)}.log", "wb")  # noqa: SIM115 (owned by the process)
        p = subprocess.Popen(
            [sys.executable, "-m", stage, *args], cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT
        )
        p.log_path = err.name  # type: ignore[attr-defined]
        err.close()
        self.procs.append(p)
        return p

    @staticmethod
    def log(p: subprocess.Popen[bytes]) -> str:
        return Path(p.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            raise

    def wait_exit(self, p: subprocess.Popen[bytes], timeout_s: float, what: str) -> int:
        """The exit code, or the test fails (with the process's log) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if p.poll() is not None:
                return int(p.returncode)
            time.sleep(0.05)
        pytest.fail(f"{what} did not exit within {timeout_s} s:\n{self.log(p)[-3000:]}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


@pytest.fixture
def stages(tmp_path: Path) -> Iterator[Stages]:
    s = Stages(tmp_path)
    yield s
    s.close()


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
