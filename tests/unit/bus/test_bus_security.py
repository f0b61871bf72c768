"""CURVE on the bus (bus.sockets + bus.keys) with real sockets on loopback, and the loopback defaults.

A peer without an allowed key must get nothing and be able to inject nothing, whatever side it
plays: a plain PUSH into a CURVE PULL, a PUSH with an unknown key, and a plain or impostor PULL
squatting on the endpoint a CURVE PUSH connects to.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from bus import sockets
from bus.config import LOOPBACK, BusConfig, Config, ConfigError, load
from bus.keys import STAGES, generate
from bus.keys import main as keys_main
from bus.runtime import runtime_dir
from emostream.launch import free_port

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate(tmp_path / "keys", STAGES)
    return tmp_path / "keys"


@pytest.fixture
def ctx() -> Iterator[sockets.Context]:
    c = sockets.Context()
    yield c
    c.destroy(linger=0)  # stops the ZAP handler first


def bus(keys: Path) -> BusConfig:
    return BusConfig(curve=True, keys_dir=str(keys))


def got(sock: zmq.Socket, timeout_ms: int) -> list[bytes] | None:
    return sock.recv_multipart() if sock.poll(timeout_ms, zmq.POLLIN) else None


def test_curve_off_means_no_security() -> None:
    assert sockets.security(BusConfig(), "detector", peer="classifier") is None


def test_allowed_client_reaches_a_curve_server(keys: Path, ctx: sockets.Context) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    server = sockets.pull(ctx, ep, 4, sockets.security(bus(keys), "classifier"))
    client = sockets.push(ctx, [ep], 4, 3000, sockets.security(bus(keys), "detector", peer="classifier"))
    assert sockets.send(client, [b"hello", b"world"], block=True)
    assert got(server, 5000) == [b"hello", b"world"]
    for s in (server, client):
        s.close(0)


def _intruder(ctx: zmq.Context, ep: str, key: tuple[bytes, bytes] | None, server_key: bytes | None) -> zmq.Socket:
    """A PUSH that queues regardless of the handshake (no IMMEDIATE), with or without a CURVE key."""
    s = ctx.socket(zmq.PUSH)
    s.linger = 0
    s.sndtimeo = 500
    if key is not None:
        s.curve_publickey, s.curve_secretkey = key
        s.curve_serverkey = server_key
    s.connect(ep)
    return s


@pytest.mark.parametrize("who", ["plain", "unknown_key", "wrong_server_key"])
def test_unauthenticated_push_delivers_nothing(keys: Path, ctx: sockets.Context, who: str) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    server = sockets.pull(ctx, ep, 4, sockets.security(bus(keys), "classifier"))
    real_server_key = zmq.auth.load_certificate(keys / "classifier.key")[0]
    stranger = zmq.curve_keypair()
    key, server_key = {
        "plain": (None, None),
        "unknown_key": (stranger, real_server_key),
        "wrong_server_key": (zmq.auth.load_certificate(keys / "detector.key_secret"), stranger[0]),
    }[who]
    bad = _intruder(ctx, ep, key, server_key)
    for _ in range(3):
        with contextlib.suppress(zmq.Again):
            bad.send_multipart([b"\x81\xa1v\x01", b"evil"])
    assert got(server, 1500) is None
    # the real client still gets through afterwards
    good = sockets.push(ctx, [ep], 4, 3000, sockets.security(bus(keys), "detector", peer="classifier"))
    assert sockets.send(good, [b"ok"], block=True) and got(server, 5000) == [b"ok"]
    for s in (server, bad, good):
        s.close(0)


@pytest.mark.parametrize("impostor", ["plain_pull", "curve_pull_with_other_keys"])
def test_a_pull_squatting_on_the_endpoint_receives_nothing(keys: Path, impostor: str, tmp_path: Path) -> None:
    """The real stage is down and someone else binds its port: the CURVE PUSH sends it nothing."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    ctx = sockets.Context()
    try:
        squat = ctx.socket(zmq.PULL)
        squat.linger = 0
        if impostor == "curve_pull_with_other_keys":
            generate(tmp_path / "evil", ("classifier",))  # same name, different key; accepts the real client
            (tmp_path / "evil" / "allowed" / "detector.key").write_bytes((keys / "detector.key").read_bytes())
            evil = msgspec.structs.replace(bus(keys), keys_dir=str(tmp_path / "evil"))
            sec = sockets.security(evil, "classifier")
            assert sec is not None
            sec.server(squat, ctx)
        squat.bind(ep)
        client = sockets.push(ctx, [ep], 4, 300, sockets.security(bus(keys), "detector", peer="classifier"))
        sent = [sockets.send(client, [b"secret frame"], block=True) for _ in range(3)]
        assert sent == [False] * 3  # IMMEDIATE: no completed handshake, nothing queued, every send counted
        assert got(squat, 1000) is None
        client.close(0)
        squat.close(0)
    finally:
        ctx.term()


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("detector.key_secret", "detector.key_secret not found"),
        ("classifier.key", "classifier.key not found"),
        ("allowed", "no client keys in"),
    ],
)
def test_missing_keys_are_one_clear_config_error(keys: Path, remove: str, message: str) -> None:
    target = keys / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
    else:
        target.unlink()
    with pytest.raises(ConfigError, match=message):
        sockets.security(bus(keys), "detector", peer="classifier")


def test_a_public_key_is_not_a_secret_key(keys: Path) -> None:
    (keys / "detector.key_secret").write_bytes((keys / "detector.key").read_bytes())
    with pytest.raises(sockets.SecurityError, match="holds no secret key"):
        sockets.security(bus(keys), "detector")


def test_a_client_only_stage_needs_no_allowed_folder(keys: Path) -> None:
    for f in (keys / "allowed").iterdir():
        f.unlink()
    sec = sockets.security(bus(keys), "capture", peer="detector", serves=False)
    assert sec is not None and sec.peer_public == zmq.auth.load_certificate(keys / "detector.key")[0]


def test_context_term_stops_the_zap_handler(keys: Path) -> None:
    ctx = sockets.Context()
    s = sockets.pull(ctx, f"tcp://127.0.0.1:{free_port()}", 4, sockets.security(bus(keys), "display"))
    s.close(0)
    t0 = time.monotonic()
    ctx.term()
    assert time.monotonic() - t0 < 1.0


def test_a_curve_server_needs_the_bus_context(keys: Path) -> None:
    ctx = zmq.Context()
    try:
        with pytest.raises(TypeError, match=r"bus\.sockets\.Context"):
            sockets.pull(ctx, f"tcp://127.0.0.1:{free_port()}", 4, sockets.security(bus(keys), "display"))
    finally:
        ctx.destroy(linger=0)


def test_generate_writes_zmq_auth_files_with_a_private_secret(tmp_path: Path) -> None:
    written = generate(tmp_path / "k", ("capture", "detector"))
    assert sorted(p.relative_to(tmp_path / "k").as_posix() for p in written) == [
        "allowed/capture.key",
        "allowed/detector.key",
        "capture.key",
        "capture.key_secret",
        "detector.key",
        "detector.key_secret",
    ]
    public, secret = zmq.auth.load_certificate(tmp_path / "k" / "capture.key_secret")
    assert secret is not None and public == zmq.auth.load_certificate(tmp_path / "k" / "capture.key")[0]
    assert stat.S_IMODE(os.stat(tmp_path / "k" / "capture.key_secret").st_mode) == 0o600


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--name", "display"], 0, "display.key_secret"),
        (["--name", "../evil"], 2, "bad key name"),
        (["--name", "display", "--name", "display"], 2, "exists"),  # the second pass refuses to overwrite
    ],
)
def test_keys_cli(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "bus.keys", "generate", str(tmp_path / "k"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if code == 2 and "exists" in says:  # run it once more: now the key is there
        p = subprocess.run(
            p.args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60
        )
    assert p.returncode == code, p.stderr
    assert says in (p.stdout + p.stderr)
    if code == 2:
        assert len(p.stderr.strip().splitlines()) == 1


def test_every_default_endpoint_and_the_web_page_are_loopback() -> None:
    cfg = Config()
    for ep in (*cfg.detector.endpoints, *cfg.classifier.endpoints, cfg.display.endpoint):
        assert ep.partition("://")[2].startswith(LOOPBACK), ep
    assert cfg.display.web == "" or cfg.display.web.startswith(LOOPBACK)
    assert not cfg.bus.allow_remote and not cfg.bus.curve


def test_the_shipped_bus_toml_binds_only_loopback() -> None:
    cfg = load(ROOT / "bus.toml", env={})
    for ep in (*cfg.detector.endpoints, *cfg.classifier.endpoints, cfg.display.endpoint):
        assert ep.startswith(f"ipc://{runtime_dir()}/"), ep  # Unix sockets in this user's 0700 directory
    assert cfg.display.web.startswith("127.0.0.1:") and not cfg.bus.allow_remote


@pytest.mark.parametrize(
    "endpoint", ["tcp://0.0.0.0:5601", "tcp://*:5601", "tcp://169.254.77.1:5601", "tcp://[::]:5601", "tcp://eth0:5601"]
)
def test_binding_anything_else_needs_allow_remote(endpoint: str, tmp_path: Path) -> None:
    path = tmp_path / "bus.toml"
    path.write_text(f'[detector]\nendpoints = ["{endpoint}"]\n')
    with pytest.raises(ConfigError, match="allow_remote"):
        load(path, env={})
    path.write_text(f'[bus]\nallow_remote = true\n[detector]\nendpoints = ["{endpoint}"]\n')
    assert load(path, env={}).detector.endpoints == (endpoint,)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_generate_makes_its_folders_0700_and_secrets_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Issue 11 case 16: under umask 000 keys/ and keys/allowed/ were 0777 (anyone could add a client key)."""
    old = os.umask(umask)
    try:
        result = CliRunner().invoke(keys_main, ["generate", str(tmp_path / "deep" / "keys")])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    mode = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert mode.pop("deep") == mode.pop("deep/keys") == mode.pop("deep/keys/allowed") == 0o700
    assert {k: v for k, v in mode.items() if k.endswith(".key_secret")} == {
        f"deep/keys/{s}.key_secret": 0o600 for s in STAGES
    }
    assert set(mode.values()) == {0o600, 0o644}


def test_generate_leaves_the_mode_of_an_existing_folder_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    generate(tmp_path, ("capture",))
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "allowed").stat().st_mode) == 0o700
