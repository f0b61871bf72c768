"""Real classifier and display processes on random loopback ports, fed by the test's own PUSH
socket with synthetic detector messages; the display must account for every frame and exit 0."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from bus.codec import Eos, Face, Frame, Message, encode

pytestmark = pytest.mark.timeout(60)
LABELS = {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}


def config(bus_toml, ports, model, **display):
    return bus_toml(
        {
            "bus": {"hwm": 4, "send_timeout_ms": 2000, "stats_interval_s": 1.0},
            "capture": {"sources": [{"id": "clip", "uri": "clip.mp4", "realtime": False}]},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}"]},
            "classifier": {"endpoints": [f"tcp://127.0.0.1:{ports['classifier']}"], "model": str(model)},
            "display": {"endpoint": f"tcp://127.0.0.1:{ports['display']}", "web": "", "events": "", **display},
        },
    )


def pusher(ctx: zmq.Context, port: int) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, 15000)  # the stage may still be starting: IMMEDIATE waits for it
    s.setsockopt(zmq.IMMEDIATE, 1)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def detector_frame(seq: int, n_faces: int, rng: np.random.Generator, size: int = 48) -> Message:
    faces = [Face((20.0 + 50 * i, 30.0, 40.0, 40.0), 0.9, [(30.0, 40.0)] * 6) for i in range(n_faces)]
    return Frame(
        src="clip",
        seq=seq,
        ts=time.time(),
        faces=faces,
        crops=rng.integers(0, 256, (n_faces, size, size, 1), dtype=np.uint8) if n_faces else None,
        t={"capture": time.time(), "detector": time.time()},
        pixels=rng.integers(0, 256, (120, 200, 3), dtype=np.uint8),
    )


def test_classifier_and_display_account_for_every_frame(tmp_path, bus_toml, ports, stages, zctx, tiny_int8):
    events = tmp_path / "events.jsonl"
    cfg = config(bus_toml, ports, tiny_int8, events=str(events), drain_timeout_s=10.0)
    display = stages.start("display", "--config", str(cfg))
    classifier = stages.start("classifier", "--config", str(cfg))
    out = pusher(zctx, ports["classifier"])
    rng = np.random.default_rng(0)
    faces_per_frame = {seq: seq % 4 for seq in range(20)}  # 0..3 faces, including frames with none
    for seq, n in faces_per_frame.items():
        out.send_multipart(encode(detector_frame(seq, n, rng)))
    out.send_multipart(encode(detector_frame(20, 2, rng, size=32)))  # crops for another model: a drop marker
    out.send_multipart(encode(Eos(src="clip", seq=22, ts=time.time(), frames=22, dropped=1)))

    assert display.wait(30) == 0
    log = display.text()
    assert "final clip: read 22  in events 20  dropped capture=1 crop_shape=1  lost 0" in log, log
    assert classifier.stop(2.5) == 0  # SIGTERM: out within the 2 s budget
    assert "final stats" in classifier.text()

    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert sorted(x["seq"] for x in lines) == list(range(20))
    for x in lines:
        assert set(x) == {"v", "src", "seq", "ts", "faces", "latency_ms", "uncertain_below"}
        assert x["src"] == "clip" and x["latency_ms"] >= 0
        assert len(x["faces"]) == faces_per_frame[x["seq"]]
        for f in x["faces"]:
            assert f["label"] in LABELS and set(f["probs"]) == LABELS
            assert f["label"] == max(f["probs"], key=f["probs"].get)
            assert sum(f["probs"].values()) == pytest.approx(1.0, abs=1e-3)
            assert len(f["box"]) == 4


def test_display_counts_lost_frames_and_garbage_then_exits(tmp_path, bus_toml, ports, stages, zctx, tiny_int8):
    events = tmp_path / "events.jsonl"
    cfg = config(bus_toml, ports, tiny_int8, events=str(events), drain_timeout_s=1.0)
    display = stages.start("display", "--config", str(cfg))
    out = pusher(zctx, ports["display"])
    out.send_multipart([b"not msgpack at all"])
    out.send_multipart([b"\x81\xa1v\x09"])  # msgpack, wrong version
    for seq in range(3):
        msg = Frame(
            src="clip",
            seq=seq,
            ts=time.time(),
            labels=["a", "b"],
            faces=[Face((1, 1, 9, 9), 0.8, [], "a", [0.9, 0.1])],
            pixels=np.zeros((40, 60, 3), np.uint8),
        )
        out.send_multipart(encode(msg))
    out.send_multipart(encode(Eos(src="clip", seq=9, ts=time.time(), frames=5, dropped=0)))
    t0 = time.monotonic()
    assert display.wait(20) == 0
    assert time.monotonic() - t0 >= 0.9  # waited for the stragglers
    log = display.text()
    assert "final clip: read 5  in events 3  dropped 0  lost 2" in log, log
    assert "garbage=2" in log
    assert len(events.read_text().splitlines()) == 3


def test_startup_errors_are_one_line_and_exit_2(tmp_path, bus_toml, ports, stages):
    cfg = config(bus_toml, ports, tmp_path / "missing.tflite")
    p = stages.start("classifier", "--config", str(cfg))
    assert p.wait(20) == 2
    # issue 11 case 17: it said "model sidecar not found: missing.json" when the model is what is missing
    assert p.text().strip().splitlines() == [f"classifier: model file not found: {tmp_path / 'missing.tflite'}"]
