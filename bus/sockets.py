"""Socket helpers. Topology: each stage *binds* a PULL socket on its own endpoint(s) and the stage
upstream *connects* a PUSH socket to all of them, so several copies of a stage share the load
(PUSH deals round-robin) and several sources fan in to one stage.

Backpressure policy (written down, and counted):
- every socket has a small high-water mark (``[bus] hwm``) so queues, memory and latency stay bounded;
- live frames are sent without blocking: a full queue drops the frame at the sender (counted);
- file frames block on a full queue, but never longer than ``[bus] send_timeout_ms`` (then counted);
- receivers poll with a timeout, so every loop notices its stop event;
- live frames older than ``[bus] max_age_ms`` are dropped by the stage that finds them stale;
- ``linger`` is short so a stopped stage never hangs on unsent messages;
- a receiver (PULL) drops a sender that stopped answering ZMTP heartbeats (a hung or vanished
  stage) after :data:`HEARTBEAT_TIMEOUT_MS`. Senders (PUSH) use no heartbeat timeout: a busy
  receiver whose queue is full stops reading its socket, so it would miss the pings and be cut off
  although alive -- and libzmq 4.3.5 aborts such a receiver (``Assertion failed: !_io_error
  (src/stream_engine_base.cpp:310)``) when its sender drops it then: 3 crashes in 3 runs of
  tests/integration/test_faults.py with shared-memory frames (tiny messages queue up fast). A hung
  receiver is skipped by PUSH once its queue is full (round-robin goes to the peers that take
  frames); a dead process closes its TCP connections, and TCP keepalive
  (:data:`KEEPALIVE_IDLE_S`) catches a vanished host;
- a PULL socket refuses frames larger than :data:`MAX_FRAME_BYTES` (the largest image the codec
  accepts): a peer declaring a huge frame is disconnected instead of making us allocate it.

Transport on one host (the shipped ``bus.toml``): ``ipc://{runtime}/<stage>`` endpoints, Unix
sockets in the private 0700 runtime directory (:func:`bus.runtime.runtime_dir`), so other local
users can neither connect nor listen there (a loopback TCP port takes a connection from any local
user). A bound ipc socket is also chmod 0600. libzmq unlinks a socket file before binding its own,
so a second pipeline's stage would silently take a live endpoint over: :func:`pull` first connects
to the path and, when something answers, fails like a TCP bind (``address in use``); a file left by
a killed stage answers nothing and is replaced. Between hosts: TCP with ``[bus] curve = true``.

Security (``[bus] curve = true``): every socket uses ZeroMQ CURVE (encryption and authentication).
Each binding stage is a CURVE server with its own key pair (``keys_dir/<stage>.key_secret``) and a
ZAP handler (:class:`zmq.auth.thread.ThreadAuthenticator`) that accepts only the client public keys
found in ``keys_dir/allowed/``; each connecting stage is a CURVE client with its own key pair and
the public key of the stage it connects to (``keys_dir/<peer>.key``). A peer without an allowed key
completes no handshake: it can neither inject messages nor receive any. Keys come from
``python -m bus.keys generate DIR``. Build the :class:`Security` once per process with
:func:`security` and open sockets on a :class:`Context` (it stops the ZAP handler before it
terminates). A stage's ``__main__`` does all of this through :class:`StageSockets`.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from bus.cli import fail
from bus.config import BusConfig, Config, ConfigError

LINGER_MS = 200
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
KEEPALIVE_IDLE_S = 5  # TCP keepalive on senders: a host that vanished is dropped after ~5 + 3 x 1 s
MAX_FRAME_BYTES = 8192 * 8192 * 3  # bus.codec.MAX_SIDE squared, 3 channels
ALLOWED = "allowed"  # keys_dir/allowed/*.key: client public keys a CURVE server accepts
ZAP_DOMAIN = "emostream"


class SecurityError(ConfigError):
    """CURVE is on but a key is missing or unreadable (a start-up failure: one line, exit 2)."""


@dataclass(frozen=True)
class Security:
    """One process's CURVE identity: its key pair, the allowed-clients folder (servers) and the
    public key of the stage it connects to (clients)."""

    name: str
    public: bytes
    secret: bytes
    allowed: Path
    peer_public: bytes | None = None

    def server(self, sock: zmq.Socket, ctx: zmq.Context) -> None:
        if not isinstance(ctx, Context):
            raise TypeError("a CURVE server needs a bus.sockets.Context (it runs the ZAP handler)")
        ctx.authenticate(self.allowed)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def client(self, sock: zmq.Socket) -> None:
        if self.peer_public is None:
            raise ValueError(f"{self.name}: no server key to connect with")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.peer_public


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SecurityError(
            f"[bus] keys_dir: {path} not found (make keys with: python -m bus.keys generate {path.parent})"
        )
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise SecurityError(f"[bus] keys_dir: {path} is not a key file: {e}") from None
    if secret and sec is None:
        raise SecurityError(f"[bus] keys_dir: {path} holds no secret key")
    return public, sec


def security(bus: BusConfig, name: str, peer: str | None = None, serves: bool = True) -> Security | None:
    """The CURVE identity of stage ``name`` (a server when ``serves``; a client of stage ``peer`` when
    given), or None when ``[bus] curve`` is off. Raises :class:`SecurityError` naming the missing or
    bad file, so a stage fails at start-up, not at its first message."""
    if not bus.curve:
        return None
    if not zmq.has("curve"):
        raise SecurityError("[bus] curve: this libzmq was built without CURVE support")
    keys = Path(bus.keys_dir)
    public, secret = _load(keys / f"{name}.key_secret", secret=True)
    assert secret is not None
    allowed = keys / ALLOWED
    if serves and not (allowed.is_dir() and any(allowed.glob("*.key"))):
        raise SecurityError(f"[bus] keys_dir: no client keys in {allowed} (python -m bus.keys generate {keys})")
    peer_public = _load(keys / f"{peer}.key", secret=False)[0] if peer else None
    return Security(name, public, secret, allowed, peer_public)


class Context(zmq.Context):
    """A zmq.Context that runs at most one ZAP handler (for CURVE servers) and stops it before it
    terminates, so ``term()`` never waits on the handler's sockets."""

    _auth: ThreadAuthenticator | None = None

    def authenticate(self, allowed: Path) -> None:
        if self._auth is None:
            auth = ThreadAuthenticator(self)
            auth.start()
            auth.configure_curve(domain=ZAP_DOMAIN, location=str(allowed))
            self._auth = auth

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def term(self) -> None:
        self._stop_auth()
        super().term()

    def destroy(self, linger: int | None = None) -> None:
        self._stop_auth()  # before its sockets are closed under it
        super().destroy(linger)


def _heartbeat(s: zmq.Socket) -> None:
    s.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    s.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


def pull(ctx: zmq.Context, endpoint: str, hwm: int, security: Security | None = None) -> zmq.Socket:
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, LINGER_MS)
    s.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    _heartbeat(s)
    if security is not None:
        security.server(s, ctx)
    path = endpoint.removeprefix("ipc://") if endpoint.startswith("ipc://") else None
    try:
        if path is not None and _listening(path):
            raise zmq.ZMQError(errno.EADDRINUSE, f"address in use: a running process listens on {path}")
        s.bind(endpoint)
        if path is not None:
            os.chmod(path, 0o600)  # owner only, also outside the private directory
    except OSError as e:
        s.close(0)
        raise zmq.ZMQError(e.errno or errno.EACCES, f"{path}: {e.strerror}") from None
    except zmq.ZMQError:
        s.close(0)
        raise
    return s


def _listening(path: str) -> bool:
    """Whether a live process accepts connections on the Unix socket ``path``."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):  # libzmq would delete whatever is there
            raise zmq.ZMQError(errno.EEXIST, f"{path} exists and is not a socket: not replacing it")
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except (TimeoutError, BlockingIOError):  # a full backlog: a (busy or hung) process listens
            return True
        except OSError as e:
            raise zmq.ZMQError(e.errno or errno.EACCES, f"{path}: {e.strerror}") from None
        return True


def push(
    ctx: zmq.Context, endpoints: Sequence[str], hwm: int, send_timeout_ms: int, security: Security | None = None
) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.LINGER, LINGER_MS)
    s.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
    s.setsockopt(zmq.IMMEDIATE, 1)  # queue only to connected peers: no frames for a dead worker
    s.setsockopt(zmq.TCP_KEEPALIVE, 1)  # no ZMTP heartbeat timeout here: see the module docstring
    s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
    s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
    s.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    if security is not None:
        security.client(s)
    for ep in endpoints:
        s.connect(ep)
    return s


def send(sock: zmq.Socket, parts: list, block: bool) -> bool:
    """Send a multipart message; False when it could not be sent (queue full / timed out)."""
    try:
        sock.send_multipart(parts, flags=0 if block else zmq.NOBLOCK, copy=False)
        return True
    except zmq.Again:
        return False


def recv(sock: zmq.Socket, timeout_ms: int) -> list[zmq.Frame] | None:
    """One multipart message, or None when nothing arrived within ``timeout_ms``. A message already
    queued is taken without polling (pyzmq's ``poll`` builds a Poller per call: measurable per frame)."""
    try:
        return sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        pass
    if sock.poll(timeout_ms, zmq.POLLIN):
        try:
            return sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
    return None


PEER_WAIT_S = 30.0  # how long a file-source message waits for a downstream stage that is not up yet


def send_patiently(sock: zmq.Socket, parts: list, stop: threading.Event, wait_s: float = PEER_WAIT_S) -> bool:
    """For file sources (completeness before latency): blocking sends, each bounded by the socket's
    send timeout, until one succeeds, ``stop`` is set, or ``wait_s`` has passed. Covers a downstream
    stage that starts later than its upstream under honcho."""
    return retry(lambda: send(sock, parts, block=True), stop, wait_s)


def retry(attempt: Callable[[], bool], stop: threading.Event, wait_s: float = PEER_WAIT_S) -> bool:
    """Call ``attempt`` (itself bounded in time) until it returns True, ``stop`` is set, or ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        if attempt():
            return True
        if stop.is_set() or time.monotonic() >= deadline:
            return False


STAGES = ("capture", "detector", "classifier", "display")


class StageSockets:
    """One stage's sockets, opened from the config the way every ``__main__`` needs them: a PULL
    bound on the stage's own endpoint (``[<stage>] endpoints[instance]``; the display's
    ``[display] endpoint``; capture binds none) and ``pushes`` PUSH sockets connected to every
    endpoint of the next stage (the display pushes nothing); the detector with ``[detector]
    two_paths`` also :attr:`side`, a PUSH connected to the display (a CURVE client of the display's
    key: ``keys_dir/display.key``).

    Made early, it checks ``instance`` and loads the CURVE keys (:func:`security`, kept as
    :attr:`security` for the stage's other servers); entered, it binds and connects; left, it closes
    the PULL at once and the PUSHes with their short linger (a queued marker or eos can still go),
    then terminates the context. A mistake in any of these is a start-up failure: one line naming
    the stage and the culprit on stderr, exit 2 (:func:`bus.cli.fail`)."""

    def __init__(self, stage: str, cfg: Config, instance: int = 0, pushes: int = 1):
        self.stage, self.cfg, self.instance, self.pushes = stage, cfg, instance, pushes
        nxt = STAGES.index(stage) + 1
        self.peer = STAGES[nxt] if nxt < len(STAGES) else None
        self.bind: str | None = None
        if stage == "display":
            self.bind = cfg.display.endpoint
        elif stage != "capture":
            endpoints: tuple[str, ...] = getattr(cfg, stage).endpoints
            if not 0 <= instance < len(endpoints):
                fail(stage, f"--instance {instance}: [{stage}] endpoints has {len(endpoints)} entries")
            self.bind = endpoints[instance]
        try:
            self.security = security(cfg.bus, stage, peer=self.peer, serves=self.bind is not None)
            self.side_security = (
                security(cfg.bus, stage, peer="display", serves=False)
                if stage == "detector" and cfg.detector.two_paths
                else None
            )
        except ConfigError as e:
            fail(stage, str(e))
        self.targets: tuple[str, ...] = ()
        if self.peer == "display":
            self.targets = (cfg.display.endpoint,)
        elif self.peer is not None:
            self.targets = getattr(cfg, self.peer).endpoints
        self.ctx: Context | None = None
        self.pull: zmq.Socket | None = None
        self.push: list[zmq.Socket] = []
        self.side: zmq.Socket | None = None

    def __enter__(self) -> StageSockets:
        bus = self.cfg.bus
        self.ctx = Context()
        try:
            if self.bind is not None:
                try:
                    self.pull = pull(self.ctx, self.bind, bus.hwm, self.security)
                except zmq.ZMQError as e:
                    fail(self.stage, f"cannot bind {self.bind}: {e}")
            if self.targets:
                for _ in range(self.pushes):
                    self.push.append(push(self.ctx, self.targets, bus.hwm, bus.send_timeout_ms, self.security))
            if self.stage == "detector" and self.cfg.detector.two_paths:
                display = (self.cfg.display.endpoint,)
                self.side = push(self.ctx, display, bus.hwm, bus.send_timeout_ms, self.side_security)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.pull is not None:
            self.pull.close(linger=0)
            self.pull = None
        for s in [*self.push, *([self.side] if self.side is not None else [])]:
            s.close()  # LINGER_MS: what is queued gets a moment to go
        self.push, self.side = [], None
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
