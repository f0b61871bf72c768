"""A live stream that stalls is reopened, not ended: the real capture process reading an MJPEG stream
from a local HTTP server (multipart/x-mixed-replace, what IP cameras serve) that stops sending for 7 s
mid-stream. Capture must log the reconnect, go on with the next seq, and never send an eos (only a
file ends a run; an eos from a live source would make the display and the supervisor end it with 0)."""

from __future__ import annotations

import http.server
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from bus import sockets
from bus.codec import decode
from emostream.launch import child_env

ROOT = Path(__file__).resolve().parents[2]
STALL_S = 7.0  # longer than the stream's 5 s read timeout (capture.sources.OPEN_TIMEOUT_MS)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Camera(http.server.BaseHTTPRequestHandler):
    """20 fps of numbered JPEGs; the first connection stalls after 20 frames, holding the socket open."""

    connections = 0
    stalled = threading.Event()
    resumed_at = 0.0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Camera.connections += 1
        first = Camera.connections == 1
        if not first and Camera.resumed_at == 0.0:
            Camera.resumed_at = time.time()
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for i in range(100_000):
            _ok, buf = cv2.imencode(".jpg", np.full((48, 64, 3), i % 256, np.uint8))
            data = buf.tobytes()
            try:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
                self.wfile.write(data + b"\r\n")
                self.wfile.flush()
            except OSError:
                return
            if first and i == 20:
                Camera.stalled.set()
                time.sleep(STALL_S)  # connection open, nothing sent
                return
            time.sleep(0.05)


def test_a_stalled_live_stream_is_reopened_and_never_ends_the_run(tmp_path: Path, bus_toml) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ep = f"ipc://{tmp_path}/detector.0"
    cfg = bus_toml(
        {
            "bus": {"shm_slots": 0, "max_age_ms": 0, "stats_interval_s": 1.0},
            "capture": {
                "sources": [{"id": "ipcam", "uri": f"http://127.0.0.1:{server.server_address[1]}/video.mjpg"}],
                "eof_linger_s": 1.0,
                "reconnect_s": 0.5,
                "reconnect_max_s": 2.0,
            },
            "detector": {"endpoints": [ep]},
        }
    )
    ctx = zmq.Context()
    pull = sockets.pull(ctx, ep, 64)
    env = child_env()
    log = tmp_path / "capture.log"
    with log.open("wb") as out:
        capture = subprocess.Popen(
            [sys.executable, "-m", "capture", "--config", str(cfg)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    got: list[tuple[str, int, float]] = []  # (kind, seq, capture time)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and capture.poll() is None:
            parts = sockets.recv(pull, 100)
            if parts is not None:
                msg = decode(parts)
                got.append((msg.kind, msg.seq, msg.ts))
            if Camera.resumed_at and sum(1 for k, _, ts in got if k == "frame" and ts > Camera.resumed_at) >= 20:
                break
        alive = capture.poll() is None
        if alive:
            capture.send_signal(signal.SIGTERM)
        rc = capture.wait(10)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait(5)
        pull.close(0)
        ctx.term()
        server.shutdown()
        server.server_close()
    text = log.read_text(errors="replace")
    assert Camera.stalled.is_set(), "the server never stalled"
    assert alive and rc == 0, f"capture ended by itself (rc {capture.returncode}):\n{text[-3000:]}"
    assert [k for k, _, _ in got if k != "frame"] == [], "a live source sent an end-of-stream"
    after = [s for k, s, ts in got if k == "frame" and ts > Camera.resumed_at]
    assert len(after) >= 20, f"frames did not flow again after the stall:\n{text[-3000:]}"
    seqs = [s for _, s, _ in got]
    assert seqs == sorted(set(seqs)), "seq went back or repeated after the reconnect"
    assert re.search(r"source ipcam: .* stopped delivering frames; reopening in 0\.5 s", text), text[-3000:]
    assert re.search(r"source ipcam: reopened after [\d.]+ s", text), text[-3000:]
    stall = Camera.resumed_at - min(ts for _, _, ts in got)
    print(f"\n{len(got)} frames, {len(after)} after the stream came back ({stall:.1f} s after the first frame)")
