from __future__ import annotations

import json
import socket

import cv2
import numpy as np
import pytest
import zmq
from click.testing import CliRunner

from bus.config import Config, DisplayConfig
from bus.sockets import StageSockets
from display import __main__ as display_main
from display.__main__ import load_faces, main

DETECTOR_LINE = {"src": "img.png", "seq": 0, "faces": [{"box": [10, 10, 40, 40], "score": 0.9, "kp": [[20, 20]]}]}
CLASSIFIER_LINE = {"image": "img.png", "label": "happy", "probs": {"angry": 0.1, "happy": 0.9}}
EVENTS_LINE = {
    "src": "cam0",
    "seq": 0,
    "ts": 1.0,
    "latency_ms": 3.0,
    "faces": [{"box": [5, 5, 20, 20], "score": 0.8, "label": "sad", "probs": {"sad": 0.6, "happy": 0.4}}],
}


def test_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "--faces" in result.output


@pytest.mark.parametrize(
    ("content", "n", "labels", "first_box", "first_label"),
    [
        (json.dumps(DETECTOR_LINE), 1, [], (10, 10, 40, 40), None),
        (json.dumps(CLASSIFIER_LINE), 1, ["angry", "happy"], (0, 0, 80, 60), "happy"),  # whole image
        (json.dumps(EVENTS_LINE), 1, ["sad", "happy"], (5, 5, 20, 20), "sad"),
        (json.dumps([DETECTOR_LINE, DETECTOR_LINE]), 2, [], (10, 10, 40, 40), None),
        (
            json.dumps(DETECTOR_LINE) + "\n" + json.dumps({**DETECTOR_LINE, "src": "other.png"}) + "\n",
            1,
            [],
            (10, 10, 40, 40),
            None,
        ),  # JSON lines; the other image's faces are skipped
        (json.dumps(DETECTOR_LINE["faces"]), 1, [], (10, 10, 40, 40), None),  # a bare list of faces
    ],
    ids=["detector", "classifier", "events", "list", "json-lines", "bare-faces"],
)
def test_load_faces(tmp_path, content, n, labels, first_box, first_label):
    path = tmp_path / "faces.json"
    path.write_text(content)
    faces, got_labels = load_faces(str(path), "img.png", (60, 80, 3))
    assert len(faces) == n
    assert got_labels == labels
    assert faces[0].box == first_box and faces[0].label == first_label


def test_draws_faces_onto_an_image(tmp_path):
    img, faces, out = tmp_path / "img.png", tmp_path / "f.json", tmp_path / "out.jpg"
    cv2.imwrite(str(img), np.zeros((60, 80, 3), np.uint8))
    faces.write_text(json.dumps(EVENTS_LINE))
    result = CliRunner().invoke(main, ["--image", str(img), "--faces", str(faces), "--out", str(out)])
    assert result.exit_code == 0, result.output
    drawn = cv2.imread(str(out))
    assert drawn.shape == (60, 80, 3) and drawn.any()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--image", "x.png"], "go together"),
        (["--image", "missing.png", "--faces", "f.json", "--out", "o.jpg"], "cannot read image"),
        (["--config", "/nonexistent/bus.toml"], "config file not found"),
    ],
)
def test_errors_exit_2_with_one_line(args, error):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert error in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_faces_file_exits_2(tmp_path):
    img, faces = tmp_path / "img.png", tmp_path / "f.json"
    cv2.imwrite(str(img), np.zeros((60, 80, 3), np.uint8))
    faces.write_text('{"faces": [{"box": [1, 2]}]}')
    result = CliRunner().invoke(main, ["--image", str(img), "--faces", str(faces), "--out", str(tmp_path / "o.jpg")])
    assert result.exit_code == 2
    assert "face box: expected `array` of length 4" in result.output


class RecordingSink:
    name, wants_image = "rec", False

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def write(self, *args: object) -> None:
        pass

    def close(self) -> None:
        self.order.append("sinks closed")


@pytest.mark.parametrize("taken", [False, True])
def test_the_display_binds_after_its_sinks_are_up_and_closes_them_when_it_cannot(monkeypatch, taken: bool) -> None:
    """A display whose endpoint answers has its web page up (tests and launchers wait for the
    endpoint); a bind that fails still closes the sinks it opened."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    cfg = Config(display=DisplayConfig(endpoint=endpoint))
    order: list[str] = []
    monkeypatch.setattr(display_main, "open_sinks", lambda *a: order.append("sinks up") or [RecordingSink(order)])

    def fake_run(cfg, pull, sinks, stop, stats, log):
        for s in sinks:
            s.close()

    class Recorded(StageSockets):
        def __enter__(self) -> StageSockets:
            order.append("bind")
            return super().__enter__()

    monkeypatch.setattr(display_main, "run", fake_run)
    squatter = zmq.Context.instance().socket(zmq.PULL)
    if taken:
        squatter.bind(endpoint)
    try:
        if taken:
            with pytest.raises(SystemExit) as e:
                display_main.serve(cfg, Recorded("display", cfg))
            assert e.value.code == 2
        else:
            display_main.serve(cfg, Recorded("display", cfg))
    finally:
        squatter.close(0)
    assert order == ["sinks up", "bind", "sinks closed"]
