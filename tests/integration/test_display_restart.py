"""Issue 11 case 1 with real processes: a display killed with SIGKILL in the middle of a run and
started again appends to the events file; what the first one wrote is still there, every line is
one JSON record, and a torn last line is cut, never merged with the next record."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import zmq

from bus.codec import Eos, Face, Frame, Message, encode
from tests.integration.test_garbage import wait_listening

pytestmark = pytest.mark.timeout(120)


def classified(seq: int) -> Message:
    face = Face((10.0, 10.0, 40.0, 40.0), 0.9, [], "happy", [0.1, 0.9])
    return Frame("cam", seq, time.time(), faces=[face], labels=["sad", "happy"], t={"capture": time.time()})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_display_killed_and_restarted_appends_to_the_events_file(tmp_path, bus_toml, ports, stages, zctx) -> None:
    events = tmp_path / "events.jsonl"
    cfg = bus_toml(
        {
            "bus": {"stats_interval_s": 600.0},
            "capture": {"sources": [{"id": "cam", "uri": "clip.mp4", "realtime": False}]},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"]},
            "display": {
                "endpoint": f"tcp://127.0.0.1:{ports['display']}",
                "web": "",
                "events": str(events),
                "drain_timeout_s": 1.0,
            },
        }
    )
    first = stages.start("display", "--config", str(cfg))
    wait_listening(ports["display"], first, stages)
    push = zctx.socket(zmq.PUSH)
    push.linger = 0
    push.sndtimeo = 5000
    push.connect(f"tcp://127.0.0.1:{ports['display']}")
    for seq in range(40):
        push.send_multipart(encode(classified(seq)))
    deadline = time.monotonic() + 20
    while len(lines(events)) < 40 and time.monotonic() < deadline:  # flushed within FLUSH_S
        time.sleep(0.1)
    assert len(lines(events)) == 40, first.text()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    with events.open("ab") as f:  # what a write cut by the kill leaves (SIGKILL cannot be timed to tear one)
        f.write(b'{"src":"cam","seq":4')

    second = stages.start("display", "--config", str(cfg))
    wait_listening(ports["display"], second, stages)
    for seq in range(40, 80):
        push.send_multipart(encode(classified(seq)))
    push.send_multipart(encode(Eos("cam", 80, time.time(), frames=80, dropped=0)))
    assert second.wait(30) == 0
    records = [json.loads(x) for x in lines(events)]  # every line is one whole record
    assert [r["seq"] for r in records] == list(range(80))
    assert "cut a torn last line of 20 bytes" in second.text()
    push.close(0)
