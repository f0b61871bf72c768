"""Garbage at every stage's real socket: the real ``python -m detector``, ``classifier`` and
``display`` processes get random bytes, truncated and wrong-version messages, raw TCP junk and a
ZMTP frame declaring a terabyte; each stays up, counts the undecodable messages in its stats line,
and still processes the valid frame sent after them."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from bus.codec import Eos, Face, Frame, Message, decode, encode

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
pytestmark = pytest.mark.timeout(120)


def garbage(rng: random.Random) -> list[list[bytes]]:
    """ZeroMQ messages that are not protocol-1 messages (each one must be counted)."""
    valid = [bytes(p) for p in encode(Frame("cam", 1, time.time(), pixels=np.zeros((20, 30, 3), np.uint8)))]
    header = msgpack.unpackb(valid[0])
    return [
        [rng.randbytes(200)],
        [rng.randbytes(50), rng.randbytes(10), rng.randbytes(3)],
        [valid[0][: len(valid[0]) // 2], valid[1]],  # header cut short
        [valid[0], valid[1][:100]],  # pixels cut short
        [msgpack.packb({**header, "v": 2}), valid[1]],  # another protocol version
        [b""],
        [msgpack.packb({**header, "image": {"shape": [8192, 8192, 3], "fmt": "bgr8"}}), b"\x00" * 10],
    ]


def tcp_junk(port: int, rng: random.Random) -> None:
    """Not ZeroMQ at all, then a ZMTP peer declaring a 1 TiB frame: both only cost a connection.
    (The junk starts with 0xFF, a broken ZMTP 3 signature, so that libzmq does not take it for a
    headerless ZMTP 1.0 peer and deliver its bytes as messages: those would be counted too, but
    the count would depend on the random bytes.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"\xff" + rng.randbytes(4096))
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
    ready = b"\x05READY" + b"\x0bSocket-Type" + (4).to_bytes(4, "big") + b"PUSH"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(greeting + b"\x04" + bytes([len(ready)]) + ready)
        c.sendall(b"\x02" + (1 << 40).to_bytes(8, "big") + b"x" * 1000)
        c.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # the stage hangs up on us (EOF or reset)
            while c.recv(65536):
                pass


def wait_listening(port: int, proc, stages, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"stage exited with {proc.returncode}:\n{proc.text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"port {port} not listening after {timeout_s} s")


def config(bus_toml, ports, events: Path):
    return bus_toml(
        {
            "bus": {"stats_interval_s": 600.0, "send_timeout_ms": 2000},
            "capture": {"sources": [{"id": "cam", "uri": "clip.mp4", "realtime": False}]},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(MODEL)},
            "display": {
                "endpoint": f"tcp://127.0.0.1:{ports['display']}",
                "web": "",
                "events": str(events),
                "drain_timeout_s": 1.0,
            },
        }
    )


def valid_for(stage: str, rng: np.random.Generator) -> Message:
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    if stage == "detector":
        return Frame("cam", 5, time.time(), t={"capture": time.time()}, pixels=image)
    face = Face((10.0, 10.0, 40.0, 40.0), 0.9, [(20.0, 20.0)] * 6)
    if stage == "classifier":
        crops = rng.integers(0, 256, (1, 48, 48, 1), dtype=np.uint8)
        return Frame("cam", 5, time.time(), faces=[face], crops=crops, pixels=image)
    face.label, face.probs = "happy", [0.1, 0.9]
    return Frame("cam", 5, time.time(), faces=[face], labels=["sad", "happy"], pixels=image)


@pytest.mark.parametrize("stage", ["detector", "classifier", "display"])
def test_stage_survives_garbage_counts_it_and_still_works(stage, tmp_path, bus_toml, ports, stages, zctx) -> None:
    events = tmp_path / "events.jsonl"
    cfg = config(bus_toml, ports, events)
    downstream = {"detector": "display", "classifier": "display"}.get(stage)  # two paths: a faceless frame
    sink = None
    if downstream is not None:  # the test plays the next stage
        sink = zctx.socket(zmq.PULL)
        sink.linger = 0
        sink.bind(f"tcp://127.0.0.1:{ports[downstream]}")
    proc = stages.start(stage, "--config", str(cfg))
    wait_listening(ports[stage], proc, stages)

    rng = random.Random(7)
    tcp_junk(ports[stage], rng)
    out = zctx.socket(zmq.PUSH)
    out.linger = 0
    out.sndtimeo = 10000
    out.connect(f"tcp://127.0.0.1:{ports[stage]}")
    bad = garbage(rng)
    for parts in bad:
        out.send_multipart(parts)
    out.send_multipart(encode(valid_for(stage, np.random.default_rng(0))))

    if sink is not None:
        if not sink.poll(30000, zmq.POLLIN):
            pytest.fail(f"no output after the garbage:\n{proc.text()[-3000:]}")
        msg = decode(sink.recv_multipart())
        assert (msg.kind, msg.src, msg.seq) == ("frame", "cam", 5), msg.reason
        if stage == "classifier":
            assert msg.faces[0].label is not None and msg.labels is not None
    else:  # the end of the source: the display exits 0 once the frame is accounted for
        out.send_multipart(encode(Eos("cam", 6, time.time(), frames=1, dropped=0)))
        assert proc.wait(30) == 0
        (line,) = [json.loads(x) for x in events.read_text().splitlines()]
        assert (line["src"], line["seq"], line["faces"][0]["label"]) == ("cam", 5, "happy")

    assert stage == "display" or proc.poll() is None, "the stage died"
    assert proc.stop(5) == 0
    log = proc.text()
    final = [x for x in log.splitlines() if "final stats" in x]
    assert final and f"garbage={len(bad)}" in final[-1] and "frames 1 " in final[-1], log[-3000:]
    assert "Traceback" not in log
    out.close(0)
    if sink is not None:
        sink.close(0)
