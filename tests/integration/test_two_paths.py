"""The two paths with real processes (issue 15): the detector sends each frame's crops to the
classifier and the frame itself to the display, which joins them by source and seq.

asl_signer_concat10.mp4 (648 frames, one face in each): every frame is in the events with its
emotion; a display that draws nothing gets every frame without pixels (a thumbnail for the scene
cuts instead) unless it shares memory with the detector (one host: the references cost nothing), one
that draws (a video) with them. With the classifier killed (SIGKILL) mid-run, the frames it held are shown without
emotions (``no_emotions: join_timeout``) after ``[display] join_wait_ms``, every later one too
(``send``: no classifier takes its crops), and the run ends by itself with an exact account.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from emostream.launch import free_port
from tests.integration.managers import wait_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
FINAL = re.compile(r"final (\S+): read (\d+)  in events (\d+)  dropped (.+?)  lost (\d+)")
GOT = re.compile(r"final frames shown: with pixels (\d+), thumbnail only (\d+), neither (\d+)")
FRAMES = 648
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def config(
    bus_toml,
    ports,
    shared_data: Path,
    events: Path,
    fps: float = 0.0,
    copies: int = 1,
    drawn: str = "",
    wait_ms: int = 500,
    shm_slots: int = 16,
):
    video = shared_data / "media/videos/asl_signer_concat10.mp4"
    extra = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2 * (copies - 1))]
    source = {"id": "asl", "uri": str(video), "realtime": fps > 0, **({"fps": fps} if fps else {})}
    return bus_toml(
        {
            "bus": {"hwm": 4, "send_timeout_ms": 300, "stats_interval_s": 1.0, "shm_slots": shm_slots},
            "capture": {"sources": [source], "eof_linger_s": 30.0},
            "detector": {"endpoints": [f"tcp://127.0.0.1:{ports['detector']}", *extra[: copies - 1]]},
            "classifier": {
                "endpoints": [f"tcp://127.0.0.1:{ports['classifier']}", *extra[copies - 1 :][: copies - 1]],
                "model": str(MODEL),
            },
            "display": {
                "endpoint": f"tcp://127.0.0.1:{ports['display']}",
                "web": "",
                "video": drawn,  # "": the display draws nothing
                "events": str(events),
                "drain_timeout_s": 3.0,
                "join_wait_ms": wait_ms,
            },
        }
    )


def records(events: Path) -> list[dict]:
    if not events.exists():
        return []
    lines = events.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def carried(text: str) -> tuple[int, int, int]:
    """Frames the display showed with pixels, with a thumbnail only, with neither."""
    found = GOT.findall(text)
    assert found, text[-3000:]
    pixels, thumb, neither = found[-1]
    return int(pixels), int(thumb), int(neither)


def final(text: str) -> tuple[int, int, str, int]:
    found = FINAL.findall(text)
    assert found, text[-3000:]
    _, read, shown, dropped, lost = found[-1]
    return int(read), int(shown), dropped, int(lost)


@pytest.mark.parametrize(("copies", "shm_slots"), [(1, 16), (2, 0)])
def test_every_frame_is_joined_with_its_emotion(
    tmp_path, bus_toml, ports, shared_data, stages, copies: int, shm_slots: int
) -> None:
    """Also with two detector and two classifier copies (each frame's halves then meet at the
    display from different processes). The display draws nothing: with shared memory on this host
    it gets the frames' references (its own thumbnails), without it a thumbnail each, no pixels."""
    events = tmp_path / "events.jsonl"
    cfg = config(bus_toml, ports, shared_data, events, copies=copies, shm_slots=shm_slots)
    procs = {s: stages.start(s, "--config", str(cfg)) for s in ("display", "classifier", "detector", "capture")}
    for i in range(1, copies):
        for s in ("classifier", "detector"):
            stages.start(s, "--config", str(cfg), "--instance", str(i), instance=i)
    assert procs["display"].wait(180) == 0, procs["display"].tail()
    text = procs["display"].text()
    assert final(text) == (FRAMES, FRAMES, "0", 0), text[-3000:]
    recs = records(events)
    assert sorted(r["seq"] for r in recs) == list(range(FRAMES))
    for r in recs:
        assert "no_emotions" not in r, r
        assert len(r["faces"]) == 1 and r["faces"][0]["label"] is not None, r
    det = procs["detector"].text()
    if shm_slots:  # references in shared memory, on two paths all the same
        assert carried(text) == (FRAMES, 0, 0), text[-3000:]
        assert ", frames -> tcp://127.0.0.1" in det, det[-2000:]  # two paths (one path has no such target)
    else:  # it draws nothing: no pixels came, thumbnails did
        assert carried(text) == (0, FRAMES, 0), text[-3000:]
        assert "frames without pixels -> tcp://127.0.0.1" in det, det[-2000:]  # it really ran two paths
    for p in stages.procs:  # every copy took its share
        if p.stage in ("classifier", "detector"):
            assert p.stop(5) == 0
            assert re.search(r"final stats: .* frames [1-9]", p.text()), p.tail()
    lat = sorted(r["latency_ms"] for r in recs)
    print(f"\n{len(recs)} frames joined; latency p50 {lat[len(lat) // 2]} ms, p99 {lat[int(len(lat) * 0.99)]} ms")


def test_a_display_that_draws_gets_the_pixels(tmp_path, bus_toml, ports, shared_data, stages) -> None:
    events, video = tmp_path / "events.jsonl", tmp_path / "annotated.mp4"
    cfg = config(bus_toml, ports, shared_data, events, drawn=str(video), wait_ms=10_000)  # a slow display
    procs = {s: stages.start(s, "--config", str(cfg)) for s in ("display", "classifier", "detector", "capture")}
    assert procs["display"].wait(180) == 0, procs["display"].tail()
    text = procs["display"].text()
    read, shown, dropped, lost = final(text)  # encoding the video is slow: capture may drop (ring_full)
    n_drops = sum(int(v) for v in re.findall(r"=(\d+)", dropped))
    assert read == FRAMES and lost == 0 and shown + n_drops == FRAMES and shown > FRAMES // 2, text[-3000:]
    assert carried(text) == (shown, 0, 0), text[-3000:]
    assert all(len(r["faces"]) == 1 and r["faces"][0]["label"] is not None for r in records(events))
    det = procs["detector"].text()
    assert "frames -> tcp://127.0.0.1" in det, det[-2000:]
    assert any(p.stat().st_size > 0 for p in tmp_path.glob("annotated.*")), list(tmp_path.iterdir())


def test_a_killed_classifier_leaves_frames_shown_without_emotions(
    tmp_path, bus_toml, ports, shared_data, stages
) -> None:
    events = tmp_path / "events.jsonl"
    cfg = config(bus_toml, ports, shared_data, events, fps=60.0)
    procs = {s: stages.start(s, "--config", str(cfg)) for s in ("display", "classifier", "detector", "capture")}
    display = procs["display"]
    wait_for("100 frames in the events", lambda: len(records(events)) >= 100, display.text, 120)
    procs["classifier"].send_signal(signal.SIGSTOP)  # requests queue up in its socket...
    time.sleep(1.0)
    procs["classifier"].send_signal(signal.SIGKILL)  # ...and die with it
    assert display.wait(120) == 0, display.tail()  # the run ends by itself
    text = display.text()
    read, shown, dropped, lost = final(text)
    recs = records(events)
    seqs = sorted(r["seq"] for r in recs)
    assert read == FRAMES and lost == 0, text[-3000:]
    assert len(seqs) == len(set(seqs)) == shown, "a frame twice in the events"
    n_drops = sum(int(v) for v in re.findall(r"=(\d+)", dropped))
    assert shown + n_drops == FRAMES, text[-3000:]
    bare = [r for r in recs if "no_emotions" in r]
    assert bare, "no frame shown without emotions after the classifier died"
    for r in bare:
        assert r["faces"] and all(f["label"] is None for f in r["faces"]), r
        assert r["no_emotions"] in {"join_timeout", "join_full", "send"}, r
    labelled = [r for r in recs if "no_emotions" not in r]
    assert all(f["label"] is not None for r in labelled for f in r["faces"])
    reasons = sorted({r["no_emotions"] for r in bare})
    assert "join_timeout" in reasons, reasons  # the frames whose crops it held
    print(f"\n{len(labelled)} frames with emotions, {len(bare)} without ({reasons}), dropped {dropped}")
