from __future__ import annotations

import numpy as np
import pytest

from bus.codec import Drop, DropReason, Eos, Face, Frame, Message, decode, drop_marker, encode
from classifier.worker import step

LABELS = ("angry", "happy", "neutral")


class FakeModel:
    labels = LABELS
    size = 8
    channels = 1

    def __init__(self) -> None:
        self.batches: list[int] = []

    def classify(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append(len(crops))
        # face i is most confident in label i % 3
        probs = np.full((len(crops), 3), 0.1, np.float32)
        probs[np.arange(len(crops)), np.arange(len(crops)) % 3] = 0.8
        return probs


def frame(n_faces: int, crop_shape: tuple[int, ...] | None = None) -> Message:
    faces = [Face((10.0 * i, 0.0, 5.0, 5.0), 0.9) for i in range(n_faces)]
    shape = crop_shape if crop_shape is not None else (n_faces, 8, 8, 1)
    crops = np.zeros(shape, np.uint8) if n_faces or crop_shape else None
    return Frame(
        src="s",
        seq=3,
        ts=1.0,
        pixels=np.zeros((4, 4, 3), np.uint8),
        faces=faces,
        crops=crops,
        t={"capture": 1.0},
    )


@pytest.mark.parametrize(
    ("msg", "kind", "reason", "labels", "batches"),
    [
        (frame(0), "frame", None, [], []),
        (frame(1), "frame", None, ["angry"], [1]),
        (frame(4), "frame", None, ["angry", "happy", "neutral", "angry"], [4]),
        (frame(2, crop_shape=(2, 16, 16, 1)), "drop", "crop_shape", None, []),
        (frame(2, crop_shape=(2, 8, 8, 3)), "drop", "crop_shape", None, []),
        (frame(2, crop_shape=(1, 8, 8, 1)), "drop", "crop_shape", None, []),
        (Frame(src="s", seq=3, ts=1.0, faces=[Face((0, 0, 1, 1), 1.0)]), "drop", "no_crops", None, []),
        (Eos(src="s", seq=3, ts=1.0, frames=10, dropped=0), "eos", None, None, []),
        (Drop(src="s", seq=3, ts=1.0, reason="stale"), "drop", "stale", None, []),
    ],
    ids=["no-faces", "one", "four-one-batch", "crop-size", "crop-channels", "crop-count", "no-crops", "eos", "drop"],
)
def test_step(msg, kind, reason, labels, batches):
    model = FakeModel()
    out = step(msg, model)
    assert (out.kind, getattr(out, "reason", None)) == (kind, reason)
    assert model.batches == batches
    if labels is not None:
        assert [f.label for f in out.faces] == labels
        assert out.labels == list(LABELS)
        assert out.crops is None
        assert out.image is not None
        for f in out.faces:
            assert f.probs is not None and len(f.probs) == 3
    if kind == "drop":
        assert (out.src, out.seq, out.ts) == ("s", 3, 1.0)
        assert not hasattr(out, "pixels") and not hasattr(out, "crops"), "a drop marker carries no pixels"


def test_step_output_survives_the_codec():
    out = decode(encode(step(frame(2), FakeModel())))
    assert [f.label for f in out.faces] == ["angry", "happy"]
    assert out.labels == list(LABELS)
    assert out.crops is None and out.image is not None
    assert out.faces[1].probs == pytest.approx([0.1, 0.8, 0.1])


def test_drop_marker_keeps_identity_and_timing():
    m = drop_marker(frame(1), DropReason.CLASSIFY_ERROR)
    assert (m.kind, m.src, m.seq, m.ts, m.reason, m.t) == ("drop", "s", 3, 1.0, "classify_error", {"capture": 1.0})
    assert decode(encode(m)).reason == "classify_error"


@pytest.mark.parametrize("n_faces", [0, 2])
def test_step_leaves_its_input_as_it_was(n_faces):
    """Issue 12: step was called pure but labelled the input's faces and dropped its crops."""
    msg = frame(n_faces)
    out = step(msg, FakeModel(), uncertain_below=0.9)
    assert out is not msg and out.faces is not msg.faces
    assert msg.labels is None and msg.uncertain_below is None
    assert (msg.crops is None) == (n_faces == 0) and all(f.label is None and f.probs is None for f in msg.faces)
    assert out.labels == list(LABELS) and out.crops is None and all(f.label is not None for f in out.faces)
    out.t["classifier"] = 2.0
    assert msg.t == {"capture": 1.0}, "the stage's stamp on the result does not reach the input"
