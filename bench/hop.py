"""The cost of one hop: a message encoded, sent over a PUSH/PULL pair, received and decoded.

Both ends run in this process (the sender in a thread), so the process CPU time per message is the
whole cost of the hop: both Python ends, libzmq's I/O threads and the kernel's socket copies. Payloads
are what travels between the stages: a frame with its image (detector -> classifier carries the image
and one crop), and the same message without the image (what a stage that needs only crops could get).

:func:`one_way` measures latency instead: one message in flight at a time, bounced back by an echo
thread (PUSH/PULL both ways, as the stages use them); half the median round trip is one hop. It
compares the transports the pipeline can run on one host: ``ipc://`` in the private runtime
directory (the default, unreachable by other users) and loopback TCP.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from bus import sockets
from bus.codec import Face, Frame, Message, decode, encode
from emostream.launch import endpoint

TIMEOUT_MS = 5000


def message(seq: int, shape: tuple[int, int, int], with_image: bool) -> Message:
    face = Face((100.0, 80.0, 60.0, 60.0), 0.9, [(110.0, 90.0)] * 6)
    image = np.full(shape, seq % 256, np.uint8) if with_image else None
    crops = np.zeros((1, 48, 48, 1), np.uint8)
    return Frame(src="s0", seq=seq, ts=time.time(), faces=[face], crops=crops, t={"capture": 0.0}, pixels=image)


def hop(
    transport: str, with_image: bool, n: int, shape: tuple[int, int, int] = (480, 640, 3), chunks: int = 5
) -> dict[str, Any]:
    """CPU ms and wall ms per message: the median over ``chunks`` runs of ``n // chunks`` messages
    (after 20 warm-up messages), so that a burst of load from elsewhere moves one chunk only."""
    with tempfile.TemporaryDirectory(prefix="hop-", dir="/tmp") as tmp:
        ep = endpoint(transport, Path(tmp), "hop")
        ctx = zmq.Context()
        pull = sockets.pull(ctx, ep, 4)
        push = sockets.push(ctx, [ep], 4, TIMEOUT_MS)
        msgs = [message(i, shape, with_image) for i in range(8)]  # made up front: not part of the hop
        size = max(1, n // chunks)
        total = 20 + size * chunks

        def sender() -> None:
            for i in range(total):
                if not sockets.send(push, encode(msgs[i % len(msgs)]), block=True):
                    return

        thread = threading.Thread(target=sender, daemon=True)
        try:
            thread.start()
            marks: list[tuple[float, float]] = []
            for i in range(total):
                if i >= 20 and (i - 20) % size == 0:
                    marks.append((time.perf_counter(), time.process_time()))
                parts = sockets.recv(pull, TIMEOUT_MS)
                if parts is None:
                    raise TimeoutError(f"hop {transport}: message {i} did not arrive")
                decode(parts)
            marks.append((time.perf_counter(), time.process_time()))
            thread.join(TIMEOUT_MS / 1000)
        finally:
            push.close(linger=0)
            pull.close(linger=0)
            ctx.term()
    return {
        "transport": transport,
        "payload": f"image {shape[1]}x{shape[0]} + 1 crop" if with_image else "1 crop, no image",
        "bytes": (int(np.prod(shape)) if with_image else 0) + 48 * 48,
        "cpu_ms_per_msg": round(statistics.median(c1 - c0 for (_, c0), (_, c1) in pairwise(marks)) * 1000 / size, 3),
        "wall_ms_per_msg": round(statistics.median(t1 - t0 for (t0, _), (t1, _) in pairwise(marks)) * 1000 / size, 3),
    }


def one_way(transport: str, with_image: bool, n: int, shape: tuple[int, int, int] = (480, 640, 3)) -> float:
    """Median one-way latency in microseconds (half a round trip, encode and decode included), over
    ``n`` round trips after 20 warm-up ones."""
    with tempfile.TemporaryDirectory(prefix="hop-", dir="/tmp") as tmp:
        there, back = endpoint(transport, Path(tmp), "there"), endpoint(transport, Path(tmp), "back")
        ctx = zmq.Context()
        socks = [sockets.pull(ctx, there, 4), sockets.push(ctx, [back], 4, TIMEOUT_MS)]
        socks += [sockets.pull(ctx, back, 4), sockets.push(ctx, [there], 4, TIMEOUT_MS)]
        echo_in, echo_out, pull, push = socks
        wire = encode(message(0, shape, with_image))
        total = 20 + n

        def echo() -> None:
            for _ in range(total):
                parts = sockets.recv(echo_in, TIMEOUT_MS)
                if parts is None or not sockets.send(echo_out, encode(decode(parts)), block=True):
                    return

        thread = threading.Thread(target=echo, daemon=True)
        rtts = []
        try:
            thread.start()
            for i in range(total):
                t0 = time.perf_counter()
                if not sockets.send(push, wire, block=True) or (parts := sockets.recv(pull, TIMEOUT_MS)) is None:
                    raise TimeoutError(f"one_way {transport}: round trip {i} did not come back")
                decode(parts)
                if i >= 20:
                    rtts.append(time.perf_counter() - t0)
            thread.join(TIMEOUT_MS / 1000)
        finally:
            for s in socks:
                s.close(linger=0)
            ctx.term()
    return round(statistics.median(rtts) / 2 * 1e6, 1)


def hops(n: int) -> list[dict[str, Any]]:
    rows = [hop(t, img, n) for img in (True, False) for t in ("tcp", "ipc")]
    for row in rows:
        image = row["payload"].startswith("image")
        row["one_way_us"] = one_way(row["transport"], image, max(50, n // (20 if image else 2)))
    return rows
