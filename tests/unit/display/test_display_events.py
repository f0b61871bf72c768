from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from bus.codec import Face, Frame
from display.sinks import EventsSink
from display.worker import event, step

LABELS = ["angry", "happy"]


def msg(faces, labels=LABELS, image=True):
    return Frame(
        src="cam0",
        seq=7,
        ts=100.0,
        faces=faces,
        labels=labels,
        pixels=np.zeros((20, 30, 3), np.uint8) if image else None,
    )


@pytest.mark.parametrize(
    ("faces", "labels", "expected_faces"),
    [
        ([], LABELS, []),
        (
            [Face((1.04, 2, 3, 4), 0.91234, [], "happy", [0.25, 0.75])],
            LABELS,
            [
                {
                    "box": [1.0, 2.0, 3.0, 4.0],
                    "score": 0.9123,
                    "kp": [],
                    "label": "happy",
                    "probs": {"angry": 0.25, "happy": 0.75},
                    "uncertain": False,
                }
            ],
        ),
        (
            [Face((1, 2, 3, 4), 0.5)],
            None,
            [{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.5, "kp": [], "label": None, "probs": {}, "uncertain": False}],
        ),
        (
            [Face((0, 0, 1, 1), 0.5, [], "x", [0.5, 0.5])],
            ["only-one"],  # labels disagree: index keys
            [
                {
                    "box": [0.0, 0.0, 1.0, 1.0],
                    "score": 0.5,
                    "kp": [],
                    "label": "x",
                    "probs": {"0": 0.5, "1": 0.5},
                    "uncertain": False,
                }
            ],
        ),
    ],
    ids=["no-faces", "classified", "unclassified", "label-mismatch"],
)
def test_event_record(faces, labels, expected_faces):
    rec = event(msg(faces, labels), now=100.25)
    assert rec == {"v": 1, "src": "cam0", "seq": 7, "ts": 100.0, "faces": expected_faces, "latency_ms": 250.0}
    assert json.loads(json.dumps(rec)) == rec
    for f, face in zip(rec["faces"], faces, strict=True):
        assert f == face.to_json(labels or [], f["uncertain"]), "the one face object (bus.codec.Face.to_json)"


@pytest.mark.parametrize(
    ("draw", "image", "has_image"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_step_draws_only_when_asked(draw, image, has_image):
    out = step(msg([Face((1, 2, 3, 4), 0.5, [], "happy", [0.1, 0.9])], image=image), 100.0, draw)
    assert (out.image is not None) is has_image
    assert out.event["faces"][0]["label"] == "happy"


def test_events_sink_writes_one_json_line_per_frame(tmp_path):
    path = tmp_path / "sub" / "events.jsonl"
    sink = EventsSink(path)
    records = [event(msg([]), 100.0), event(msg([Face((1, 2, 3, 4), 0.5, [], "angry", [0.6, 0.4])]), 100.1)]
    for r in records:
        sink.write(msg([]), None, r)
    assert len(path.read_text().splitlines()) == 2  # written through, before close
    sink.close()
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == records
    assert set(json.loads(lines[0])) == {"v", "src", "seq", "ts", "faces", "latency_ms"}


def test_events_sink_appends_to_what_an_earlier_display_wrote(tmp_path):
    """Issue 11 case 1: a restarted display used to open the file with "w" and erase it."""
    path = tmp_path / "events.jsonl"
    first, second = event(msg([]), 100.0), event(msg([Face((1, 2, 3, 4), 0.5)]), 100.1)
    for record in (first, second):
        sink = EventsSink(path)
        sink.write(msg([]), None, record)
        sink.close()
    assert [json.loads(x) for x in path.read_text().splitlines()] == [first, second]


@pytest.mark.parametrize(
    ("before", "kept"),
    [
        (b'{"seq":0}\n{"seq":1}\n', b'{"seq":0}\n{"seq":1}\n'),  # whole: untouched
        (b'{"seq":0}\n{"seq":1}\n{"se', b'{"seq":0}\n{"seq":1}\n'),  # torn: cut to the last whole line
        (b'{"seq":0}\n' + b"x" * 200_000, b'{"seq":0}\n'),  # a torn line longer than one read
        (b'{"se', b""),  # not one whole line
        (b"", b""),
    ],
)
def test_a_torn_last_line_is_cut_never_merged_with_the_next(tmp_path, before, kept, caplog):
    path = tmp_path / "events.jsonl"
    path.write_bytes(before)
    sink = EventsSink(path, log=logging.getLogger("test.events"))
    sink.write(msg([]), None, {"seq": 2})
    sink.close()
    assert path.read_bytes() == kept + b'{"seq":2}\n'
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()][-1] == 2
    assert ("torn last line" in caplog.text) is (before != kept)


@pytest.mark.parametrize(
    ("flag", "below", "probs", "smoothed", "raw_uncertain", "smoothed_uncertain"),
    [
        (True, 0.4, [0.3, 0.7], [0.62, 0.38], True, False),  # the classifier's flag for raw; threshold for smoothed
        (False, 0.4, [0.3, 0.7], [0.35, 0.65], False, False),
        (False, 0.7, [0.3, 0.7], [0.35, 0.65], False, True),  # smoothed "happy" at 0.65 < 0.7
        (None, 0.8, [0.3, 0.7], [0.35, 0.65], True, True),  # no flag (older classifier): computed
        (None, None, [0.3, 0.7], [0.35, 0.65], False, False),  # no threshold: never uncertain
    ],
)
def test_event_says_uncertain_raw_and_smoothed(flag, below, probs, smoothed, raw_uncertain, smoothed_uncertain):
    from display.track import Tracked

    m = msg([Face((1, 2, 3, 4), 0.9, [], "happy", probs, flag)])
    m.uncertain_below = below
    label = LABELS[int(np.argmax(smoothed))]
    rec = event(m, 100.0, [Tracked(3, smoothed, label)])
    face = rec["faces"][0]
    assert (face["uncertain"], face["smoothed_uncertain"]) == (raw_uncertain, smoothed_uncertain)
    assert rec.get("uncertain_below") == below
