"""The cost of one hop: a message encoded, sent over a PUSH/PULL pair, received and decoded.

Both ends run in this process (the sender in a thread), so the process CPU time per message is the
whole cost of the hop: both Python ends, libzmq's I/O threads and the kernel's socket copies. Payloads
are what travels between the stages: a frame with its image (detector -> classifier carries the image
and one crop), and the same message without the image (what a stage that needs only crops could get).
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

from bench.procs import free_port
from bus import sockets
from bus.codec import Face, Message, decode, encode

TIMEOUT_MS = 5000


def message(seq: int, shape: tuple[int, int, int], with_image: bool) -> Message:
    face = Face((100.0, 80.0, 60.0, 60.0), 0.9, [(110.0, 90.0)] * 6)
    image = np.full(shape, seq % 256, np.uint8) if with_image else None
    crops = np.zeros((1, 48, 48, 1), np.uint8)
    return Message(src="s0", seq=seq, ts=time.time(), image=image, faces=[face], crops=crops, t={"capture": 0.0})


def hop(
    transport: str, with_image: bool, n: int, shape: tuple[int, int, int] = (480, 640, 3), chunks: int = 5
) -> dict[str, Any]:
    """CPU ms and wall ms per message: the median over ``chunks`` runs of ``n // chunks`` messages
    (after 20 warm-up messages), so that a burst of load from elsewhere moves one chunk only."""
    with tempfile.TemporaryDirectory(prefix="hop-", dir="/tmp") as tmp:
        ep = f"ipc://{Path(tmp) / 'hop'}" if transport == "ipc" else f"tcp://127.0.0.1:{free_port()}"
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


def hops(n: int) -> list[dict[str, Any]]:
    return [hop(t, img, n) for img in (True, False) for t in ("tcp", "ipc")]
