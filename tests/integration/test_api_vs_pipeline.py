"""The Python API against the pipeline's own output: the real ``honcho start`` (the fixtures of
test_pipeline_honcho.py) on the shared media, then ``EmotionRecognizer().analyze`` on the same file;
every frame must have the same faces, and the per-frame labels must agree.

The bar: the same face count on every frame of asl_signer_concat10.mp4 and the same label in at least
99 % of them (and, where they agree, the same boxes, calibrated probabilities and uncertain flags). They are the same code on the same pixels, so the boxes agree to float precision and
the labels exactly, unless one process's LiteRT/XNNPACK arithmetic differs from another's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from emostream import EmotionRecognizer
from tests.integration.test_pipeline_honcho import MODEL, Pipeline, check_complete, labels, pipeline  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def compare(events: list[dict], results: list, frames: int) -> tuple[int, int, list[int]]:
    """(frames whose face count agrees, frames whose labels agree, frames that differ)."""
    by_seq = {e["seq"]: e for e in events}
    assert sorted(by_seq) == list(range(frames)) and len(results) == frames
    same_count = same_labels = 0
    differ = []
    for r in results:
        faces = by_seq[r.index]["faces"]
        if len(faces) == len(r.faces):
            same_count += 1
            if [f["label"] for f in faces] == [f.label for f in r.faces]:
                same_labels += 1
                for f, mine in zip(faces, r.faces, strict=True):
                    assert f["box"] == pytest.approx([round(v, 1) for v in mine.box], abs=0.11)
                    assert f["probs"] == pytest.approx({k: round(v, 4) for k, v in mine.probs.items()}, abs=2e-4)
                    assert f["uncertain"] == mine.uncertain
                continue
        differ.append(r.index)
    return same_count, same_labels, differ


def test_api_agrees_with_the_pipeline_on_every_frame(
    pipeline: Pipeline,  # noqa: F811
    labels: list[str],  # noqa: F811
    shared_data: Path,
) -> None:
    video = shared_data / "media/videos/asl_signer_concat10.mp4"
    run = pipeline(video)
    check_complete(run, 648)
    with EmotionRecognizer(model=MODEL) as recognizer:
        results = list(recognizer.analyze(video))
    same_count, same_labels, differ = compare(run.events, results, 648)
    print(f"face count equal on {same_count}/648 frames, labels equal on {same_labels}/648; differ: {differ[:20]}")
    assert same_count == 648, f"face counts differ on frames {differ[:20]}"
    assert same_labels >= 0.99 * 648, f"labels differ on {648 - same_labels} frames: {differ[:20]}"


def test_api_agrees_with_the_pipeline_on_a_photo(
    pipeline: Pipeline,  # noqa: F811
    labels: list[str],  # noqa: F811
    shared_data: Path,
) -> None:
    photo = shared_data / "media/images/faces/two_people.jpg"
    run = pipeline(photo, eof_linger_s=15.0)
    check_complete(run, 1)
    assert run.events[0]["path"] == str(photo)  # an image source names its file in the events
    with EmotionRecognizer(model=MODEL) as recognizer:
        results = list(recognizer.analyze(photo))
    assert compare(run.events, results, 1) == (1, 1, [])
    assert len(results[0].faces) == 2
