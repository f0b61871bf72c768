"""Live event streams with real processes: the four stages on the one-face clip, a ZeroMQ SUB client,
a Server-Sent Events client and an MQTT subscriber on a real Mosquitto broker (started here on a
random port with a temporary config). Each gets one record per frame, valid against
docs/events.schema.json and equal to the events file's; a broker stopped mid-run costs records
(counted), never frames. Skips, saying why, without the shared media, mosquitto or paho-mqtt."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from emostream.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
SCHEMA = ROOT / "docs" / "events.schema.json"
CLIP = "media/videos/head-pose-face-detection-male.mp4"
FRAMES = 62
PREFIX = "emotest"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).is_file()), None
)


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema (a dev extra)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check_records(validator: Any, records: list[dict[str, Any]], what: str) -> None:
    for r in records:
        errors = [e.message for e in validator.iter_errors(r)]
        assert not errors, f"{what}: record {r.get('seq')} is not valid: {errors[:3]}"


class Broker:
    """A Mosquitto broker on a random loopback port; ``stop``/``start`` again on the same port."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not come up on port {self.port}:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("no mosquitto binary (apt-get install mosquitto; scripts/test.sh does it as root)")
    pytest.importorskip("paho.mqtt.client", reason="pip install paho-mqtt")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class MqttSubscriber:
    """A paho client subscribed to ``PREFIX/#`` (again after each reconnect) collecting every message."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}")
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            pytest.fail("the test's MQTT subscriber could not subscribe")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in list(self.messages) if t == f"{PREFIX}/clip/events"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SseClient:
    """A plain-socket ``GET /events`` reader in a thread (what EventSource does, minus the browser)."""

    def __init__(self, port: int):
        self.records: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(
            f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        assert b" 200 " in status, status
        while self.file.readline() not in (b"\r\n", b""):
            pass
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        data = ""
        with contextlib.suppress(OSError, ValueError):
            for raw in self.file:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    self.ids.append(line[4:])
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    self.records.append(json.loads(data))
                    data = ""

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


def wait_http(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    pytest.fail(f"the web page did not come up on port {port}")


def drain_sub(sub: zmq.Socket, until: float) -> list[tuple[bytes, dict[str, Any]]]:
    out = []
    while time.monotonic() < until:
        if not sub.poll(50):
            continue
        topic, data = sub.recv_multipart()
        out.append((topic, json.loads(data)))
    return out


def start_pipeline(stages: Any, bus_toml: Any, ports: dict[str, int], video: Path, events: Path, **display: Any):
    pub_port = free_port()
    cfg = bus_toml(
        {
            "bus": {"send_timeout_ms": 10000, "stats_interval_s": 60.0},
            "capture": {
                "sources": [{"id": "clip", "uri": str(video), **display.pop("source", {})}],
                "eof_linger_s": 30.0,
            },
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(MODEL)},
            "display": {
                "endpoint": f"tcp://127.0.0.1:{ports['display']}",
                "web": f"127.0.0.1:{ports['web']}",
                "events": str(events),
                "publish": f"tcp://127.0.0.1:{pub_port}",
                "mqtt_prefix": PREFIX,
                "drain_timeout_s": 10.0,
                **display,
            },
        }
    )
    display_proc = stages.start("display", "--config", str(cfg))
    wait_http(ports["web"], 20)
    return cfg, display_proc, pub_port


def test_every_frame_reaches_zmq_sse_and_mqtt(tmp_path, bus_toml, ports, stages, zctx, broker, validator, shared_data):
    events = tmp_path / "events.jsonl"
    mqtt_sub = MqttSubscriber(broker.port)
    cfg, display, pub_port = start_pipeline(
        stages,
        bus_toml,
        ports,
        shared_data / CLIP,
        events,
        mqtt=f"127.0.0.1:{broker.port}",
        mqtt_qos=1,
        source={"realtime": False},
    )
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{pub_port}")
    sse = SseClient(ports["web"])
    time.sleep(1.0)  # the SUB subscription reaches the PUB socket (ZeroMQ's slow joiner) before any frame
    for stage in ("classifier", "detector", "capture"):
        stages.start(stage, "--config", str(cfg))
    try:
        got = drain_sub(sub, time.monotonic() + 1.0)
        rc = display.wait(150)
        deadline = time.monotonic() + 10  # a loaded machine: the last records may still be on their way
        while time.monotonic() < deadline and (len(got) < FRAMES or len(mqtt_sub.events()) < FRAMES):
            got += drain_sub(sub, time.monotonic() + 0.2)
        sse.close()
    finally:
        mqtt_sub.close()
        sub.close(linger=0)
    log = display.text()
    assert rc == 0, log[-3000:]
    assert f"final clip: read {FRAMES}  in events {FRAMES}  dropped 0  lost 0" in log, log[-3000:]
    file_records = [json.loads(x) for x in events.read_text().splitlines()]
    assert sorted(r["seq"] for r in file_records) == list(range(FRAMES))
    check_records(validator, file_records, "events file")
    streams = {
        "zmq": [r for _, r in got],
        "sse": sse.records,
        "mqtt": mqtt_sub.events(),
    }
    print({k: len(v) for k, v in streams.items()}, "records per stream")
    for name, records in streams.items():
        assert sorted(r["seq"] for r in records) == list(range(FRAMES)), f"{name}: {len(records)} records"
        check_records(validator, records, name)
        assert sorted(records, key=lambda r: r["seq"]) == file_records, f"{name}: not the events file's records"
    assert {t for t, _ in got} == {b"clip"}
    assert sse.ids == [str(r["seq"]) for r in sse.records]
    assert sum(1 for r in file_records if r["faces"]) >= FRAMES * 0.9  # the clip shows one face throughout
    tracks = [(t, json.loads(p)) for t, p, _ in mqtt_sub.messages if t.startswith(f"{PREFIX}/clip/tracks/")]
    assert tracks and all(s["src"] == "clip" and "smoothed_label" in s for _, s in tracks)
    assert (f"{PREFIX}/status", b"online") in [(t, p) for t, p, _ in mqtt_sub.messages]
    assert "final publish: published 62, dropped 0" in log and "final mqtt: published" in log


def test_a_broker_stopped_mid_run_costs_records_not_frames(
    tmp_path, bus_toml, ports, stages, broker, validator, shared_data
):
    events = tmp_path / "events.jsonl"
    mqtt_sub = MqttSubscriber(broker.port)
    cfg, display, _ = start_pipeline(
        stages,
        bus_toml,
        ports,
        shared_data / CLIP,
        events,
        mqtt=f"127.0.0.1:{broker.port}",
        source={"realtime": True, "fps": 8.0},  # ~7.8 s of frames: time to stop and restart the broker
    )
    for stage in ("classifier", "detector", "capture"):
        stages.start(stage, "--config", str(cfg))
    try:
        deadline = time.monotonic() + 60
        while len(mqtt_sub.events()) < 8:
            assert time.monotonic() < deadline, "no MQTT records before the broker was to be stopped"
            time.sleep(0.05)
        before = max(r["seq"] for r in mqtt_sub.events())
        broker.stop()
        time.sleep(1.5)
        broker.start()  # same port: the display's client reconnects (backoff from 1 s)
        rc = display.wait(120)
        time.sleep(0.5)
    finally:
        mqtt_sub.close()
    log = display.text()
    assert rc == 0, log[-3000:]
    assert f"final clip: read {FRAMES}  in events {FRAMES}  dropped 0  lost 0" in log, log[-3000:]
    final = [line for line in log.splitlines() if "final mqtt:" in line]
    assert final and "disconnected=" in final[0], log[-3000:]  # records dropped while it was down, counted
    assert "mqtt: lost the broker" in log
    after = [r for r in mqtt_sub.events() if r["seq"] > before + 12]
    assert after, f"no MQTT record after the broker came back (last before the stop: {before}):\n{log[-2000:]}"
    check_records(validator, mqtt_sub.events(), "mqtt")
