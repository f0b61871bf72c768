"""Faults in a running pipeline of real processes: a detector that hangs (SIGSTOP: reported by the
display with the silence's age, nothing grows, SIGCONT resumes), the ZMTP heartbeat with which a
receiver drops a hung sender, and a sender dealing past a hung receiver. A detector killed with
SIGKILL under the process manager: ``test_supervisord.py``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from bus import sockets
from tests.integration.managers import wait_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
STAGES = ("display", "classifier", "detector", "capture")
STATS = re.compile(r"display INFO stats: .* frames (\d+) ")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def shown(text: str) -> int:
    """Frames the display has shown so far (its last stats line)."""
    found = STATS.findall(text)
    return int(found[-1]) if found else 0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError(f"no VmRSS for {pid}")


def config(bus_toml, ports, shared_data: Path, tmp_path: Path, loop: bool):
    video = shared_data / "media/videos/asl_book.mkv"  # 109 frames, a face in every one
    return bus_toml(
        {
            "bus": {"hwm": 4, "send_timeout_ms": 200, "stats_interval_s": 1.0},
            "capture": {
                "sources": [{"id": "book", "uri": str(video), "realtime": True, "fps": 8.0, "loop": loop}],
                "eof_linger_s": 30.0,
            },
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(MODEL)},
            "display": {
                "endpoint": f"tcp://127.0.0.1:{ports['display']}",
                "web": "",
                "events": str(tmp_path / "events.jsonl"),
                "drain_timeout_s": 3.0,
                "stall_warn_s": 1.0,
            },
        }
    )


def test_a_hung_detector_is_reported_nothing_grows_and_it_resumes(
    tmp_path, bus_toml, ports, shared_data, stages
) -> None:
    cfg = config(bus_toml, ports, shared_data, tmp_path, loop=True)
    procs = {s: stages.start(s, "--config", str(cfg)) for s in STAGES}
    display, detector, capture = procs["display"], procs["detector"], procs["capture"]

    def log() -> str:
        return display.text()

    wait_for("frames at the display", lambda: shown(log()) >= 5, log, 120)
    before = {s: rss_mb(p.pid) for s, p in procs.items() if s != "detector"}
    os.kill(detector.pid, signal.SIGSTOP)
    try:
        time.sleep(7.0)  # beyond the receivers' ZMTP heartbeat timeout (5 s)
        after = {s: rss_mb(p.pid) for s, p in procs.items() if s != "detector"}
        ages = [float(a) for a in re.findall(r"source book: nothing has arrived for ([\d.]+) s", log())]
        assert ages and max(ages) >= 5.0, log()[-3000:]
        cap = capture.text()  # capture drops (counted) what cannot go: a full ring or socket
        assert "every shared-memory slot busy" in cap or "not sent (downstream full or absent)" in cap, cap[-2000:]
        for s in before:  # no queue grows while the detector hangs
            assert after[s] - before[s] < 20.0, (s, before[s], after[s])
        assert all(p.poll() is None for p in procs.values())
        frozen = shown(log())
    finally:
        os.kill(detector.pid, signal.SIGCONT)
    wait_for("recovery", lambda: "source book: flowing again after" in log(), log, 60)
    wait_for("new frames", lambda: shown(log()) > frozen, log, 30)
    for s in ("capture", "detector", "classifier", "display"):
        assert procs[s].stop(5) == 0, procs[s].text()[-2000:]
    final = re.findall(r"final stats: .* drops (.*)", capture.text())
    drops = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", final[-1])} if final else {}
    assert drops.get("ring_full", 0) + drops.get("send", 0) > 0, final  # the frames of the hang: dropped, counted
    growth = {s: round(after[s] - before[s], 1) for s in before}
    print(f"\nwarned at ages up to {max(ages)} s; capture drops {drops}; RSS growth MiB {growth}")


def _hung_pull(ep: str) -> subprocess.Popen:
    code = "import sys, time, zmq; s = zmq.Context().socket(zmq.PULL); s.bind(sys.argv[1]); time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code, ep])


def _next_event(monitor: zmq.Socket, timeout_s: float) -> int:
    if not monitor.poll(int(timeout_s * 1000)):
        pytest.fail(f"no socket event within {timeout_s} s")
    return int(recv_monitor_message(monitor)["event"])


def test_a_receiver_drops_a_hung_sender_after_the_heartbeat_timeout(zctx: zmq.Context, ports: dict[str, int]) -> None:
    ep = f"tcp://127.0.0.1:{ports['detector']}"
    pull = sockets.pull(zctx, ep, 4)
    monitor = pull.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    code = "import sys, time, zmq; s = zmq.Context().socket(zmq.PUSH); s.connect(sys.argv[1]); time.sleep(60)"
    peer = subprocess.Popen([sys.executable, "-c", code, ep])
    try:
        assert _next_event(monitor, 30) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        os.kill(peer.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        assert _next_event(monitor, sockets.HEARTBEAT_TIMEOUT_MS / 1000 + 5) == zmq.EVENT_DISCONNECTED
        assert time.monotonic() - t0 >= sockets.HEARTBEAT_TIMEOUT_MS / 1000 - 1.5
    finally:
        os.kill(peer.pid, signal.SIGCONT)
        peer.kill()
        peer.wait(5)
        pull.disable_monitor()
        monitor.close(0)
        pull.close(0)


def test_a_sender_deals_past_a_hung_receiver_without_blocking(zctx: zmq.Context, ports: dict[str, int]) -> None:
    """PUSH keeps the connection to a SIGSTOPped receiver (busy is not dead: no heartbeat timeout on
    senders, see bus.sockets) but, once that one's queue is full, deals every frame to the live one."""
    hung_ep, live_ep = f"tcp://127.0.0.1:{ports['detector']}", f"tcp://127.0.0.1:{ports['classifier']}"
    hung = _hung_pull(hung_ep)
    live = sockets.pull(zctx, live_ep, 4)
    push = sockets.push(zctx, [], 4, 100)
    monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)  # before connecting: no event missed
    push.connect(hung_ep)
    push.connect(live_ep)
    received = 0
    try:
        assert _next_event(monitor, 30) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        assert _next_event(monitor, 30) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        os.kill(hung.pid, signal.SIGSTOP)
        payload = b"x" * 100_000
        sent = 0
        for _ in range(300):
            sent += sockets.send(push, [payload], block=True)
            while live.poll(0):
                live.recv()
                received += 1
        deadline = time.monotonic() + 5
        while received < sent - 150 and time.monotonic() < deadline:
            if live.poll(100):
                live.recv()
                received += 1
        assert sent == 300, "a send blocked past its timeout on the hung receiver"
        assert received >= 150, f"only {received} of 300 frames reached the live receiver"
    finally:
        os.kill(hung.pid, signal.SIGCONT)
        hung.kill()
        hung.wait(5)
        push.disable_monitor()
        monitor.close(0)
        push.close(0)
        live.close(0)
