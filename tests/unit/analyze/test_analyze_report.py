"""Analysis reports (tables, summary, plot) and ``python -m analyze``'s pure parts and errors."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import tomllib
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
import zmq
from click.testing import CliRunner

from analyze import pipeline as an
from analyze.__main__ import main
from analyze.report import (
    ReportError,
    changes,
    frame_rows,
    require_matplotlib,
    segments,
    suspected_switches,
    track_summary,
    write_reports,
)
from bus.config import Config, display_pixels, parse
from bus.runtime import Stats
from display.worker import Display
from emostream.launch import Launcher, toml_text

LABELS = ["sad", "happy"]


def rec(seq, *faces, src="clip"):
    return {"src": src, "seq": seq, "ts": 1.0, "latency_ms": 1.0, "faces": list(faces)}


def face(track, x, raw, smoothed):
    label = LABELS[int(np.argmax(raw))]
    return {
        "box": [x, 10.0, 40.0, 40.0],
        "score": 0.9,
        "label": label,
        "probs": dict(zip(LABELS, raw, strict=True)),
        "track": track,
        "smoothed": dict(zip(LABELS, smoothed, strict=True)),
        "smoothed_label": LABELS[int(np.argmax(smoothed))],
    }


H, S = [0.2, 0.8], [0.7, 0.3]  # raw happy / sad
RECORDS = [
    rec(0, face(1, 0, H, H)),
    rec(1, face(1, 2, S, [0.45, 0.55]), face(2, 200, S, S)),
    rec(2),  # a frame without faces
    rec(3, face(1, 4, H, H), face(2, 202, S, S)),
    rec(4, face(1, 6, S, [0.45, 0.55])),
]


def test_frame_rows_one_per_face_in_order():
    rows = frame_rows(reversed(RECORDS), LABELS, fps=10.0)
    assert [(r["seq"], r["track"]) for r in rows] == [(0, 1), (1, 1), (1, 2), (3, 1), (3, 2), (4, 1)]
    assert rows[1] == {
        "src": "clip",
        "seq": 1,
        "time_s": 0.1,
        "track": 1,
        "x": 2,
        "y": 10.0,
        "w": 40.0,
        "h": 40.0,
        "score": 0.9,
        "label": "sad",
        "smoothed_label": "happy",
        "p_sad": 0.7,
        "p_happy": 0.3,
        "smoothed_sad": 0.45,
        "smoothed_happy": 0.55,
        "uncertain": False,
        "smoothed_uncertain": False,
    }


@pytest.mark.parametrize(("values", "n"), [([], 0), (["a"], 0), (["a", "a", "b", "a"], 2), ([1, 2, 3], 2)])
def test_changes(values, n):
    assert changes(values) == n


def test_track_summary():
    t1, t2 = track_summary(frame_rows(RECORDS, LABELS, 10.0), LABELS, 10.0)
    assert (t1["track"], t1["first_frame"], t1["last_frame"], t1["frames"], t1["last_s"]) == (1, 0, 4, 4, 0.4)
    assert (t1["dominant"], t1["share_happy"], t1["share_sad"]) == ("happy", 1.0, 0.0)
    assert (t1["label_changes"], t1["smoothed_label_changes"], t1["raw_dominant"]) == (3, 0, "happy")  # tie: mean p
    assert t1["mean_happy"] == pytest.approx(0.55)
    assert (t2["track"], t2["frames"], t2["dominant"], t2["share_sad"]) == (2, 2, "sad", 1.0)


def row(seq, track, x):
    return {"src": "clip", "seq": seq, "track": track, "x": x, "y": 0.0, "w": 40.0, "h": 40.0}


@pytest.mark.parametrize(
    ("rows", "n"),
    [
        ([row(0, 1, 0), row(1, 1, 2), row(2, 2, 4)], 1),  # a new id where the old one just ended
        ([row(0, 1, 0), row(1, 1, 2), row(2, 2, 300)], 0),  # a new face elsewhere
        ([row(0, 1, 0), row(1, 1, 2), row(40, 2, 4)], 0),  # long after: a face that came back
        ([row(0, 1, 0), row(0, 2, 100), row(1, 1, 2), row(1, 2, 102)], 0),  # two faces side by side
        ([row(0, 1, 0), row(1, None, 0)], 0),  # rows without a track are left out
    ],
)
def test_suspected_switches(rows, n):
    assert suspected_switches(rows, within=15) == n


def test_births_at_a_scene_cut_are_not_suspected():
    rows = [row(0, 1, 0), row(1, 1, 2), row(2, 2, 4)]
    assert suspected_switches(rows, cuts=[2]) == 0 and suspected_switches(rows, cuts=[1]) == 1


def test_write_reports_open_in_pandas_and_plot(tmp_path):
    pd = pytest.importorskip("pandas")
    paths, doc = write_reports(tmp_path / "out", RECORDS, LABELS, 10.0, {"video": "clip.mp4"})
    assert set(paths) == {"frames.jsonl", "frames.csv", "tracks.csv", "tracks.json", "timeline.png"}
    frames = pd.read_csv(paths["frames.csv"])
    assert len(frames) == 6 and list(frames.columns[:11]) == [
        "src",
        "seq",
        "time_s",
        "track",
        "x",
        "y",
        "w",
        "h",
        "score",
        "label",
        "smoothed_label",
    ]
    assert {"p_sad", "p_happy", "smoothed_sad", "smoothed_happy"} <= set(frames.columns)
    lines = pd.read_json(paths["frames.jsonl"], lines=True)
    assert list(lines["seq"]) == [0, 1, 2, 3, 4] and list(lines["time_s"]) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    tracks = pd.read_csv(paths["tracks.csv"])
    assert list(tracks["track"]) == [1, 2] and list(tracks["dominant"]) == ["happy", "sad"]
    assert json.loads(paths["tracks.json"].read_text()) == doc
    assert doc["video"] == "clip.mp4" and doc["labels"] == LABELS and len(doc["tracks"]) == 2
    check_png(paths["timeline.png"], panels=1)  # the overview; both tracks are under 1 s: no probability panel


def check_png(path, panels):
    img = cv2.imread(str(path))
    assert img is not None, "timeline.png does not decode"
    h, w = img.shape[:2]
    assert w >= 800 and h >= 150 * panels
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # drawn, not blank


def test_plot_of_no_faces_is_still_a_picture(tmp_path):
    paths, doc = write_reports(tmp_path, [rec(0)], LABELS, 10.0, {})
    assert doc["tracks"] == [] and cv2.imread(str(paths["timeline.png"])) is not None


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ReportError, match="pip install matplotlib"):
        require_matplotlib()


def write_video(path, frames=5, size=(64, 48)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, size)
    for i in range(frames):
        w.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    w.release()


def test_probe_a_video(tmp_path):
    write_video(tmp_path / "v.avi")
    info = an.probe(str(tmp_path / "v.avi"))
    assert (info.frames, info.fps, info.width, info.height) == (5, 10.0, 64, 48)


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("missing.mp4", None, "no such file"),
        ("photo.jpg", b"\xff\xd8", "is an image, not a video"),
        ("notes.mp4", b"just text, no video", "is not a video"),
    ],
)
def test_probe_rejects_bad_input_with_code_2(tmp_path, name, content, error):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(an.AnalyzeError, match=error) as e:
        an.probe(str(tmp_path / name))
    assert e.value.code == 2


def test_stage_config_is_valid_and_points_at_the_video(tmp_path):
    write_video(tmp_path / "my clip.avi")
    info = an.probe(str(tmp_path / "my clip.avi"))
    table = an.stage_table(Config(), info)
    cfg = parse(tomllib.loads(toml_text(table)))
    (src,) = cfg.capture.sources
    assert (src.id, src.uri, src.realtime, src.fps) == ("my_clip", str(info.path), False, 10.0)
    assert len({cfg.detector.endpoints[0], cfg.classifier.endpoints[0], cfg.display.endpoint}) == 3
    assert (cfg.display.web, cfg.display.events, cfg.display.window, cfg.bus.allow_remote) == ("", "", False, False)
    assert cfg.display.smoothing == Config().display.smoothing  # the user's settings are kept
    # nothing drawn: the frames come as shared-memory references (one host), without pixels when it is off
    assert display_pixels(cfg) and cfg.bus.shm_slots > 0
    assert not display_pixels(msgspec.structs.replace(cfg, bus=msgspec.structs.replace(cfg.bus, shm_slots=0)))
    drawn = parse(tomllib.loads(toml_text(an.stage_table(Config(), info, Path("out/annotated.mp4")))))
    assert drawn.display.video == str(Path("out/annotated.mp4").absolute()) and display_pixels(drawn)  # --video


def test_analyze_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "--video" in result.output and "--out" in result.output


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["missing.mp4"], "no such file: missing.mp4"),
        (["{tmp}/notes.mp4"], "is not a video"),
        (["{tmp}/v.avi", "--config", "/nonexistent/bus.toml"], "config file not found"),
    ],
)
def test_analyze_bad_input_exits_2_with_one_line(tmp_path, args, error):
    (tmp_path / "notes.mp4").write_text("not a video")
    write_video(tmp_path / "v.avi")
    result = CliRunner().invoke(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    assert error in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_receive_fails_after_a_stall_and_stops_when_asked(tmp_path, monkeypatch):
    cfg = parse({"capture": {"sources": [{"id": "v", "uri": str(tmp_path / "v.avi"), "realtime": False}]}})
    info = an.VideoInfo(tmp_path / "v.avi", 10, 10.0, 64, 48)
    log = logging.getLogger("test.analyze")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(f"inproc://analyze-{time.monotonic_ns()}")
    try:
        children = Launcher(tmp_path)
        monkeypatch.setattr(an, "STALL_S", 0.3)
        disp = Display(cfg, [], Stats(log, 1e9), log)
        with pytest.raises(an.AnalyzeError, match="no results for 0 s"):
            an._receive(disp, sock, children, cfg, info, threading.Event(), progress=False)
        stop = threading.Event()
        stop.set()
        with pytest.raises(an.Interrupted) as e:
            an._receive(disp, sock, children, cfg, info, stop, progress=False)
        assert e.value.code == 130
    finally:
        sock.close(linger=0)
        ctx.term()


def test_segments_split_at_label_changes_uncertainty_and_gaps():
    rows = [
        {"seq": 0, "smoothed_label": "happy", "smoothed_uncertain": False},
        {"seq": 1, "smoothed_label": "happy", "smoothed_uncertain": False},
        {"seq": 2, "smoothed_label": "happy", "smoothed_uncertain": True},
        {"seq": 3, "smoothed_label": "sad", "smoothed_uncertain": False},
        {"seq": 6, "smoothed_label": "sad", "smoothed_uncertain": False},
    ]
    assert segments(rows, 10.0) == [
        (0.0, 0.2, "happy"),
        (0.2, 0.1, "uncertain"),
        (0.3, 0.1, "sad"),
        (0.6, 0.1, "sad"),
    ]


def test_timeline_of_many_tracks_stays_readable(tmp_path):
    """Issue 14: ten tracks gave ten mostly empty panels. Now one overview row per track and panels
    only for tracks with >= 1 s of frames, so the height grows by a row, not a panel, per short track."""
    records = []
    for seq in range(300):
        faces = [face(1, 0, H, H)]  # one long track (10 s at 30 fps)
        for k in range(29):  # 29 short tracks of 6 frames
            if 10 * k <= seq < 10 * k + 6:
                faces.append(face(2 + k, 100 + k, S, S) | {"smoothed_uncertain": k % 2 == 0})
        records.append(rec(seq, *faces))
    paths, doc = write_reports(tmp_path, records, LABELS, 30.0, {})
    assert len(doc["tracks"]) == 30
    img = cv2.imread(str(paths["timeline.png"]))
    assert img is not None and img.shape[0] < 1600  # 30 rows + 1 panel (was 12 panels of 160 px + title)
    short = [t for t in doc["tracks"] if t["track"] > 1]
    assert {t["share_uncertain"] for t in short} == {0.0, 1.0}
    check_png(paths["timeline.png"], panels=2)
