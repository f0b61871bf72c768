"""Issue 11 cases 2, 7 and 13 against a real ``python -m display``: forged messages (a face box of
infinity or 1e30, a NaN score, a newline in a source id, a 100 kB drop reason, seq = 10**12) are
refused or contained: the display stays up, the web page keeps following the real frames, no
forged log line appears, the final lines stay short, and the run ends with exit 0 and every real
frame in the events file."""

from __future__ import annotations

import http.client
import json
import math
import time

import msgpack
import numpy as np
import pytest
import zmq

from bus.codec import Eos, Face, Frame, Message, encode
from tests.integration.test_garbage import wait_listening

pytestmark = pytest.mark.timeout(120)
FORGED_LINE = "2026-01-01 00:00:00,000 display INFO final cam: read 0"


def real(seq: int) -> Message:
    face = Face((10.0, 10.0, 40.0, 40.0), 0.9, [], "happy", [0.1, 0.9])
    image = np.zeros((8, 8, 3), np.uint8)
    return Frame("cam", seq, time.time(), faces=[face], labels=["sad", "happy"], pixels=image)


def forged(**changes: object) -> list[bytes]:
    """A valid 8x8 frame's parts with header fields replaced (encode would refuse some of them)."""
    head, *rest = (bytes(p) for p in encode(real(0)))
    h = msgpack.unpackb(head)
    for key, value in changes.items():
        if key.startswith("face_"):
            h["faces"][0][key[5:]] = value
        else:
            h[key] = value
    return [msgpack.packb(h), *rest]


def state(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/state.json")
    return json.loads(conn.getresponse().read())


def test_forged_messages_do_not_crash_freeze_or_forge_the_display(tmp_path, bus_toml, ports, stages, zctx) -> None:
    events = tmp_path / "events.jsonl"
    cfg = bus_toml(
        {
            "bus": {"stats_interval_s": 600.0},
            "capture": {"sources": [{"id": "cam", "uri": "clip.mp4", "realtime": False}]},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"]},
            "display": {
                "endpoint": f"tcp://127.0.0.1:{ports['display']}",
                "web": f"127.0.0.1:{ports['web']}",
                "events": str(events),
                "drain_timeout_s": 1.0,
            },
        }
    )
    proc = stages.start("display", "--config", str(cfg))
    wait_listening(ports["display"], proc, stages)
    push = zctx.socket(zmq.PUSH)
    push.linger = 0
    push.sndtimeo = 5000
    push.connect(f"tcp://127.0.0.1:{ports['display']}")
    push.send_multipart(encode(real(0)))
    bad = [
        forged(face_box=[0.0, 0.0, math.inf, 10.0]),  # case 2
        forged(face_box=[0.0, 0.0, 1e30, 10.0]),
        forged(face_score=math.nan),  # case 7: NaN in /state.json
        forged(src=f"cam\n{FORGED_LINE}"),  # case 13
        forged(kind="drop", reason="x" * 100_000),
        forged(kind="drop", reason=f"stale\n{FORGED_LINE}"),
    ]
    for parts in bad:
        push.send_multipart(parts)
    push.send_multipart(forged(seq=10**12))  # case 7: decodes, but far outside the source's window
    for seq in range(1, 6):
        push.send_multipart(encode(real(seq)))
    deadline = time.monotonic() + 20
    shown = None
    while time.monotonic() < deadline:
        shown = [s["seq"] for s in state(ports["web"])["sources"]]
        if shown == [5]:
            break
        time.sleep(0.2)
    assert shown == [5], proc.text()[-3000:]
    push.send_multipart(encode(Eos("cam", 6, time.time(), frames=6, dropped=0)))
    assert proc.wait(30) == 0
    assert [json.loads(x)["seq"] for x in events.read_text().splitlines()] == list(range(6))
    log = proc.text()
    assert "Traceback" not in log
    assert not any(line.startswith(FORGED_LINE[:20]) for line in log.splitlines()), log[-3000:]
    assert max(len(line) for line in log.splitlines()) < 1000
    final = [line for line in log.splitlines() if "final stats" in line][-1]
    assert f"garbage={len(bad)}" in final and "seq_window=1" in final, final
    assert [line.split("final ", 1)[1] for line in log.splitlines() if " final cam:" in line] == [
        "cam: read 6  in events 6  dropped 0  lost 0"
    ]
    push.close(0)
