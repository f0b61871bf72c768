"""emostream.launch: config writing, endpoints, the children's environment, and start/ready/stop/reap
with stand-in processes (the real stages go through it in tests/integration)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import tomllib
from pathlib import Path

import pytest

from bus.config import Config, parse, to_table
from emostream import launch
from emostream.launch import (
    OVERRIDES,
    Launcher,
    LaunchError,
    child_env,
    endpoint,
    free_port,
    listening_ports,
    toml_text,
    unbound,
    write_config,
)


@pytest.mark.parametrize("value", ["plain", 'quo"te', "back\\slash", "tab\there", "ünï", "new\nline"])
def test_toml_text_round_trips_strings(value: str) -> None:
    table = {"s": {"k": value, "l": [value], "t": {"v": value}}}
    assert tomllib.loads(toml_text(table)) == table


def test_a_written_config_reads_back_as_the_same_config(tmp_path: Path) -> None:
    cfg = parse({"capture": {"sources": [{"id": "a", "uri": "/v/clip.mp4", "loop": True, "fps": 12.5}]}})
    assert cfg != Config()
    assert parse(tomllib.loads(write_config(tmp_path / "bus.toml", to_table(cfg)).read_text())) == cfg


def test_free_port_is_free_and_endpoints_are_fresh(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))  # bindable right after: nobody holds it
    eps = {endpoint() for _ in range(20)}
    assert len(eps) == 20 and all(e.startswith("tcp://127.0.0.1:") for e in eps)
    assert endpoint("ipc", tmp_path, "detector") == f"ipc://{tmp_path}/detector"


@pytest.mark.parametrize(
    ("transport", "folder", "name", "error"),
    [("udp", None, "", "unknown transport"), ("ipc", None, "x", "a folder and a name"), ("ipc", Path("."), "", "name")],
)
def test_bad_endpoint_requests(transport: str, folder: Path | None, name: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        endpoint(transport, folder, name)


def test_child_env_drops_every_override_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in OVERRIDES:
        monkeypatch.setenv(key, "leak")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("EMOSTREAM_TEST_KEEP", "kept")
    env = child_env({"SOURCE": "mine"})
    assert not {k for k in OVERRIDES if k != "SOURCE"} & env.keys()
    assert env["SOURCE"] == "mine"  # what the caller asks for is set after the clean-up
    assert env["EMOSTREAM_TEST_KEEP"] == "kept" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(launch.ROOT), "/elsewhere"]
    assert "PYTHONPATH" not in child_env(importable=False)


TCP = """  sl  local_address rem_address   st tx_queue rx_queue
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000
   1: 0100007F:1F91 0100007F:1F90 01 00000000:00000000 00:00000000 00000000
"""


def test_listening_ports_and_unbound(tmp_path: Path) -> None:
    ports = listening_ports([TCP])
    assert ports == {8080}  # 0x1F90; 0x1F91 is an established connection, not a listener
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        eps = ["tcp://127.0.0.1:8080", "tcp://127.0.0.1:8081", f"ipc://{sock_path}", f"ipc://{tmp_path}/none"]
        assert unbound(eps, ports) == ["tcp://127.0.0.1:8081", f"ipc://{tmp_path}/none"]
    with pytest.raises(ValueError, match="cannot tell"):
        unbound(["inproc://x"], ports)


def _script(tmp_path: Path, name: str, code: str) -> str:
    """A stand-in 'stage': ``python -m name`` runs ``code`` (the launcher's cwd is the repository,
    so the module comes from a PYTHONPATH entry the test adds)."""
    (tmp_path / "mods").mkdir(exist_ok=True)
    (tmp_path / "mods" / f"{name}.py").write_text(code)
    return name


@pytest.fixture
def mods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mods"))
    return tmp_path


ECHO_ENV = """import json, os, sys
print(json.dumps({"args": sys.argv[1:], "env": {k: os.environ.get(k) for k in sys.argv[3:]}}), flush=True)
"""
STUBBORN = """import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(60)
"""
LISTEN = """import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
time.sleep(60)
"""


def test_start_gives_the_config_args_and_environment(mods: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE", "the user's camera")
    name = _script(mods, "fake_echo", ECHO_ENV)
    with Launcher(mods, {"EMOSTREAM_RUN": "r1"}) as run:
        p = run.start(name, "SOURCE", "EMOSTREAM_RUN", "EMOSTREAM_MANAGER_PID", config=mods / "bus.toml")
        assert p.wait(30) == 0

    out = json.loads(p.text())
    assert out["args"][:2] == ["--config", str(mods / "bus.toml")]
    assert out["env"] == {"SOURCE": None, "EMOSTREAM_RUN": "r1", "EMOSTREAM_MANAGER_PID": str(os.getpid())}
    assert (p.name, p.log.name) == ("fake_echo[0]", "fake_echo-0.log")


def test_stop_kills_what_ignores_sigterm_and_reaps_everything(mods: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stubborn = _script(mods, "fake_stubborn", STUBBORN)
    run = Launcher(mods)
    procs = [run.start(stubborn), run.start(stubborn)]
    for p in procs:
        deadline = time.monotonic() + 30
        while "up" not in p.text():
            assert time.monotonic() < deadline, p.text()
            time.sleep(0.05)
    t0 = time.monotonic()
    assert run.stop(timeout_s=0.5) == {"fake_stubborn[0]": -9, "fake_stubborn[1]": -9}
    assert time.monotonic() - t0 < 3.0
    for p in procs:
        with pytest.raises(ChildProcessError):
            os.waitpid(p.pid, os.WNOHANG)  # reaped: no zombie left


def test_a_dead_process_is_reported_with_its_code_and_last_line(mods: Path) -> None:
    name = _script(mods, "fake_dies", "import sys\nprint('loading')\nprint('fake: cannot bind tcp://x')\nsys.exit(2)\n")
    with Launcher(mods) as run:
        p = run.start(name)
        p.wait(30)
        with pytest.raises(LaunchError, match=r"fake_dies\[0\] exited with code 2: fake: cannot bind") as e:
            run.check()
        assert e.value.code == 2
        with pytest.raises(LaunchError, match="exited with code 2"):
            run.wait_bound(["tcp://127.0.0.1:1"], 5.0)


def test_wait_bound_returns_once_listening_and_times_out_otherwise(mods: Path) -> None:
    name = _script(mods, "fake_listen", LISTEN)
    port, never = free_port(), free_port()
    with Launcher(mods) as run:
        run.start(name, str(port))
        run.wait_bound([f"tcp://127.0.0.1:{port}"], 30.0)
        with pytest.raises(LaunchError, match=f"tcp://127.0.0.1:{never} not bound after 0 s"):
            run.wait_bound([f"tcp://127.0.0.1:{never}"], 0.3)
        with pytest.raises(LaunchError, match=r"did not exit within 0\.2 s"):
            run.procs[0].wait(0.2)
    assert run.procs[0].returncode == -15  # SIGTERM at the end of the block


def test_the_interpreter_is_this_one(mods: Path) -> None:
    name = _script(mods, "fake_exe", "import sys\nprint(sys.executable)\n")
    with Launcher(mods) as run:
        p = run.start(name)
        assert p.wait(30) == 0
    assert p.last_line() == sys.executable
