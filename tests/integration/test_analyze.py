"""``python -m analyze`` on real media: real capture/detector/classifier processes, the
reports, track-id stability, smoothing, and clean shutdown on Ctrl-C. Skips without the research
data ($EMOSTREAM_DATA, else ../shared/data: tests/conftest.py).

Every run is its own process group, killed as a whole if it overruns, so a hang fails the test
and leaves no stage behind.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from bus.runtime import alive
from emostream.launch import child_env

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fer2013_emonet.tflite"
VIDEOS = "media/videos"


def start(args: list[str], tmp: Path) -> subprocess.Popen[str]:
    cfg = tmp / "bus.toml"
    cfg.write_text(f'[classifier]\nmodel = "{MODEL}"\n')
    return subprocess.Popen(
        [sys.executable, "-m", "analyze", *args, "--config", str(cfg), "--quiet"],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: killed whole on a timeout
    )


def finish(p: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        pytest.fail(f"analyze did not finish within {timeout_s} s:\n{out}\n{err[-3000:]}")
    return p.returncode, out, err


def analyze(video: Path, out: Path, *extra: str, timeout_s: float = 120) -> tuple[str, str]:
    if not MODEL.is_file():
        pytest.skip(f"the classifier model {MODEL} is not there")
    code, stdout, stderr = finish(start([str(video), "--out", str(out), *extra], out.parent), timeout_s)
    assert code == 0, f"{stdout}\n{stderr[-3000:]}"
    return stdout, stderr


@pytest.fixture(scope="module")
def walking(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("walking") / "report"
    stdout, _ = analyze(shared_data / VIDEOS / "face-demographics-walking-and-pause.gif", out, "--video")
    return out, stdout


def ground_truth(x_center: float) -> str:
    """The three people of the walking clip never cross; hand-checked on frames 0, 20 and 40 (the
    detector's boxes drawn on them): left woman x_c < 150, man 150..280, right woman > 280 px."""
    return "left" if x_center < 150 else "middle" if x_center < 280 else "right"


def id_switches(frames) -> tuple[int, dict[str, list[int]]]:
    """MOT-style id switches: for each person, how often the track id on it changes from one
    frame where it is detected to the next; plus each person's track ids."""
    ids: dict[str, list[int]] = collections.defaultdict(list)
    for _, r in frames.sort_values("seq").iterrows():
        ids[ground_truth(r.x + r.w / 2)].append(int(r.track))
    return sum(int(np.count_nonzero(np.diff(v))) for v in ids.values()), dict(ids)


def test_reports_open_in_pandas_and_the_plot_is_drawn(walking):
    pd = pytest.importorskip("pandas")
    out, stdout = walking
    assert "frames read 41, analysed 41, dropped 0, lost 0" in stdout
    frames = pd.read_csv(out / "frames.csv")
    labels = [c[2:] for c in frames.columns if c.startswith("p_")]
    assert len(labels) >= 2
    assert list(frames.columns) == (
        ["src", "seq", "time_s", "track", "x", "y", "w", "h", "score", "label", "smoothed_label"]
        + [f"p_{n}" for n in labels]
        + [f"smoothed_{n}" for n in labels]
        + ["uncertain", "smoothed_uncertain"]
    )
    assert frames["seq"].between(0, 40).all() and frames["label"].isin(labels).all()
    np.testing.assert_allclose(frames[[f"p_{n}" for n in labels]].sum(axis=1), 1.0, atol=0.01)
    lines = pd.read_json(out / "frames.jsonl", lines=True)
    assert list(lines["seq"]) == list(range(41))
    tracks = pd.read_csv(out / "tracks.csv")
    assert tracks["frames"].sum() == len(frames)
    shares = tracks[[f"share_{n}" for n in labels]].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0, atol=0.01)
    summary = pd.read_json(out / "tracks.json", typ="series")
    assert summary["frames_read"] == 41 and summary["lost"] == 0
    img = cv2.imread(str(out / "timeline.png"))
    assert img is not None and img.shape[1] >= 800 and img.shape[0] >= 3 * 150  # one panel per track
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # drawn, not blank
    (annotated,) = out.glob("annotated.*")  # .mp4 (H.264) or .webm (VP8): display.sinks.choose_codec
    video = cv2.VideoCapture(str(annotated))
    n = 0
    while video.read()[0]:
        n += 1
    video.release()
    assert n == 41


def test_track_ids_are_stable_on_the_walking_clip(walking):
    """Bound: 0 switches and exactly 3 tracks. Every face is detected in every frame (the right
    woman from frame 1), moves < 10 px per frame with 37..62 px boxes (IoU > 0.6 frame to frame,
    twice the 0.3 threshold), and nobody crosses: any switch here is a tracker bug."""
    pd = pytest.importorskip("pandas")
    out, stdout = walking
    frames = pd.read_csv(out / "frames.csv")
    switches, ids = id_switches(frames)
    assert switches == 0, ids
    assert sorted(len(v) for v in ids.values()) == [40, 41, 41]
    assert frames["track"].nunique() == 3
    assert "3 track(s), 0 scene cut(s), 0 suspected id switch(es)" in stdout


def test_one_happy_track_on_the_male_head_pose_clip(shared_data, tmp_path):
    """Depends on the trained model (the interim one predicts a near-constant prior)."""
    pd = pytest.importorskip("pandas")
    out = tmp_path / "report"
    analyze(shared_data / VIDEOS / "head-pose-face-detection-male.mp4", out, "--no-plot")
    tracks = pd.read_csv(out / "tracks.csv")
    assert len(tracks) == 1, tracks
    assert tracks["dominant"][0] == "happy", tracks.to_string()


ASL_CUTS = [77, 140, 249, 314, 361, 419, 468, 529, 580]  # hand-checked: 10 clips of different signers


@pytest.fixture(scope="module")
def asl(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("asl") / "report"
    analyze(shared_data / VIDEOS / "asl_signer_concat10.mp4", out, "--no-plot")
    return out


def test_scene_cuts_end_the_tracks_on_the_asl_clip(asl):
    """Ten clips of signers standing at the same place: without cut detection a new signer would
    inherit the last one's id; with it, one track per clip."""
    pd = pytest.importorskip("pandas")
    summary = pd.read_json(asl / "tracks.json", typ="series")
    assert summary["scene_cuts"] == ASL_CUTS
    assert summary["suspected_switches"] == 0
    tracks = pd.read_csv(asl / "tracks.csv")
    bounds = [0, *ASL_CUTS, 648]
    assert [(t.first_frame, t.last_frame) for t in tracks.itertuples()] == [
        (a, b - 1) for a, b in itertools.pairwise(bounds)
    ]


def test_smoothing_cuts_label_changes_fivefold_on_the_asl_clip(asl):
    pd = pytest.importorskip("pandas")
    out = asl
    tracks = pd.read_csv(out / "tracks.csv")
    raw, smoothed = int(tracks["label_changes"].sum()), int(tracks["smoothed_label_changes"].sum())
    assert smoothed * 5 <= raw, f"label changes: raw {raw}, smoothed {smoothed}\n{tracks.to_string()}"
    frames = pd.read_csv(out / "frames.csv")
    assert frames["label"].mode()[0] == frames["smoothed_label"].mode()[0]


running = alive  # exists and is not a zombie (an exited child its parent has not reaped yet)


def listening_of(pids: list[int]) -> set[int]:
    """The inodes of the TCP sockets in LISTEN state that ``pids`` hold."""
    listen = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":
                listen.add(int(cols[9]))
    held = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                held.add(int(target[8:-1]))
    return listen & held


def children_of(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def analyze_running(shared_data: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """analyze on the long clip, once its three stages are up and bound (detector and classifier bind
    their PULL sockets after they start watching their manager; capture watches it first thing)."""
    if not MODEL.is_file():
        pytest.skip(f"the classifier model {MODEL} is not there")
    p = start([str(shared_data / VIDEOS / "asl_signer_concat10.mp4"), "--out", str(tmp_path / "report")], tmp_path)
    deadline = time.monotonic() + 30
    while len(kids := children_of(p.pid)) < 3 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert len(kids) == 3, f"expected capture, detector and classifier; got {kids}"
    while len(listening_of(kids)) < 2 and time.monotonic() < deadline + 60 and p.poll() is None:
        time.sleep(0.1)
    assert len(listening_of(kids)) == 2, "detector and classifier never bound their sockets"
    return p, kids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the stage processes")
def test_ctrl_c_stops_every_stage(shared_data, tmp_path):
    p, kids = analyze_running(shared_data, tmp_path)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    code, _, stderr = finish(p, 30)
    assert code == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "analyze: interrupted"
    assert [k for k in kids if running(k)] == []


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the stage processes")
def test_the_stages_stop_when_analyze_is_killed(shared_data, tmp_path):
    """SIGKILL leaves no handler to run: the stages see their manager (analyze, through the launcher's
    EMOSTREAM_MANAGER_PID) die and stop by themselves instead of holding their endpoints."""
    p, kids = analyze_running(shared_data, tmp_path)
    p.kill()
    p.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while (alive := [k for k in kids if running(k)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for k in alive:
        os.kill(k, signal.SIGKILL)  # leave nothing behind, then fail
    assert alive == []
