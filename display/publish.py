"""Live event streams: the display's events records pushed to other programs as they happen.

Consumes, per classified frame, the events record of :func:`display.worker.event` (schema:
``docs/events.schema.json``, described in ``docs/events.md``); produces the same record, as one
JSON object, on

- :class:`PubSink`: a ZeroMQ PUB socket bound on ``[display] publish`` (loopback unless ``[bus]
  allow_remote``; CURVE server when ``[bus] curve``, like every other socket). Two frames per
  message: the source id (UTF-8, the SUB prefix filter) and the JSON record;
- :class:`MqttSink`: an MQTT broker (``[display] mqtt = "host:port"``, paho-mqtt):
  ``<prefix>/<src>/events`` every record, ``<prefix>/<src>/tracks/<id>`` the latest state of each
  track (retained; ``"present": false`` once the track left the frame), ``<prefix>/status``
  ``online``/``offline`` (retained; ``offline`` is also the broker's last will);
- Server-Sent Events on the web page (``/events``, :mod:`display.web`, with the same :func:`dumps`).

Policy (the pipeline is never held back by a subscriber, a network or a broker):

- PUB never blocks: each subscriber has a queue of ``PUB_HWM`` messages in libzmq, and a
  subscriber whose queue is full misses messages (libzmq drops them, per subscriber, uncounted by
  design: we cannot see them). Sends use ``NOBLOCK``; a refused send is counted ``pub_full``.
- MQTT: paho's network thread does the I/O and reconnects with backoff (``MQTT_BACKOFF_S``).
  ``write`` only hands the messages to paho (no socket call) while it is connected, with paho's
  queue bounded to ``MQTT_QUEUE`` messages; while it is not, or when the queue is full, the record
  is dropped and counted (``disconnected`` / ``queue_full``), and one warning at most every 5 s says so.
- Every sink logs its counts when it closes (``published``, and each drop reason).

Non-finite numbers (a NaN score from a broken model) become ``null`` (:func:`clean`), so every
message is valid JSON.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
from typing import Any

import numpy as np
import zmq

from bus.codec import Frame
from bus.runtime import RateLimited
from bus.sockets import Context, Security

PUB_HWM = 1000  # messages queued per ZeroMQ subscriber before libzmq drops for that subscriber
PUB_LINGER_MS = 1000  # at close, queued records still go out to subscribers for this long
MQTT_QUEUE = 1000  # messages paho may hold (in flight or waiting for the socket) before we drop
MQTT_BACKOFF_S = (1, 30)  # reconnect delay: from 1 s, doubling, at most 30 s
MQTT_KEEPALIVE_S = 30
MQTT_QOS = (0, 1, 2)


def clean(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None (JSON has no NaN/Infinity)."""
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean(v) for v in x]
    return x


def dumps(record: dict[str, Any]) -> bytes:
    """One events record as compact JSON (strict: never NaN)."""
    return json.dumps(clean(record), separators=(",", ":"), allow_nan=False).encode("utf-8")


def summary(name: str, counts: collections.Counter[str]) -> str:
    drops = " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k != "published")
    return f"{name}: published {counts['published']}, dropped {drops or 0}"


class PubSink:
    """The events records on a ZeroMQ PUB socket: ``[src, json]`` per frame."""

    name = "publish"
    wants_image = False

    def __init__(self, endpoint: str, log: logging.Logger, security: Security | None = None):
        self.log = log
        self.counts: collections.Counter[str] = collections.Counter()
        self.ctx = Context()
        self.sock = self.ctx.socket(zmq.PUB)
        try:
            self.sock.setsockopt(zmq.SNDHWM, PUB_HWM)
            self.sock.setsockopt(zmq.LINGER, 0)
            if security is not None:
                security.server(self.sock, self.ctx)
            self.sock.bind(endpoint)
        except zmq.ZMQError as e:
            self.sock.close(linger=0)
            self.ctx.destroy(linger=0)
            raise OSError(f"[display] publish: cannot bind {endpoint}: {e}") from None
        log.info("publishing events on %s", endpoint)

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None:
        try:
            self.sock.send_multipart([msg.src.encode("utf-8"), dumps(event)], flags=zmq.NOBLOCK)
            self.counts["published"] += 1
        except zmq.Again:
            self.counts["pub_full"] += 1

    def close(self) -> None:
        self.log.info("final %s", summary("publish", self.counts))
        self.sock.close(linger=PUB_LINGER_MS)  # the last records reach the subscribers
        self.ctx.term()


def topic_part(s: str) -> str:
    """A source id as one MQTT topic level (no '/', '+', '#', NUL)."""
    return "".join("_" if c in "/+#\0" else c for c in s) or "_"


class MqttSink:
    """The events records and per-track state on an MQTT broker (see the module docstring)."""

    name = "mqtt"
    wants_image = False

    def __init__(self, address: str, prefix: str, qos: int, log: logging.Logger, client_id: str | None = None):
        import paho.mqtt.client as mqtt  # optional at import time of the display: only when configured

        host, _, port = address.rpartition(":")
        self.prefix, self.qos, self.log = prefix.rstrip("/"), qos, log
        self.warn = RateLimited(log)
        self.counts: collections.Counter[str] = collections.Counter()
        self.present: dict[str, dict[int, dict[str, Any]]] = {}  # src -> track -> its last retained state
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"emostream-display-{os.getpid()}"
        )
        self.client.max_queued_messages_set(MQTT_QUEUE)
        self.client.reconnect_delay_set(*MQTT_BACKOFF_S)
        self.client.will_set(f"{self.prefix}/status", b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.address = f"{host.strip('[]')}:{port}"
        self.client.connect_async(host.strip("[]"), int(port), keepalive=MQTT_KEEPALIVE_S)
        self.client.loop_start()  # paho's thread: connects, reconnects with backoff, does every socket call
        log.info("publishing events to mqtt://%s under %s/", self.address, self.prefix)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.warn.warning("mqtt_connect", "mqtt broker %s refused the connection: %s", self.address, reason)
            return
        self.log.info("mqtt: connected to %s", self.address)
        client.publish(f"{self.prefix}/status", b"online", qos=1, retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        self.warn.warning(
            "mqtt_down",
            "mqtt: lost the broker %s (%s); reconnecting with backoff, records dropped",
            self.address,
            reason,
        )

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        import paho.mqtt.client as mqtt

        if not self.client.is_connected():
            self.counts["disconnected"] += 1
            self.warn.warning("mqtt_down", "mqtt: broker %s not connected: records dropped", self.address)
            return
        info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.counts["published"] += 1
        else:
            reason = "queue_full" if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE else "disconnected"
            self.counts[reason] += 1
            self.warn.warning(f"mqtt_{reason}", "mqtt: record dropped (%s)", mqtt.error_string(info.rc))

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None:
        src = topic_part(msg.src)
        self._send(f"{self.prefix}/{src}/events", dumps(event))
        seen = self.present.setdefault(src, {})
        now: dict[int, dict[str, Any]] = {}
        for face in event["faces"]:
            track = face.get("track")
            if isinstance(track, int):
                now[track] = {"src": msg.src, "seq": msg.seq, "ts": msg.ts, "present": True, **face}
        for track, state in now.items():
            self._send(f"{self.prefix}/{src}/tracks/{track}", dumps(state), retain=True)
        for track in set(seen) - set(now):  # left the frame: its retained state says so
            self._send(f"{self.prefix}/{src}/tracks/{track}", dumps({**seen[track], "present": False}), retain=True)
        self.present[src] = now

    def close(self) -> None:
        self.log.info("final %s", summary("mqtt", self.counts))
        if self.client.is_connected():
            self.client.publish(f"{self.prefix}/status", b"offline", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()
