"""The default transport is private to its user: with the shipped bus.toml the real display binds
``ipc://{runtime}/display``, a Unix socket in a 0700 directory, and a process of another user
(``nobody``, via setpriv) cannot connect to it -- while it can connect to a socket next to that
directory, so the directory's mode is what stops it (a loopback TCP port would take the connection)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.config import load
from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def as_nobody(path: Path) -> str:
    """What a process of user ``nobody`` gets when it connects to the Unix socket ``path``."""
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "/usr/bin/python3", "-c", PROBE]
    return subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=30, check=True).stdout.strip()


@pytest.fixture
def xdg() -> Iterator[Path]:
    """An XDG_RUNTIME_DIR that every user may enter (0755), as /run/user/<uid> is not: only the
    emostream directory inside it keeps other users out, so the test measures that directory."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").is_file():
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run a probe as another user")
    path = Path(tempfile.mkdtemp(prefix="es-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_another_user_cannot_connect_to_the_default_endpoints(xdg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    cfg = load(ROOT / "bus.toml", env={})
    eps = (*cfg.detector.endpoints, *cfg.classifier.endpoints, cfg.display.endpoint)
    private = xdg / "emostream"
    assert all(ep.startswith(f"ipc://{private}/") for ep in eps), eps  # the default is ipc, not a TCP port
    env = child_env({"XDG_RUNTIME_DIR": str(xdg), "WEB": ""})
    log = xdg / "display.log"
    with log.open("wb") as out:
        display = subprocess.Popen(
            [sys.executable, "-m", "display", "--config", str(ROOT / "bus.toml")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while "pulling on" not in log.read_text() and display.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert display.poll() is None, log.read_text()
        sock = Path(cfg.display.endpoint.removeprefix("ipc://"))
        assert stat.S_IMODE(private.stat().st_mode) == 0o700 and private.stat().st_uid == os.geteuid()
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:  # the same place, outside the 0700 dir
            control.bind(str(xdg / "control"))
            control.listen(1)
            (xdg / "control").chmod(0o777)
            assert as_nobody(xdg / "control") == "connected", "the probe cannot connect anywhere: it proves nothing"
        assert as_nobody(sock) == "PermissionError"
        for ep in eps:  # not bound in this test, but none of them could be reached either
            assert as_nobody(Path(ep.removeprefix("ipc://"))) == "PermissionError"
    finally:
        display.send_signal(signal.SIGTERM)
        rc = display.wait(10)
    assert rc == 0, log.read_text()
