from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from bus.codec import Face, Frame
from display.web import MAX_STREAMS, SSE_QUEUE, Hub, WebSink
from display.worker import event

LOG = logging.getLogger("test.web")
EVIL = "<script>alert(1)</script>"


@pytest.fixture
def web():
    sink = WebSink("127.0.0.1:0", LOG)
    yield sink
    sink.close()


def get(sink: WebSink, path: str, host: str | None = None, method: str = "GET") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", sink.server.server_address[1], timeout=5)
    conn.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    return conn.getresponse()


def publish(sink: WebSink, seq: int, labels: list[str], src: str = "cam0") -> None:
    image = np.full((60, 80, 3), seq % 256, np.uint8)
    msg = Frame(
        src=src,
        seq=seq,
        ts=time.time(),
        labels=labels,
        faces=[Face((5, 5, 20, 20), 0.9, [], labels[1], [0.2, 0.8])],
        pixels=image,
    )
    sink.write(msg, image, event(msg, time.time()))


@pytest.mark.parametrize(
    ("path", "status", "ctype"),
    [
        ("/", 200, "text/html; charset=utf-8"),
        ("/index.html", 200, "text/html; charset=utf-8"),
        ("/app.js", 200, "text/javascript; charset=utf-8"),
        ("/style.css", 200, "text/css; charset=utf-8"),
        ("/state.json", 200, "application/json"),
        ("/app.js?v=2", 200, "text/javascript; charset=utf-8"),
        ("/../bus.toml", 404, None),
        ("/static/../../bus.toml", 404, None),
        ("/%2e%2e/%2e%2e/bus.toml", 404, None),
        ("/..%2f..%2fbus.toml", 404, None),
        ("//etc/passwd", 404, None),
        ("/web.py", 404, None),
        ("/static/index.html", 404, None),
        ("/nope", 404, None),
    ],
)
def test_routes(web, path, status, ctype):
    r = get(web, path)
    body = r.read()
    assert r.status == status
    assert r.getheader("X-Content-Type-Options") == "nosniff"
    assert "default-src 'self'" in r.getheader("Content-Security-Policy")
    if ctype:
        assert r.getheader("Content-Type") == ctype
    if status == 404:
        assert b"[bus]" not in body and b"import" not in body


def test_html_has_csp_and_no_inline_script(web):
    r = get(web, "/")
    html = r.read().decode()
    assert r.getheader("Content-Security-Policy").startswith("default-src 'self'")
    assert '<script src="app.js" defer></script>' in html
    assert "<script>" not in html


def test_app_never_uses_inner_html(web):
    js = get(web, "/app.js").read().decode()
    assert "textContent" in js
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js


@pytest.mark.parametrize(("host", "status"), [(None, 200), ("localhost", 200), ("evil.example:80", 403), ("", 403)])
def test_host_header_is_checked_on_loopback(web, host, status):
    if host == "localhost":
        host = f"localhost:{web.server.server_address[1]}"
    r = get(web, "/state.json", host=host)
    r.read()
    assert r.status == status


def test_state_json_is_valid_json_that_escapes_nothing(web):
    publish(web, 1, ["calm", EVIL])
    r = get(web, "/state.json")
    raw = r.read()
    state = json.loads(raw)
    assert r.getheader("Cache-Control") == "no-store"
    [src] = state["sources"]
    assert src["src"] == "cam0" and src["seq"] == 1
    assert src["labels"] == ["calm", EVIL]
    assert src["faces"][0]["label"] == EVIL
    assert src["faces"][0]["probs"] == {"calm": 0.2, EVIL: 0.8}
    assert src["faces"][0]["colour"].startswith("#")
    assert src["faces"][0]["box"] == [5.0, 5.0, 20.0, 20.0]
    assert "fps" in state


def test_state_keeps_the_newest_frame_per_source(web):
    for seq in (1, 5, 3):  # 3 arrives late (another classifier copy): ignored
        publish(web, seq, ["a", "b"])
    publish(web, 2, ["a", "b"], src="cam1")
    state = json.loads(get(web, "/state.json").read())
    assert {s["src"]: s["seq"] for s in state["sources"]} == {"cam0": 5, "cam1": 2}


def read_part(sock_file) -> bytes:
    assert sock_file.readline() == b"--frame\r\n"
    headers = {}
    while (line := sock_file.readline()) != b"\r\n":
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    assert headers["content-type"] == "image/jpeg"
    data = sock_file.read(int(headers["content-length"]))
    assert sock_file.readline() == b"\r\n"
    return data


def open_stream(web, path="/stream.mjpg"):
    s = socket.create_connection(("127.0.0.1", web.server.server_address[1]), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{web.server.server_address[1]}\r\n\r\n".encode())
    f = s.makefile("rb")
    status = f.readline()
    while f.readline() not in (b"\r\n", b""):
        pass
    return s, f, status


def test_mjpeg_stream_sends_the_latest_frames(web):
    publish(web, 1, ["a", "b"])
    s, f, status = open_stream(web, "/stream.mjpg?src=cam0")
    try:
        assert b"200" in status
        first = cv2.imdecode(np.frombuffer(read_part(f), np.uint8), cv2.IMREAD_COLOR)
        assert first.shape == (60, 80, 3)
        publish(web, 2, ["a", "b"])
        second = cv2.imdecode(np.frombuffer(read_part(f), np.uint8), cv2.IMREAD_COLOR)
        assert abs(int(second.mean()) - 2) <= 2
    finally:
        s.close()


def test_stream_viewers_are_bounded(web):
    publish(web, 1, ["a", "b"])
    held = [open_stream(web) for _ in range(MAX_STREAMS)]
    try:
        for _s, f, status in held:
            assert b"200" in status
            read_part(f)
        r = get(web, "/stream.mjpg")
        r.read()
        assert r.status == 503
    finally:
        for s, _f, _ in held:
            s.close()


def test_publish_never_waits_for_a_stalled_viewer():
    hub = Hub()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(hub.wait_frame(None, 0, timeout=5.0)))
    t.start()
    t0 = time.monotonic()
    for i in range(1000):
        hub.publish("s", np.zeros((8, 8, 3), np.uint8), {"seq": i})
    assert time.monotonic() - t0 < 1.0
    t.join(5)
    assert got and got[0] is not None
    hub.close()
    assert hub.wait_frame(None, 10**9, timeout=5.0) is None  # closed: returns at once


def test_close_stops_streaming_clients(web):
    publish(web, 1, ["a", "b"])
    s, f, _ = open_stream(web)
    read_part(f)
    t0 = time.monotonic()
    web.close()
    assert f.read() == b""  # server closed the stream
    assert time.monotonic() - t0 < 3.0
    s.close()


def test_a_viewer_that_hangs_up_before_any_frame_frees_its_slot(web):
    held = [open_stream(web, "/stream.mjpg?src=never") for _ in range(MAX_STREAMS)]
    for s, f, status in held:
        assert b"200" in status
        f.close()  # the file holds the socket open too
        s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = get(web, "/stream.mjpg?src=never", method="HEAD")
        r.read()
        if r.status == 200:
            return
        time.sleep(0.2)
    pytest.fail("stream slots were not freed after the viewers hung up")


def noisy_publisher(sink: WebSink, stop: threading.Event) -> None:
    """Frames that JPEG-encode big (noise), ~30 per second, until ``stop``."""
    rng = np.random.default_rng(0)
    seq = 0
    while not stop.is_set():
        image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        msg = Frame(src="cam0", seq=seq, ts=time.time(), labels=["a", "b"], faces=[], pixels=image)
        sink.write(msg, image, event(msg, time.time()))
        seq += 1
        stop.wait(0.03)


def test_idle_viewers_do_not_keep_everyone_else_out(web):
    """Issue 11: eight viewers that connect and never read took every slot; the next got 503 for good."""
    stop = threading.Event()
    pub = threading.Thread(target=noisy_publisher, args=(web, stop), daemon=True)
    pub.start()
    idle = []
    try:
        for _ in range(MAX_STREAMS):
            s = socket.create_connection(("127.0.0.1", web.server.server_address[1]), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1:{web.server.server_address[1]}\r\n\r\n".encode())
            idle.append(s)  # never reads a byte
        time.sleep(0.5)
        deadline = time.monotonic() + 8
        while True:
            s, f, status = open_stream(web)
            try:
                if b"200" in status:
                    read_part(f)  # and it gets frames
                    return
            finally:
                s.close()
            if time.monotonic() > deadline:
                pytest.fail(f"a new viewer still got {status!r} 8 s after {MAX_STREAMS} idle viewers connected")
            time.sleep(0.5)
    finally:
        stop.set()
        pub.join(5)
        for s in idle:
            s.close()


def test_a_nan_score_still_gives_valid_json(web):
    """Issue 11: a NaN score (a broken model) made /state.json invalid JSON (a bare NaN)."""
    image = np.zeros((60, 80, 3), np.uint8)
    nan = float("nan")
    msg = Frame(
        src="cam0",
        seq=1,
        ts=time.time(),
        labels=["a", "b"],
        faces=[Face((5, 5, 20, 20), nan, [], "b", [nan, 1.0])],
        pixels=image,
    )
    web.write(msg, image, event(msg, time.time()))

    def strict(c: str) -> None:
        raise ValueError(f"not JSON: {c}")

    state = json.loads(get(web, "/state.json").read(), parse_constant=strict)
    face = state["sources"][0]["faces"][0]
    assert face["score"] is None and face["probs"] == {"a": None, "b": 1.0}


def test_a_bogus_huge_seq_does_not_freeze_the_page(web):
    """Issue 11: after a frame with seq = 10**12 every later frame was 'older' and ignored."""
    publish(web, 10**12, ["a", "b"])
    s, f, _status = open_stream(web, "/stream.mjpg?src=cam0")
    try:
        read_part(f)
        for seq in (3, 4):
            publish(web, seq, ["a", "b"])
        state = json.loads(get(web, "/state.json").read())
        assert state["sources"][0]["seq"] == 4
        img = cv2.imdecode(np.frombuffer(read_part(f), np.uint8), cv2.IMREAD_COLOR)
        assert abs(int(img.mean()) - 4) <= 2  # the new frames stream again
    finally:
        s.close()


def read_sse(f, n: int) -> list[tuple[str, dict]]:
    """The next ``n`` (id, record) events of an SSE stream (comments and retry lines skipped)."""
    out: list[tuple[str, dict]] = []
    ident, data = "", ""
    while len(out) < n:
        line = f.readline()
        assert line, "the event stream ended"
        line = line.decode().rstrip("\n")
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            out.append((ident, json.loads(data)))
            ident, data = "", ""
    return out


def test_server_sent_events_carry_every_record(web):
    s = socket.create_connection(("127.0.0.1", web.server.server_address[1]), timeout=5)
    s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{web.server.server_address[1]}\r\n\r\n".encode())
    f = s.makefile("rb")
    try:
        assert b"200" in f.readline()
        headers = {}
        while (line := f.readline()) != b"\r\n":
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        assert headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 5
        while not web.hub.clients:  # subscribed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for seq in range(5):
            publish(web, seq, ["a", "b"])
        got = read_sse(f, 5)
        assert [i for i, _ in got] == ["0", "1", "2", "3", "4"]
        assert [r["seq"] for _, r in got] == [0, 1, 2, 3, 4] and all(r["v"] == 1 for _, r in got)
    finally:
        s.close()


def test_a_slow_event_client_never_holds_the_worker():
    hub = Hub()
    client = hub.subscribe()  # never reads
    t0 = time.monotonic()
    for seq in range(5000):
        hub.publish_event({"v": 1, "src": "s", "seq": seq, "ts": 0.0, "faces": [], "latency_ms": 0.0})
    assert time.monotonic() - t0 < 2.0
    assert len(client.queue) == SSE_QUEUE and client.dropped == 5000 - SSE_QUEUE == hub.sse_dropped
    assert client.queue[-1][0] == 4999  # the newest kept
    hub.close()


def test_two_event_clients_unsubscribe_each_their_own():
    """Two clients with equal (empty) queues compared equal: removing one removed the other."""
    hub = Hub()
    a, b = hub.subscribe(), hub.subscribe()
    hub.unsubscribe(b)
    assert hub.clients == [a] and hub.clients[0] is a
    hub.unsubscribe(a)
    assert hub.clients == []


def test_an_evicted_source_leaves_the_page_and_frees_its_image() -> None:
    """Issue 11 case 10 with the page on: the hub kept one image per source id for ever (300 forged
    ids: +270 MiB). The display's eviction now reaches it through ``forget``."""
    hub = Hub()
    for i in range(300):
        hub.publish(f"forged{i}", np.zeros((480, 640, 3), np.uint8), {"src": f"forged{i}", "seq": 0})
    hub.publish("cam0", np.zeros((480, 640, 3), np.uint8), {"src": "cam0", "seq": 0})
    for i in range(300):
        hub.forget(f"forged{i}")
    assert set(hub.slots) == {"cam0"} and [s["src"] for s in hub.state()["sources"]] == ["cam0"]
