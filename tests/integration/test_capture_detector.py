"""``python -m capture`` and ``python -m detector`` as real processes on random ports.

The test plays the classifier: it binds a PULL socket on the classifier endpoint and reads what the
detector sends, with ``[detector] two_paths = false`` (the two paths: ``test_two_paths.py``). asl_book.mkv has one face in every frame (see docs/detector.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from bus.codec import Message, decode
from bus.shm import Rings
from emostream.launch import child_env, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


def start(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A stage as a child process; its stderr goes to a file (no pipe to fill up)."""
    log = tmp / f"{args[0]}-{time.monotonic_ns()}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=tmp, env=child_env(), stdout=subprocess.DEVNULL, stderr=err
        )
    return proc, log


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{text!r} not logged (rc={proc.poll()}):\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def receive(sock: zmq.Socket, timeout_s: float = 20.0) -> Message:
    if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
        pytest.fail(f"nothing received within {timeout_s} s")
    return decode(sock.recv_multipart())


def terminate_within(proc: subprocess.Popen[bytes], seconds: float) -> int:
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout=seconds + 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{proc.args!r} ignored SIGTERM")
    assert time.monotonic() - t0 < seconds, f"{proc.args!r} took {time.monotonic() - t0:.1f} s to stop"
    return rc


@pytest.fixture()
def pipeline_config(tmp_path: Path, shared_data: Path) -> Iterator[tuple[Path, str]]:
    sidecar = {"name": "fake", "labels": ["a", "b"], "input": {"size": 48, "colour": "grey", "crop_margin": 0.2}}
    (tmp_path / "fake.json").write_text(json.dumps(sidecar))
    video = shared_data / "media/videos/asl_book.mkv"
    det, clf, disp = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    cfg = tmp_path / "bus.toml"
    cfg.write_text(f"""
[bus]
stats_interval_s = 60.0
[capture]
sources = [{{ id = "book", uri = "{video}", realtime = false }}]
eof_linger_s = 30.0
[detector]
endpoints = ["{det}"]
two_paths = false  # one path: the test, playing the classifier, gets whole frames, markers and eos
[classifier]
endpoints = ["{clf}"]
model = "{tmp_path / "fake.tflite"}"
[display]
endpoint = "{disp}"
""")
    yield cfg, clf


def test_every_frame_of_a_file_arrives_with_its_face_then_eos(
    tmp_path: Path, pipeline_config: tuple[Path, str]
) -> None:
    cfg, classifier_endpoint = pipeline_config
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    sink.setsockopt(zmq.LINGER, 0)
    sink.bind(classifier_endpoint)
    procs = []
    try:
        detector, det_log = start(tmp_path, "detector", "--config", str(cfg))
        procs.append(detector)
        capture, cap_log = start(tmp_path, "capture", "--config", str(cfg))
        procs.append(capture)
        frames: list[Message] = []
        rings = Rings()
        in_shm = 0
        while True:
            msg = receive(sink)
            if msg.kind == "eos":
                break
            ref = msg.shm
            if ref is not None:  # pixels in capture's shared-memory ring: read, then release as the display does
                in_shm += 1
                msg.pixels = rings.view(ref).copy()
                assert rings.valid(ref) and rings.release(ref)
            frames.append(msg)
        assert in_shm == len(frames), "every frame's pixels travel in shared memory when the sink releases them"
        assert [m.kind for m in frames] == ["frame"] * len(frames), [m.reason for m in frames if m.kind == "drop"]
        assert [m.seq for m in frames] == list(range(len(frames)))
        assert msg.frames == len(frames) == 109 and msg.dropped == 0 and msg.src == "book"
        assert all(len(m.faces) == 1 for m in frames)
        assert all(m.crops is not None and m.crops.shape == (1, 48, 48, 1) for m in frames)
        assert all(m.image is not None and m.image.shape == (480, 640, 3) and not m.live for m in frames)
        assert all(m.ts <= m.t["capture"] <= m.t["detector"] for m in frames)
        wait_for_log(capture, cap_log, "staying up")  # lingering after the end, as under honcho
        assert terminate_within(capture, 2.0) == 0
        assert terminate_within(detector, 2.0) == 0
        assert "final stats" in det_log.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        sink.close(linger=0)
        ctx.term()


def test_idle_detector_stops_within_two_seconds_of_sigterm(tmp_path: Path, pipeline_config: tuple[Path, str]) -> None:
    cfg, _ = pipeline_config
    detector, log = start(tmp_path, "detector", "--config", str(cfg))
    try:
        wait_for_log(detector, log, "face_detection_full_range_sparse.tflite on tcp://")
        assert terminate_within(detector, 2.0) == 0
    finally:
        if detector.poll() is None:
            detector.kill()
            detector.wait(timeout=5)


def test_capture_waiting_for_a_detector_stops_within_two_seconds_of_sigterm(
    tmp_path: Path, pipeline_config: tuple[Path, str]
) -> None:
    cfg, _ = pipeline_config
    capture, log = start(tmp_path, "capture", "--config", str(cfg))
    try:
        wait_for_log(capture, log, "1 source(s) -> tcp://")
        time.sleep(0.3)  # inside the first (blocking) send now
        assert terminate_within(capture, 2.0) == 0
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait(timeout=5)


@pytest.mark.parametrize("stage", ["capture", "detector"])
def test_help(stage: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", stage, "--help"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "Usage:" in out.stdout and "--config" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["capture", "--source", "missing.mp4"], "capture: cannot open source 'src0': no such file: missing.mp4"),
        (["capture", "--config", "missing.toml"], "capture: config file not found: missing.toml"),
        (["detector", "--video", "missing.mp4"], "detector: no such file: missing.mp4"),
        (["detector", "--image", "missing.png"], "detector: no such file: missing.png"),
        (["detector", "--instance", "3"], "detector: --instance 3: [detector] endpoints has 1 entries"),
    ],
)
def test_start_up_failures_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", *args], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stderr.splitlines()) == (2, [message])


@pytest.mark.parametrize("model_there", [True, False], ids=["sidecar-missing", "model-missing"])
def test_detector_without_the_classifier_sidecar_exits_2(
    tmp_path: Path, pipeline_config: tuple[Path, str], model_there: bool
) -> None:
    cfg, _ = pipeline_config
    (tmp_path / "fake.json").unlink()
    if model_there:
        (tmp_path / "fake.tflite").write_bytes(b"a model")
    out = subprocess.run(
        [sys.executable, "-m", "detector", "--config", str(cfg)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # issue 11 case 17: without the model it said "model sidecar not found"
    missing = (
        f"model sidecar not found: {tmp_path / 'fake.json'}"
        if model_there
        else (f"model file not found: {tmp_path / 'fake.tflite'}")
    )
    assert out.returncode == 2 and out.stderr.splitlines() == [f"detector: {missing}"]


def test_detector_alone_on_an_image_prints_json(tmp_path: Path, shared_data: Path) -> None:
    image = shared_data / "media/images/faces/two_people.jpg"
    out = subprocess.run(
        [sys.executable, "-m", "detector", "--image", str(image)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    (line,) = [json.loads(x) for x in out.stdout.splitlines()]
    assert line["src"] == str(image) and line["seq"] == 0 and len(line["faces"]) == 2
    assert set(line["faces"][0]) == {"box", "score", "kp", "label", "probs", "uncertain"}, "the events record's face"
    assert line["faces"][0]["label"] is None and line["faces"][0]["probs"] == {}


def test_capture_print_lists_every_frame(tmp_path: Path, pipeline_config: tuple[Path, str]) -> None:
    cfg, _ = pipeline_config
    out = subprocess.run(
        [sys.executable, "-m", "capture", "--config", str(cfg), "--print"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["kind"] for x in lines] == ["frame"] * 109 + ["eos"]
    assert lines[0]["shape"] == [480, 640, 3] and lines[-1]["frames"] == 109
