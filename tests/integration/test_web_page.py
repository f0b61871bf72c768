"""The live page in a real browser: a display process with the web sink, fed frames by the test,
loaded in headless Debian Chromium driven by Playwright. Skips when either is missing."""

from __future__ import annotations

import http.client
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from bus.codec import Face, Frame, Message, encode

pytestmark = pytest.mark.timeout(90)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EVIL = "<script>window.__xss=1</script><img src=x onerror=__xss=2>"  # <= 64 chars: the codec limit
LABELS = ["angry", "happy", EVIL]
FACES = [("happy", [0.1, 0.7, 0.2]), (EVIL, [0.05, 0.15, 0.8])]


def frame(seq: int) -> Message:
    image = np.zeros((240, 320, 3), np.uint8)
    image[:, :, 1] = np.linspace(40, 200, 320, dtype=np.uint8)
    image[:, :, 2] = (seq * 10) % 256
    faces = [
        Face((30.0 + 150 * i, 60.0, 100.0, 110.0), 0.95, [], label, probs) for i, (label, probs) in enumerate(FACES)
    ]
    return Frame(src="cam0", seq=seq, ts=time.time(), live=True, faces=faces, labels=LABELS, pixels=image)


def wait_http(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/state.json")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the web page did not come up on port {port} within {timeout_s} s")


def wait_js(page, expression: str, timeout_s: float) -> None:
    """Poll ``expression`` with page.evaluate: wait_for_function would need 'unsafe-eval', which our CSP forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {expression}")
        time.sleep(0.1)


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
            stop.wait(0.1)
    finally:
        s.close(linger=0)


def test_live_page_shows_video_labels_and_bars(bus_toml, ports, stages, zctx):
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (driver only, no download)")
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
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30000)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 700})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
                page.goto(f"http://127.0.0.1:{ports['web']}/", timeout=15000)
                wait_js(page, "document.querySelectorAll('.face').length === 2", 15)
                wait_js(page, "(document.querySelector('img.stream') || {}).naturalWidth > 0", 15)
                assert page.eval_on_selector("img.stream", "i => [i.naturalWidth, i.naturalHeight]") == [320, 240]
                assert page.locator(".face .label").all_text_contents() == [label for label, _ in FACES]
                for i, (_label, probs) in enumerate(FACES):
                    card = page.locator(".face").nth(i)
                    assert card.locator(".bar").count() == len(LABELS)
                    assert card.locator(".bar-label").all_text_contents() == LABELS
                    widths = card.locator(".bar-fill").evaluate_all("els => els.map(e => e.style.width)")
                    assert [float(w.rstrip("%")) for w in widths] == pytest.approx([100 * p for p in probs], abs=0.05)
                assert page.evaluate("window.__xss") is None  # the label was shown, never run
                assert page.locator("script").count() == 1  # only app.js
                assert page.locator("img").count() == 1  # the label's <img onerror> is text, not an element
                wait_js(page, "document.getElementById('fps').textContent !== '0.0 fps'", 5)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
            finally:
                browser.close()
    finally:
        stop.set()
        feeder.join(5)
    assert errors == []  # no CSP violations, script errors or dialogs
    assert display.stop(2.5) == 0
    assert "final cam0: read " in display.text()  # a live source: no eos, no total
