"""Across hosts, for real: two network namespaces joined by a veth pair (169.254.77.1/30 and
169.254.77.2/30, link-local), the real ``python -m display`` in one binding the veth address with
``allow_remote = true`` and ``curve = true``, and senders in the other playing the classifier.

The sender with the classifier's key gets every frame through; a sender without keys, and one with
a key the display does not allow, get nothing in (the display's ledger counts exactly the real
frames). The whole pipeline with two paths runs across them too: capture and detector in one,
classifier and display in the other, CURVE on, every frame joined with its emotion (and, with the
classifier killed mid-run, the rest shown without emotions, the run ending by itself). Skips, saying why, where network namespaces cannot be made (not root, no ``ip``, a
container without CAP_SYS_ADMIN); the namespaces are always deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.keys import STAGES, generate
from emostream.launch import child_env, stop_all

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)
SERVER_IP, CLIENT_IP = "169.254.77.1", "169.254.77.2"
FRAMES = 10

SENDER = """
import sys, time
import numpy as np, zmq
from bus import sockets
from bus.codec import Eos, Face, Frame, encode
from bus.config import load

cfg, mode = load(sys.argv[1], env={}), sys.argv[2]
ctx = sockets.Context()
if mode == "plain":  # no CURVE at all
    sec = None
elif mode == "stranger":  # a valid key pair the display was never told about
    pub, secret = zmq.curve_keypair()
    real = sockets.security(cfg.bus, "classifier", peer="display", serves=False)
    sec = sockets.Security("stranger", pub, secret, real.allowed, real.peer_public)
else:
    sec = sockets.security(cfg.bus, "classifier", peer="display", serves=False)
push = sockets.push(ctx, [cfg.display.endpoint], 4, 3000 if mode == "legit" else 300, sec)
first = 0 if mode == "legit" else 100  # an intruder's frames would show up as seq >= 100
sent = 0
for seq in range(first, first + {frames}):
    face = Face((5.0, 5.0, 20.0, 20.0), 0.9, [], "happy", [0.1, 0.9])
    msg = Frame("cam", seq, time.time(), pixels=np.zeros((48, 64, 3), np.uint8), faces=[face], labels=["sad", "happy"])
    sent += sockets.send(push, encode(msg), block=True)
if mode == "legit":
    sent += sockets.send(push, encode(Eos("cam", {frames}, time.time(), frames={frames}, dropped=0)), block=True)
print("sent", sent, flush=True)
push.close(linger=1000)
ctx.term()
""".replace("{frames}", str(FRAMES))


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def netns() -> Iterator[tuple[str, str]]:
    """Two namespaces (server, client) joined by a veth pair; deleted at the end, whatever happens."""
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed: apt-get install iproute2")
    tag = f"emo{os.getpid() % 100000}"
    probe = ip("netns", "add", f"{tag}p")
    if probe.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {probe.stderr.strip() or probe.returncode}")
    ip("netns", "del", f"{tag}p")
    server, client = f"{tag}s", f"{tag}c"
    made: list[str] = []
    try:
        for ns in (server, client):
            assert ip("netns", "add", ns).returncode == 0
            made.append(ns)
        steps = [
            ("link", "add", f"{tag}vs", "type", "veth", "peer", "name", f"{tag}vc"),
            ("link", "set", f"{tag}vs", "netns", server),
            ("link", "set", f"{tag}vc", "netns", client),
            ("-n", server, "addr", "add", f"{SERVER_IP}/30", "dev", f"{tag}vs"),
            ("-n", client, "addr", "add", f"{CLIENT_IP}/30", "dev", f"{tag}vc"),
            ("-n", server, "link", "set", f"{tag}vs", "up"),
            ("-n", client, "link", "set", f"{tag}vc", "up"),
            ("-n", server, "link", "set", "lo", "up"),
            ("-n", client, "link", "set", "lo", "up"),
        ]
        for step in steps:
            r = ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the veth pair (ip {' '.join(step)}): {r.stderr.strip()}")
        yield server, client
    finally:
        for ns in made:
            ip("netns", "del", ns)  # takes its end of the veth pair with it


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def env() -> dict[str, str]:
    return child_env()


def test_curve_across_namespaces_lets_the_key_holder_in_and_nobody_else(
    netns: tuple[str, str], tmp_path: Path, bus_toml
) -> None:
    server, client = netns
    keys = tmp_path / "keys"
    generate(keys, STAGES)
    (keys / "allowed" / "display.key").unlink()  # only the stages that connect
    port = 5603
    events = tmp_path / "events.jsonl"
    cfg = bus_toml(
        {
            "bus": {"allow_remote": True, "curve": True, "keys_dir": str(keys), "stats_interval_s": 60.0},
            "capture": {"sources": [{"id": "cam", "uri": "clip.mp4", "realtime": False}]},
            "display": {
                "endpoint": f"tcp://{SERVER_IP}:{port}",
                "web": "",
                "events": str(events),
                "drain_timeout_s": 2.0,
            },
        }
    )
    log = tmp_path / "display.log"
    with log.open("wb") as out:
        display = subprocess.Popen(
            in_ns(server, sys.executable, "-m", "display", "--config", str(cfg)),
            cwd=ROOT,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    try:
        deadline = time.monotonic() + 60
        while "pulling on" not in log.read_text(errors="replace"):
            assert display.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)

        def send(mode: str) -> str:
            r = subprocess.run(
                in_ns(client, sys.executable, str(script), str(cfg), mode),
                cwd=ROOT,
                env=env(),
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()

        assert send("plain") == "sent 0"  # IMMEDIATE: no handshake, nothing queued, nothing sent
        assert send("stranger") == "sent 0"
        assert send("legit") == f"sent {FRAMES + 1}"
        deadline = time.monotonic() + 60
        while display.poll() is None:
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        text = log.read_text(errors="replace")
        assert display.returncode == 0, text
        assert f"final cam: read {FRAMES}  in events {FRAMES}  dropped 0  lost 0" in text, text
        assert "garbage" not in text
        seqs = sorted(json.loads(x)["seq"] for x in events.read_text().splitlines())
        assert seqs == list(range(FRAMES))  # nothing from the intruders (they would be 100+)
    finally:
        if display.poll() is None:
            display.kill()
            display.wait(5)


@pytest.mark.parametrize("kill", [False, True], ids=["all", "classifier_killed"])
def test_two_paths_across_namespaces_with_curve(
    netns: tuple[str, str], tmp_path: Path, bus_toml, shared_data: Path, kill: bool
) -> None:
    """Capture and detector on one "host", classifier and display on the other, CURVE on: the crops
    and the frames cross the veth pair by their two paths, and every frame of asl_signer_concat10.mp4
    (648, one face each) reaches the events with its emotion. The display draws nothing, so its
    frames cross without pixels (a thumbnail each), and capture and detector may share memory (on
    in the first run, off in the second). With the classifier stopped and killed after 100 frames,
    the frames whose crops it held and every later one are shown without emotions, and the run ends
    by itself, nothing lost."""
    server, client = netns
    keys = tmp_path / "keys"
    generate(keys, STAGES)
    video = shared_data / "media/videos/asl_signer_concat10.mp4"
    events = tmp_path / "events.jsonl"
    cfg = bus_toml(
        {
            "bus": {
                "allow_remote": True,
                "curve": True,
                "keys_dir": str(keys),
                "shm_slots": 0 if kill else 16,  # only capture and detector, on one host, see the ring
                "stats_interval_s": 60.0,
            },
            "capture": {
                "sources": [{"id": "asl", "uri": str(video), "realtime": kill, **({"fps": 60.0} if kill else {})}],
                "eof_linger_s": 30.0,
            },
            "detector": {"endpoints": [f"tcp://{CLIENT_IP}:5601"]},
            "classifier": {
                "endpoints": [f"tcp://{SERVER_IP}:5602"],
                "model": str(ROOT / "models/fer2013_emonet.tflite"),
            },
            "display": {
                "endpoint": f"tcp://{SERVER_IP}:5603",
                "web": "",
                "events": str(events),
                "drain_timeout_s": 3.0,
                "join_wait_ms": 500,
            },
        }
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {s: tmp_path / f"{s}.log" for s in ("display", "classifier", "detector", "capture")}
    try:
        for stage, ns in (("display", server), ("classifier", server), ("detector", client), ("capture", client)):
            with logs[stage].open("wb") as out:
                procs[stage] = subprocess.Popen(
                    in_ns(ns, sys.executable, "-m", stage, "--config", str(cfg)),
                    cwd=ROOT,
                    env=env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        if kill:
            deadline = time.monotonic() + 120
            while not events.exists() or len(events.read_text().splitlines()) < 100:
                assert time.monotonic() < deadline and procs["display"].poll() is None, logs["display"].read_text()
                time.sleep(0.05)
            procs["classifier"].send_signal(signal.SIGSTOP)  # its queue fills with crops...
            time.sleep(1.0)
            procs["classifier"].send_signal(signal.SIGKILL)  # ...and goes with it
        rc = procs["display"].wait(150)
        text = logs["display"].read_text(errors="replace")
        assert rc == 0, text[-3000:]
        assert "final asl: read 648  in events 648  dropped 0  lost 0" in text, text[-3000:]
        recs = [json.loads(line) for line in events.read_text().splitlines()]
        assert sorted(r["seq"] for r in recs) == list(range(648))
        bare = {r["no_emotions"] for r in recs if "no_emotions" in r}
        if kill:
            assert "join_timeout" in bare and bare <= {"join_timeout", "join_full", "send"}, bare
            assert all((r["faces"][0]["label"] is None) == ("no_emotions" in r) for r in recs)
        else:
            assert not bare and all(r["faces"][0]["label"] is not None for r in recs)
        assert "final frames shown: with pixels 0, thumbnail only 648, neither 0" in text, text[-3000:]
        assert "frames without pixels -> tcp://169.254.77.1:5603" in logs["detector"].read_text(errors="replace")
    finally:
        stop_all(list(procs.values()), 10.0)
