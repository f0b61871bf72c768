"""The dashboard and the recordings in headless Debian Chromium (Playwright), with real processes:

- a display process fed steady frames by the test (three faces: confident, uncertain, another
  label): each card's caption equals the caption drawn on the video (``overlay`` in /state.json,
  from display.draw.caption), the uncertain face says so, an ``EventSource`` on /events receives
  schema-valid records, timelines have a legend, pause freezes the page; screenshots at 1366x768
  and 390x844 go to tests/artifacts/ (no horizontal scrolling at phone width);
- the four stages on the one-face clip write an annotated video that Chromium plays
  (``readyState >= 2`` and ``currentTime`` advances).
Skips, saying why, without Chromium, Playwright, jsonschema or the shared media."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from bus.codec import Face, Frame, Message, encode
from tests.integration.test_event_streams import CLIP, FRAMES, MODEL, SCHEMA
from tests.integration.test_web_page import CHROMIUM, CHROMIUM_ARGS, wait_http, wait_js

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LABELS = ["angry", "happy", "neutral", "sad"]
FACES = [  # (label, probs, uncertain)
    ("happy", [0.05, 0.8, 0.1, 0.05], False),
    ("happy", [0.3, 0.4, 0.2, 0.1], True),  # top 40 % < 45 %: uncertain, the label kept
    ("neutral", [0.1, 0.1, 0.7, 0.1], False),
]
BELOW = 0.45


def frame(seq: int) -> Message:
    image = np.full((360, 640, 3), 235, np.uint8)  # a light wall: neutral's box must stay visible
    image[:, :, 0] = np.linspace(200, 250, 640, dtype=np.uint8)
    faces = [
        Face((40.0 + 200 * i, 90.0, 120.0, 140.0), 0.95, [], label, probs, unc)
        for i, (label, probs, unc) in enumerate(FACES)
    ]
    return Frame(
        src="cam0", seq=seq, ts=time.time(), live=True, faces=faces, labels=LABELS, uncertain_below=BELOW, pixels=image
    )


def feed(ctx: zmq.Context, port: int, stop: threading.Event) -> None:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, 500)
    s.connect(f"tcp://127.0.0.1:{port}")
    seq = 0
    try:
        while not stop.is_set():
            try:
                s.send_multipart(encode(frame(seq)))
                seq += 1
            except zmq.Again:
                pass
            stop.wait(0.08)
    finally:
        s.close(linger=0)


def browser_or_skip():
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright (driver only, no download)")


def test_dashboard_cards_match_the_overlay_and_events_stream(bus_toml, ports, stages, zctx):
    sync_api = browser_or_skip()
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema (a dev extra)")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    cfg = bus_toml(
        {
            "capture": {"sources": [{"id": "cam0", "uri": "0"}]},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"]},
            "display": {"endpoint": f"tcp://127.0.0.1:{ports['display']}", "web": f"127.0.0.1:{ports['web']}"},
        }
    )
    display = stages.start("display", "--config", str(cfg))
    wait_http(ports["web"], 20)
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(zctx, ports["display"], stop), daemon=True)
    feeder.start()
    errors: list[str] = []
    base = f"http://127.0.0.1:{ports['web']}/"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30000)
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(base, timeout=15000)
                wait_js(page, "document.querySelectorAll('.face').length === 3", 15)
                wait_js(page, "(document.querySelector('img.stream') || {}).naturalWidth > 0", 15)
                wait_js(page, "document.querySelectorAll('.timeline').length === 3", 15)
                time.sleep(1.0)  # a few seconds of timeline
                # one label per face: the card's caption is the overlay's (same frame or not: steady input)
                cards = page.locator(".face").evaluate_all("els => els.map(e => e.dataset.caption)")
                state = page.evaluate("fetch('state.json').then(r => r.json())")
                overlay = [f["overlay"] for f in state["sources"][0]["faces"]]
                assert cards == overlay, (cards, overlay)
                assert [c.split(" ", 1)[1] for c in cards] == ["happy 80%", "uncertain (happy?) 40%", "neutral 70%"]
                assert page.locator(".face.uncertain").count() == 1
                assert page.locator(".face.uncertain .label").text_content() == "uncertain (happy?)"
                assert page.locator(".face .which").first.text_content() == "smoothed over the track"
                # the bars are the caption's own vector
                widths = (
                    page.locator(".face").nth(1).locator(".bar-fill").evaluate_all("es => es.map(e => e.style.width)")
                )
                assert [float(w.rstrip("%")) for w in widths] == pytest.approx([30, 40, 20, 10], abs=0.1)
                # the video fills its column of a 1366-px window (it was 320 px wide and fixed)
                width = page.eval_on_selector("img.stream", "i => i.getBoundingClientRect().width")
                assert width > 0.5 * 1366, width
                assert page.locator(".legend .legend-item").count() == len(LABELS) + 1  # + uncertain
                assert "mostly" in page.locator(".timeline .summary").first.text_content()
                # EventSource on /events
                records = page.evaluate(
                    """() => new Promise((resolve, reject) => {
                        const es = new EventSource('events'); const got = [];
                        es.onmessage = (e) => { got.push(JSON.parse(e.data)); if (got.length === 5) { es.close(); resolve(got); } };
                        setTimeout(() => { es.close(); reject(new Error('only ' + got.length + ' events')); }, 10000);
                    })"""
                )
                assert len(records) == 5
                for r in records:
                    assert not list(validator.iter_errors(r)), r
                seqs = [r["seq"] for r in records]
                assert seqs == sorted(seqs) and len(set(seqs)) == 5
                page.screenshot(path=str(ARTIFACTS / "dashboard-1366x768.png"))
                # pause freezes the page; resume brings it back
                page.click("#pause")
                time.sleep(0.3)  # a render scheduled before the click has run
                before = page.locator(".caption").text_content()
                time.sleep(1.0)
                assert page.locator(".caption").text_content() == before
                assert page.locator("img.stream").is_hidden() and page.locator("canvas.frozen").is_visible()
                page.click("#pause")
                wait_js(page, f"document.querySelector('.caption').textContent !== {json.dumps(before)}", 5)
                # phone width: one column, nothing wider than the screen
                phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
                phone.goto(base, timeout=15000)
                wait_js(phone, "document.querySelectorAll('.face').length === 3", 15)
                wait_js(phone, "(document.querySelector('img.stream') || {}).naturalWidth > 0", 15)
                time.sleep(1.0)
                assert phone.evaluate("document.documentElement.scrollWidth") <= 390
                phone.screenshot(path=str(ARTIFACTS / "dashboard-390x844.png"), full_page=True)
            finally:
                browser.close()
    finally:
        stop.set()
        feeder.join(5)
    assert errors == []
    assert display.stop(2.5) == 0


def test_an_annotated_video_from_the_pipeline_plays_in_chromium(tmp_path, bus_toml, ports, stages, shared_data):
    sync_api = browser_or_skip()
    video = tmp_path / "out" / "annotated.mp4"
    cfg = bus_toml(
        {
            "bus": {"send_timeout_ms": 10000, "stats_interval_s": 60.0},
            "capture": {
                "sources": [{"id": "clip", "uri": str(shared_data / CLIP), "realtime": False}],
                "eof_linger_s": 30.0,
            },
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(MODEL)},
            "display": {"endpoint": f"tcp://127.0.0.1:{ports['display']}", "web": "", "video": str(video)},
        }
    )
    procs = {s: stages.start(s, "--config", str(cfg)) for s in ("display", "classifier", "detector", "capture")}
    assert procs["display"].wait(150) == 0, procs["display"].text()[-3000:]
    written = sorted((tmp_path / "out").iterdir())
    assert len(written) == 1 and written[0].suffix in (".mp4", ".webm"), written
    import cv2

    cap = cv2.VideoCapture(str(written[0]))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == FRAMES
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(written[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30000)
            try:
                page = browser.new_page()
                url = f"http://127.0.0.1:{server.server_address[1]}/{written[0].name}"
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/", timeout=15000)
                page.evaluate(
                    "url => { const v = document.createElement('video'); v.id = 'v'; v.muted = true; v.src = url;"
                    " document.body.append(v); v.play().catch(e => { window.__err = String(e); }); }",
                    url,
                )
                wait_js(
                    page,
                    "document.getElementById('v').readyState >= 2 || !!window.__err || !!document.getElementById('v').error",
                    20,
                )
                state = page.evaluate(
                    "() => { const v = document.getElementById('v'); return {rs: v.readyState, err: v.error && v.error.code,"
                    " perr: window.__err || null, w: v.videoWidth, d: v.duration}; }"
                )
                assert state["err"] is None and state["perr"] is None and state["rs"] >= 2, state
                assert state["w"] == 480 and state["d"] > 1.0, state
                wait_js(page, "document.getElementById('v').currentTime > 0.5", 15)  # it plays
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    for s in ("capture", "detector", "classifier"):
        procs[s].stop()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
