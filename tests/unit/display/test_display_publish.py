"""display.publish: strict JSON, the ZeroMQ PUB sink (plain and CURVE), the MQTT sink without a
broker (never waits, counts), and the [display] keys of the streams."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import zmq

from bus.codec import Face, Frame, Message
from bus.config import BusConfig, ConfigError, parse
from bus.keys import generate
from bus.sockets import security
from display.publish import MqttSink, PubSink, clean, dumps, topic_part
from display.worker import event
from emostream.launch import free_port

LOG = logging.getLogger("test.publish")


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def frame(seq: int) -> Message:
    return Frame(
        src="cam/0", seq=seq, ts=time.time(), labels=["a", "b"], faces=[Face((1, 2, 3, 4), 0.9, [], "b", [0.3, 0.7])]
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (float("nan"), None),
        (float("inf"), None),
        (np.float32(0.5), 0.5),
        ({"a": [1.0, float("-inf"), {"b": np.float64("nan")}]}, {"a": [1.0, None, {"b": None}]}),
        (("x", 2), ["x", 2]),
        (True, True),
    ],
)
def test_clean_makes_json_without_nan(value, expected):
    assert clean(value) == expected
    json.loads(dumps({"x": value}), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


@pytest.mark.parametrize(("src", "part"), [("cam0", "cam0"), ("a/b", "a_b"), ("x+#", "x__"), ("", "_")])
def test_topic_part(src, part):
    assert topic_part(src) == part


def recv_all(sub: zmq.Socket, n: int, timeout_s: float = 5.0) -> list[list[bytes]]:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        if sub.poll(100):
            out.append(sub.recv_multipart())
    return out


def test_pub_sink_sends_source_and_record(zctx):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sink = PubSink(endpoint, LOG)
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"cam/0")
    sub.connect(endpoint)
    try:
        time.sleep(0.3)  # the subscription reaches the publisher
        records = []
        for seq in range(5):
            m = frame(seq)
            records.append(event(m, time.time()))
            sink.write(m, None, records[-1])
        got = recv_all(sub, 5)
        assert [t for t, _ in got] == [b"cam/0"] * 5
        assert [json.loads(d) for _, d in got] == records
        assert sink.counts["published"] == 5
    finally:
        sub.close(linger=0)
        sink.close()


def test_pub_sink_with_curve_serves_only_allowed_keys(tmp_path, zctx):
    keys = tmp_path / "keys"
    generate(keys, ("display", "friend"))
    generate(keys, ("stranger",), allow=False)
    bus = BusConfig(curve=True, keys_dir=str(keys))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sink = PubSink(endpoint, LOG, security(bus, "display"))
    subs = {}
    try:
        for name in ("friend", "stranger"):
            me = security(bus, name, peer="display", serves=False)
            assert me is not None
            s = zctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            me.client(s)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(endpoint)
            subs[name] = s
        time.sleep(0.5)
        for seq in range(3):
            m = frame(seq)
            sink.write(m, None, event(m, time.time()))
        assert len(recv_all(subs["friend"], 3)) == 3
        assert recv_all(subs["stranger"], 1, timeout_s=1.0) == []
    finally:
        for s in subs.values():
            s.close(linger=0)
        sink.close()


def test_pub_sink_bind_failure_is_an_oserror():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    first = PubSink(endpoint, LOG)
    try:
        with pytest.raises(OSError, match="publish"):
            PubSink(endpoint, LOG)
    finally:
        first.close()


def test_mqtt_without_a_broker_never_waits_and_counts():
    pytest.importorskip("paho.mqtt.client", reason="pip install paho-mqtt")
    sink = MqttSink(f"127.0.0.1:{free_port()}", "t", 1, LOG)  # nothing listens there
    try:
        t0 = time.monotonic()
        for seq in range(2000):
            m = frame(seq)
            sink.write(m, None, event(m, time.time()))
        assert time.monotonic() - t0 < 2.0
        assert sink.counts["published"] == 0 and sink.counts["disconnected"] == 2000
    finally:
        t0 = time.monotonic()
        sink.close()
        assert time.monotonic() - t0 < 3.0


@pytest.mark.parametrize(
    ("display", "error"),
    [
        ({"publish": "tcp://127.0.0.1:5609"}, None),
        ({"publish": "tcp://10.0.0.1:5609"}, r"\[display\] publish: .* not loopback"),
        ({"publish": "tcp://127.0.0.1:5603"}, r"\[display\] publish: .* also bound by \[display\]"),
        ({"publish": "udp://x"}, r"\[display\] publish"),
        ({"mqtt": "127.0.0.1:1883", "mqtt_qos": 2, "mqtt_prefix": "home/emotions"}, None),
        ({"mqtt": "broker"}, r"\[display\] mqtt: expected host:port"),
        ({"mqtt": "h:0"}, r"\[display\] mqtt: expected host:port"),
        ({"mqtt_qos": 3}, r"\[display\] mqtt_qos"),
        ({"mqtt_prefix": "a/#"}, r"\[display\] mqtt_prefix"),
        ({"mqtt_prefix": ""}, r"\[display\] mqtt_prefix"),
    ],
)
def test_stream_config_keys(display, error):
    table = {"display": {"endpoint": "tcp://127.0.0.1:5603", **display}}
    if error is None:
        cfg = parse(table)
        for k, v in display.items():
            assert getattr(cfg.display, k) == v
    else:
        with pytest.raises(ConfigError, match=error):
            parse(table)
