"""Socket helpers. Topology: each stage *binds* a PULL socket on its own endpoint(s) and the stage
upstream *connects* a PUSH socket to all of them, so several copies of a stage share the load
(PUSH deals round-robin) and several sources fan in to one stage.

Backpressure policy (written down, and counted):
- every socket has a small high-water mark (``[bus] hwm``) so queues, memory and latency stay bounded;
- live frames are sent without blocking: a full queue drops the frame at the sender (counted);
- file frames block on a full queue, but never longer than ``[bus] send_timeout_ms`` (then counted);
- receivers poll with a timeout, so every loop notices its stop event;
- live frames older than ``[bus] max_age_ms`` are dropped by the stage that finds them stale;
- ``linger`` is short so a stopped stage never hangs on unsent messages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import zmq

LINGER_MS = 200


def pull(ctx: zmq.Context, endpoint: str, hwm: int) -> zmq.Socket:
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.LINGER, LINGER_MS)
    s.bind(endpoint)
    return s


def push(ctx: zmq.Context, endpoints: Sequence[str], hwm: int, send_timeout_ms: int) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.LINGER, LINGER_MS)
    s.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
    s.setsockopt(zmq.IMMEDIATE, 1)  # queue only to connected peers: no frames for a dead worker
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
    """One multipart message, or None when nothing arrived within ``timeout_ms``."""
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
    deadline = time.monotonic() + wait_s
    while True:
        if send(sock, parts, block=True):
            return True
        if stop.is_set() or time.monotonic() >= deadline:
            return False
