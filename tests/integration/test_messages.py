"""Messages that named the wrong cause (issue 11 case 17), checked on the real stages:

- a web page port already taken: the display said ``Address already in use`` without the address;
- a run that ends normally: a frame still on its way when capture removed its ring was dropped as
  ``ring ... is not on this host`` (the ring was gone, not on another host).

(``model sidecar not found`` for a missing ``.tflite``: tests/integration/test_classifier_display.py
and test_capture_detector.py.)
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
pytestmark = pytest.mark.timeout(120)


def test_a_taken_web_port_is_named_in_the_one_line(bus_toml, ports, stages) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = bus_toml({"display": {"endpoint": f"tcp://127.0.0.1:{ports['display']}", "web": f"127.0.0.1:{port}"}})
        p = stages.start("display", "--config", str(cfg))
        assert p.wait(30) == 2
    assert p.text().strip().splitlines() == [
        f"display: cannot start a sink: [display] web 127.0.0.1:{port}: Address already in use"
    ]


def test_a_one_image_run_that_ends_at_once_loses_nothing_and_blames_no_other_host(
    tmp_path, bus_toml, ports, stages
) -> None:
    """capture exits right after its eos (eof_linger_s = 0): it used to remove the ring before the
    display had opened it, and the display dropped the frame as 'not on this host'."""
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (960, 1280, 3), np.uint8))
    events = tmp_path / "events.jsonl"
    cfg = bus_toml(
        {
            "bus": {"stats_interval_s": 60.0},
            "capture": {"sources": [{"id": "img", "uri": str(image)}], "eof_linger_s": 0.0},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(MODEL)},
            "display": {"endpoint": f"tcp://127.0.0.1:{ports['display']}", "web": "", "events": str(events)},
        }
    )
    display = stages.start("display", "--config", str(cfg))
    # the detector last: capture's frame waits for it, then meets its first (slow) inference while
    # capture, done at once, removes the ring
    others = [stages.start(s, "--config", str(cfg)) for s in ("classifier", "capture", "detector")]
    assert display.wait(60) == 0, display.text()
    text = "".join(p.text() for p in (display, *others))
    assert not re.search(r"not on this host|is gone|shm_missing", text), text[-3000:]
    assert "final img: read 1  in events 1  dropped 0  lost 0" in display.text()
    assert [json.loads(line)["seq"] for line in events.read_text().splitlines()] == [0]
