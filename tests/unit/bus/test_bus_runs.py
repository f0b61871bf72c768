"""One pipeline run, private to its user: the run id in every header (another run's messages are
refused), the private runtime directory, and ipc:// endpoints that cannot be taken over."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

import pytest
import zmq

from bus import codec, sockets
from bus.codec import CodecError, Eos, ForeignRun, Message, decode, encode
from bus.config import ConfigError, parse
from bus.runtime import MANAGER_ENV, RuntimeDirError, runtime_dir


def _eos() -> Message:
    return Eos(src="cam0", seq=1, ts=1.0, frames=1, dropped=0)


@pytest.mark.parametrize(
    ("sender", "receiver", "error"),
    [
        ("", "", None),  # neither has a run: as before
        ("a1b2", "a1b2", None),  # same run (a restarted stage keeps it)
        ("a1b2", "ffff", ForeignRun),  # a second pipeline
        ("", "a1b2", ForeignRun),  # a sender without this run's id (started by hand, forged)
        ("a1b2", "", ForeignRun),  # a labelled run's stage does not feed an unlabelled one
    ],
)
def test_a_message_of_another_run_is_refused(
    monkeypatch: pytest.MonkeyPatch, sender: str, receiver: str, error: type[Exception] | None
) -> None:
    monkeypatch.setattr(codec, "RUN", sender)
    parts = encode(_eos())
    monkeypatch.setattr(codec, "RUN", receiver)
    if error is None:
        assert decode(parts).frames == 1
    else:
        with pytest.raises(error, match="another pipeline run"):
            decode(parts)


@pytest.mark.parametrize("run", [7, "x" * 65, ["a"]])
def test_a_malformed_run_is_garbage(run: object) -> None:
    import msgpack

    parts = encode(_eos())
    header = msgpack.unpackb(parts[0])
    header["run"] = run
    with pytest.raises(CodecError, match="run: expected `str`"):
        decode([msgpack.packb(header), *parts[1:]])


def test_the_runtime_dir_is_made_private(tmp_path: Path) -> None:
    path = runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert path == tmp_path / "emostream"
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == path  # again: accepted as is


def test_without_xdg_runtime_dir_it_is_per_user_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert runtime_dir({}) == tmp_path / f"emostream-{os.geteuid()}"


def _foreign(path: Path) -> None:
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)  # nobody: another user got there first


def _open(path: Path) -> None:
    path.mkdir()
    path.chmod(0o755)


def _link(path: Path) -> None:
    (path.parent / "elsewhere").mkdir(mode=0o700)
    path.symlink_to(path.parent / "elsewhere")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_foreign, "belongs to uid 65534"),
        (_open, "has mode 755: other users could reach its sockets"),
        (_link, "is not a directory"),
    ],
)
def test_an_unsafe_runtime_dir_is_refused(tmp_path: Path, make, message: str) -> None:
    if make is _foreign and os.geteuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    make(tmp_path / "emostream")
    with pytest.raises(RuntimeDirError, match=message):
        runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)})


def test_runtime_endpoints_expand_or_fail_at_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cfg = parse({"display": {"endpoint": "ipc://{runtime}/display"}})
    assert cfg.display.endpoint == f"ipc://{tmp_path}/emostream/display"
    (tmp_path / "emostream").chmod(0o777)
    with pytest.raises(ConfigError, match=r"endpoints: runtime directory .* has mode 777"):
        parse({"display": {"endpoint": "ipc://{runtime}/display"}})


@pytest.mark.parametrize(("first", "second"), [(0.0, 1.0), (2.0, 1.0), (1.0, 4000.0)])
def test_reconnect_ranges(first: float, second: float) -> None:
    with pytest.raises(ConfigError, match=r"\[capture\] reconnect_(max_)?s"):
        parse({"capture": {"reconnect_s": first, "reconnect_max_s": second}})


def test_an_ipc_endpoint_is_owner_only_and_cannot_be_taken_over(tmp_path: Path) -> None:
    ep = f"ipc://{tmp_path}/detector.0"
    ctx = zmq.Context()
    try:
        first = sockets.pull(ctx, ep, 4)
        assert stat.S_IMODE(os.stat(tmp_path / "detector.0").st_mode) == 0o600
        with pytest.raises(zmq.ZMQError, match="address in use") as e:
            sockets.pull(ctx, ep, 4)  # libzmq alone would unlink the live socket and bind its own
        assert e.value.errno == errno.EADDRINUSE
        push = sockets.push(ctx, [ep], 4, 1000)
        assert sockets.send(push, encode(_eos()), block=True)
        assert decode(sockets.recv(first, 5000) or []).kind == "eos", "the first owner lost its endpoint"
        push.close(0)
        first.close(0)
    finally:
        ctx.destroy(0)


def test_a_socket_file_left_by_a_killed_stage_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "display"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening, then gone: what a SIGKILLed stage leaves
    ctx = zmq.Context()
    try:
        s = sockets.pull(ctx, f"ipc://{path}", 4)
        s.close(0)
    finally:
        ctx.destroy(0)


def test_an_ipc_path_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    precious = tmp_path / "display"
    precious.write_text("not a socket")
    ctx = zmq.Context()
    try:
        with pytest.raises(zmq.ZMQError, match="exists and is not a socket"):
            sockets.pull(ctx, f"ipc://{precious}", 4)
    finally:
        ctx.destroy(0)
    assert precious.read_text() == "not a socket"


@pytest.mark.parametrize("value", ["12x", "child"])
def test_a_manager_pid_that_is_not_ours_is_not_watched(value: str, caplog: pytest.LogCaptureFixture) -> None:
    import subprocess
    import threading

    from bus.runtime import watch_manager

    with subprocess.Popen(["sleep", "30"]) as other:  # a live process that is not our ancestor
        try:
            raw = str(other.pid) if value == "child" else value
            assert watch_manager(threading.Event(), {MANAGER_ENV: raw}, exit=pytest.fail) is None
        finally:
            other.kill()
    assert ("is not a pid" if value == "12x" else "is not an ancestor") in caplog.text
    assert watch_manager(threading.Event(), {}, exit=pytest.fail) is None  # not started by a manager


@pytest.mark.parametrize("how", ["reaped", "zombie"])
def test_a_manager_that_died_before_the_stage_watched_it_stops_the_stage(how: str) -> None:
    """The manager was SIGKILLed while the stage was still starting (the stage was reparented): no
    process has its pid any more, or only a zombie not yet reaped; the stage stops at once instead of
    running on unwatched."""
    import subprocess
    import threading
    import time

    from bus.runtime import watch_manager

    dead = subprocess.Popen(["true"])
    time.sleep(0.5)  # exited; not reaped until wait(): a zombie
    pid = dead.pid if how == "zombie" else 2**22 + 7  # above the kernel's largest pid
    stop, exits = threading.Event(), []
    try:
        thread = watch_manager(stop, {MANAGER_ENV: str(pid)}, grace_s=0.2, exit=exits.append)
        assert thread is not None and stop.wait(2.0)
        thread.join(2.0)
    finally:
        dead.wait()
    assert exits == [1]  # and exits if it still runs after the grace period


def test_the_death_of_the_manager_stops_the_stage() -> None:
    """A real manager (a shell) and stage (python): SIGKILL the shell, the stage's stop event is set
    and it exits on its own well within 2 s."""
    import subprocess
    import sys
    import time

    stage = (
        "import os, sys, threading, time; from bus.runtime import install_stop; stop = threading.Event(); "
        "install_stop(stop); print('up', flush=True); t0 = time.monotonic(); "
        "stop.wait(30); print(f'stopped {time.monotonic() - t0:.2f}', flush=True)"
    )
    root = Path(__file__).resolve().parents[3]
    manager = subprocess.Popen(
        ["sh", "-c", f'export {MANAGER_ENV}=$$; "{sys.executable}" -c "{stage}"; sleep 30'],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        start_new_session=True,
    )
    try:
        assert manager.stdout is not None and manager.stdout.readline().strip() == "up"
        t0 = time.monotonic()
        manager.kill()
        line = manager.stdout.readline().strip()  # the stage still holds the pipe: it writes this
        assert line.startswith("stopped") and time.monotonic() - t0 < 2.0, line
    finally:
        with contextlib.suppress(ProcessLookupError):  # the stage, had it not exited: same group
            os.killpg(manager.pid, 9)
        manager.wait(5)
