"""The live web page: a small HTTP server on ``[display] web`` (loopback by default).

Serves only its own static files (``static/index.html``, ``app.js``, ``style.css``, read once at
start-up and looked up by exact name: no path ever reaches the file system), ``/state.json`` (the
latest frame per source: its events record, plus labels, colours and per face ``overlay``, the
caption drawn on the video; plus fps),
``/stream.mjpg[?src=ID]`` (multipart MJPEG of the latest annotated frame of one source) and
``/events`` (Server-Sent Events: every frame's events record, :mod:`display.publish`'s JSON, as one
``data:`` line with the frame's ``seq`` as ``id``; usable from a browser's ``EventSource``).

MJPEG design: the worker only *publishes* the newest annotated image into a per-source slot
guarded by a Condition (a reference swap and a notify, never a wait). Each streaming client has
its own thread that waits on the Condition for a newer version than it last sent, JPEG-encodes it
outside the lock (once per version, shared by all clients) and writes it with a socket timeout.
A slow client therefore skips frames instead of queueing them, memory is one image per source,
and the worker loop never blocks on the network. At most ``MAX_STREAMS`` clients stream at once;
when all slots are taken, a new viewer evicts the one that has not taken a frame for the longest,
if that is over ``IDLE_EVICT_S`` (an idle or stalled viewer: its socket's small send buffer,
``STREAM_SNDBUF``, fills within a few frames, and a write blocked for ``WRITE_TIMEOUT_S`` drops it).

SSE design: the worker appends the record's JSON to each client's queue of ``SSE_QUEUE`` records
(the oldest is dropped and counted when a client does not keep up), never waiting; each client's
thread writes its queue out. At most ``MAX_EVENT_CLIENTS`` at once; a comment line every
``SSE_KEEPALIVE_S`` notices a client that went away.

Robustness: a frame is ignored only when it is a late one (at most ``LATE_SEQS`` behind the shown
one, from a parallel detector/classifier copy); a seq far behind (a restarted source, or a bogus
huge seq shown before) is taken, so one bad seq cannot freeze the page. Non-finite numbers become
``null`` (:func:`display.publish.clean`), so ``/state.json`` is always valid JSON.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from bus.codec import Frame
from display.draw import caption, hex_colour
from display.publish import dumps
from display.track import Tracked

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC = {  # URL path -> (file name, content type): the whole whitelist
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MAX_STREAMS = 8
CLIENT_TIMEOUT_S = 10.0  # a client that reads nothing for this long is dropped
WRITE_TIMEOUT_S = 5.0  # a stream write (MJPEG, SSE) blocked this long drops the client
IDLE_EVICT_S = 2.0  # a viewer that took no frame for this long loses its slot to a new viewer
STREAM_SNDBUF = 64 * 1024  # bytes: a viewer that stops reading blocks our writes within a few frames
MAX_EVENT_CLIENTS = 16
SSE_QUEUE = 256  # records queued per SSE client before its oldest is dropped
SSE_KEEPALIVE_S = 5.0
DRAIN_S = 2.0  # at close, event clients get this long to write out what is queued for them
LATE_SEQS = 256  # a frame this many seqs behind the shown one is late (ignored); further behind: a restart
JPEG_QUALITY = 80
FPS_WINDOW_S = 2.0


@dataclass(eq=False)  # identity: two clients with equal queues are still two clients
class EventClient:
    """One SSE client's queue of JSON records (bounded: the oldest goes first)."""

    queue: collections.deque[tuple[int, bytes]]  # (seq, JSON record)
    dropped: int = 0


@dataclass(eq=False)
class Viewer:
    """One MJPEG client: its connection (to evict it) and when it last took a frame."""

    conn: socket.socket
    progress: float


@dataclass
class Slot:
    version: int
    image: np.ndarray
    jpeg: bytes | None = None


class Hub:
    """Latest annotated image and state per source, shared by the worker and the HTTP threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, jpeg_quality: int = JPEG_QUALITY):
        self.cond = threading.Condition()
        self.clock, self.quality = clock, jpeg_quality
        self.version = 0
        self.slots: dict[str, Slot] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self.times: collections.deque[float] = collections.deque(maxlen=1024)
        self.clients: list[EventClient] = []
        self.sse_dropped = 0
        self.closed = False

    def publish(self, src: str, image: np.ndarray | None, state: dict[str, Any]) -> None:
        """Worker side: never waits. A late frame (at most ``LATE_SEQS`` behind the shown one) is ignored."""
        with self.cond:
            shown = self.states.get(src)
            if shown is not None and 0 < shown["seq"] - state["seq"] <= LATE_SEQS:
                return
            self.states[src] = state
            self.times.append(self.clock())
            if image is not None:
                self.version += 1
                self.slots[src] = Slot(self.version, image)
            self.cond.notify_all()

    def publish_event(self, record: dict[str, Any]) -> None:
        """Worker side: queue the record for every SSE client (JSON made once, only when one listens)."""
        if not self.clients:
            return
        data, seq = dumps(record), int(record.get("seq", 0))
        with self.cond:
            for c in self.clients:
                if len(c.queue) >= SSE_QUEUE:
                    c.queue.popleft()
                    c.dropped += 1
                    self.sse_dropped += 1
                c.queue.append((seq, data))
            self.cond.notify_all()

    def forget(self, src: str) -> None:
        """Worker side: drop a source's image and state (the display evicted it: issue 11 case 10)."""
        with self.cond:
            self.slots.pop(src, None)
            self.states.pop(src, None)
            self.cond.notify_all()

    def subscribe(self) -> EventClient:
        c = EventClient(collections.deque())
        with self.cond:
            self.clients.append(c)
        return c

    def unsubscribe(self, c: EventClient) -> None:
        with self.cond:
            self.clients.remove(c)
            self.cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """After :meth:`close`: wait (bounded) until every SSE client has written its queue and left."""
        with self.cond:
            return self.cond.wait_for(lambda: not self.clients, timeout)

    def wait_events(self, c: EventClient, timeout: float) -> list[tuple[int, bytes]]:
        """Client side: the records queued for ``c`` (empty after ``timeout`` or on close)."""
        with self.cond:
            self.cond.wait_for(lambda: self.closed or bool(c.queue), timeout)
            out = list(c.queue)
            c.queue.clear()
            return out

    def fps(self) -> float:
        with self.cond:
            now = self.clock()
            recent = [t for t in self.times if now - t <= FPS_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(1e-6, recent[-1] - recent[0])

    def state(self) -> dict[str, Any]:
        fps = self.fps()
        with self.cond:
            return {"fps": round(fps, 1), "sources": list(self.states.values())}

    def _slot(self, src: str | None) -> Slot | None:
        if src is None:
            return next(iter(self.slots.values()), None)
        return self.slots.get(src)

    def wait_frame(self, src: str | None, after: int, timeout: float) -> tuple[int, bytes] | None:
        """Client side: the JPEG of the newest frame with version > ``after``, or None on timeout/close."""
        with self.cond:

            def ready() -> bool:
                s = self._slot(src)
                return self.closed or (s is not None and s.version > after)

            if not self.cond.wait_for(ready, timeout) or self.closed:
                return None
            slot = self._slot(src)
            assert slot is not None
            if slot.jpeg is not None:
                return slot.version, slot.jpeg
        ok, buf = cv2.imencode(".jpg", slot.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return None
        slot.jpeg = buf.tobytes()  # a race encodes twice at worst; both results are equal
        return slot.version, slot.jpeg

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, host: str, port: int, hub: Hub, log: logging.Logger, clock: Callable[[], float] = time.monotonic
    ):
        self.hub, self.log, self.clock = hub, log, clock
        self.static = {
            route: (STATIC_DIR.joinpath(name).read_bytes(), ctype) for route, (name, ctype) in STATIC.items()
        }
        self.viewers: list[Viewer] = []
        self.viewers_lock = threading.Lock()
        self.event_slots = threading.BoundedSemaphore(MAX_EVENT_CLIENTS)
        bare = host.strip("[]")
        self.address_family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        try:
            super().__init__((bare, port), Handler)
        except OSError as e:  # "Address already in use" alone does not say which address
            raise OSError(f"[display] web {host}:{port}: {e.strerror}") from None
        # Allowed Host headers on loopback (a DNS-rebinding page cannot read the state); None = any.
        self.hosts: set[str] | None = None
        if bare.startswith(("127.", "::1")) or bare == "localhost":
            bound = self.server_address[1]
            self.hosts = {h for name in (*LOOPBACK_NAMES, host) for h in (name, f"{name}:{bound}")}

    def admit(self, conn: socket.socket) -> Viewer | None:
        """A stream slot for a new viewer, evicting the longest-idle one (idle over ``IDLE_EVICT_S``)
        when all are taken; None: every viewer is taking frames, no room."""
        now = self.clock()
        with self.viewers_lock:
            if len(self.viewers) >= MAX_STREAMS:
                idle = min(self.viewers, key=lambda v: v.progress)
                if now - idle.progress < IDLE_EVICT_S:
                    return None
                self.viewers.remove(idle)
                self.log.info("web: an idle stream viewer (%.0f s without a frame) made room", now - idle.progress)
                with contextlib.suppress(OSError):
                    idle.conn.shutdown(socket.SHUT_RDWR)  # its blocked write (if any) fails now
            v = Viewer(conn, now)
            self.viewers.append(v)
            return v

    def leave(self, v: Viewer) -> None:
        with self.viewers_lock, contextlib.suppress(ValueError):
            self.viewers.remove(v)


class Handler(BaseHTTPRequestHandler):
    server_version = "emostream"
    sys_version = ""
    timeout = CLIENT_TIMEOUT_S

    @property
    def srv(self) -> Server:
        return cast(Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        self.srv.log.debug("web: %s " + format, self.address_string(), *args)

    def end_headers(self) -> None:
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        super().end_headers()

    def do_HEAD(self) -> None:
        self.route(head=True)

    def do_GET(self) -> None:
        self.route(head=False)

    def send_body(self, code: int, body: bytes, ctype: str, head: bool, cache: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache" if cache else "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def route(self, head: bool) -> None:
        if self.srv.hosts is not None and self.headers.get("Host", "") not in self.srv.hosts:
            self.send_body(403, b"forbidden host\n", "text/plain; charset=utf-8", head)
            return
        url = urlsplit(self.path)
        if url.path == "/state.json":
            self.send_body(200, dumps(self.srv.hub.state()), "application/json", head)
        elif url.path == "/events":
            self.events(head)
        elif url.path == "/stream.mjpg":
            src = parse_qs(url.query).get("src", [None])[0]
            self.stream(src, head)
        elif url.path == "/favicon.ico":  # browsers ask for one; no content, rather than a 404 per visit
            self.send_body(204, b"", "image/x-icon", head=True)
        elif url.path in self.srv.static:
            body, ctype = self.srv.static[url.path]
            self.send_body(200, body, ctype, head, cache=True)
        else:
            self.send_body(404, b"not found\n", "text/plain; charset=utf-8", head)

    def stream(self, src: str | None, head: bool) -> None:
        viewer = self.srv.admit(self.connection)
        if viewer is None:
            self.send_body(503, b"too many viewers\n", "text/plain; charset=utf-8", head)
            return
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            self.begin_stream("multipart/x-mixed-replace; boundary=frame")
            if head:
                return
            hub, last = self.srv.hub, 0
            while not hub.closed and viewer in self.srv.viewers:
                got = hub.wait_frame(src, last, timeout=1.0)
                if got is None:
                    if self.client_gone():
                        return
                    continue
                last, jpeg = got
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)
                )
                viewer.progress = self.srv.clock()
        except OSError as e:  # the viewer went away, stopped reading, or was evicted
            self.srv.log.debug("web: stream client %s gone: %s", self.address_string(), e)
        finally:
            self.srv.leave(viewer)
            self.close_connection = True

    def begin_stream(self, content_type: str) -> None:
        """Headers of an endless response (MJPEG or server-sent events); a viewer that stops reading
        for WRITE_TIMEOUT_S is let go."""
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def events(self, head: bool) -> None:
        if not self.srv.event_slots.acquire(blocking=False):
            self.send_body(503, b"too many event clients\n", "text/plain; charset=utf-8", head)
            return
        client = self.srv.hub.subscribe()
        try:
            self.begin_stream("text/event-stream; charset=utf-8")
            if head:
                return
            self.wfile.write(b"retry: 2000\n\n")
            hub, quiet = self.srv.hub, self.srv.clock()
            while True:
                records = hub.wait_events(client, timeout=1.0)
                for seq, data in records:
                    self.wfile.write(b"id: %d\ndata: %s\n\n" % (seq, data))
                if hub.closed and not records:  # closing: what was queued went out first
                    return
                if records:
                    quiet = self.srv.clock()
                elif self.srv.clock() - quiet >= SSE_KEEPALIVE_S:
                    if self.client_gone():
                        return
                    self.wfile.write(b": keepalive\n\n")
                    quiet = self.srv.clock()
        except OSError as e:
            self.srv.log.debug("web: event client %s gone: %s", self.address_string(), e)
        finally:
            self.srv.hub.unsubscribe(client)
            self.srv.event_slots.release()
            self.close_connection = True
            if client.dropped:
                self.srv.log.info("web: a slow event client missed %d record(s)", client.dropped)

    def client_gone(self) -> bool:
        """While no frame comes, notice a viewer that hung up (its socket reads EOF), freeing its slot."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def _tracked(face: dict[str, Any]) -> Tracked | None:
    if "track" not in face:
        return None
    smoothed = face.get("smoothed") or None
    return Tracked(face["track"], None if smoothed is None else list(smoothed.values()), face.get("smoothed_label"))


def state_of(msg: Frame, event: dict[str, Any]) -> dict[str, Any]:
    """What ``/state.json`` shows of a frame: its events record plus labels, colours and, per face,
    ``overlay``: the caption drawn on the video (:func:`display.draw.caption`), so the page and tests
    can check that the card says the same."""
    labels = list(msg.labels or [])
    faces = []
    for face, rec in zip(msg.faces, event["faces"], strict=True):
        cap = caption(face, labels, _tracked(rec), msg.uncertain_below)
        faces.append(dict(rec, colour=hex_colour(rec["label"]), overlay=cap.text))
    return {**event, "faces": faces, "labels": labels, "colours": {lab: hex_colour(lab) for lab in labels}}


class WebSink:
    """Starts the page's server in a daemon thread; ``write`` publishes into the hub."""

    name = "web"
    wants_image = True

    def __init__(self, address: str, log: logging.Logger):
        host, _, port = address.rpartition(":")
        self.hub = Hub()
        self.server = Server(host, int(port), self.hub, log)  # OSError when the port is taken
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="web", daemon=True
        )
        self.thread.start()
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        log.info("live page at %s", self.url)

    def write(self, msg: Frame, image: np.ndarray | None, event: dict[str, Any]) -> None:
        self.hub.publish(msg.src, image, state_of(msg, event))
        self.hub.publish_event(event)

    def forget(self, src: str) -> None:
        self.hub.forget(src)

    def close(self) -> None:
        if self.hub.sse_dropped:
            self.server.log.info("final web: slow event clients missed %d record(s)", self.hub.sse_dropped)
        self.hub.close()
        if not self.hub.drain(DRAIN_S):
            self.server.log.warning("web: %d event client(s) still writing at close", len(self.hub.clients))
        self.server.shutdown()
        self.server.server_close()
