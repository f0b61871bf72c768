"""The whole pipeline with ``[bus] curve = true`` on loopback: keys from ``bus.keys``, the four real
stage processes, a real video; every frame arrives, the display exits 0, and every CURVE server
(with its ZAP handler thread) still stops within 2 s of SIGTERM."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bus.keys import STAGES, generate

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_pipeline_with_curve_delivers_every_frame(tmp_path, bus_toml, ports, stages, shared_data) -> None:
    keys = tmp_path / "keys"
    generate(keys, STAGES)
    events = tmp_path / "events.jsonl"
    video = shared_data / "media/videos/asl_book.mkv"
    cfg = bus_toml(
        {
            "bus": {"curve": True, "keys_dir": str(keys), "stats_interval_s": 60.0},
            "capture": {"sources": [{"id": "book", "uri": str(video), "realtime": False}], "eof_linger_s": 30.0},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(MODEL)},
            "display": {"endpoint": f"tcp://127.0.0.1:{ports['display']}", "web": "", "events": str(events)},
        }
    )
    procs = {s: stages.start(s, "--config", str(cfg)) for s in ("display", "classifier", "detector", "capture")}
    assert procs["display"].wait(120) == 0, procs["display"].text()[-3000:]
    log = procs["display"].text()
    assert "final book: read 109  in events 109  dropped 0  lost 0" in log, log[-3000:]
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert sorted(x["seq"] for x in lines) == list(range(109)) and all(len(x["faces"]) == 1 for x in lines)
    for s in ("capture", "detector", "classifier"):
        t0 = time.monotonic()
        assert procs[s].stop(5) == 0, procs[s].text()[-2000:]
        assert time.monotonic() - t0 < 2.0, s
