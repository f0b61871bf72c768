"""The wire protocol: round trips, and one error type for every kind of garbage."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.codec import (
    THUMB,
    VERSION,
    CodecError,
    Drop,
    DropReason,
    Eos,
    Face,
    Frame,
    Jpeg,
    Message,
    ShmRef,
    decode,
    drop_marker,
    encode,
)


def roundtrip(msg: Message, **kw) -> Message:
    return decode([bytes(p) for p in encode(msg, **kw)])


def test_frame_roundtrip_keeps_everything() -> None:
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    crops = np.full((2, 48, 48, 1), 7, np.uint8)
    faces = [Face((1, 2, 3, 4), 0.9, [(1, 1), (2, 2)], "happy", [0.1, 0.9]), Face((5, 6, 7, 8), 0.7)]
    msg = Frame(
        "cam0", 42, 123.5, live=True, faces=faces, crops=crops, labels=["sad", "happy"], t={"capture": 1.0}, pixels=img
    )
    out = roundtrip(msg)
    assert (out.src, out.seq, out.ts, out.live, out.kind) == ("cam0", 42, 123.5, True, "frame")
    assert np.array_equal(out.image, img) and np.array_equal(out.crops, crops)
    assert out.faces[0].label == "happy" and out.faces[0].probs == [0.1, 0.9] and out.faces[1].label is None
    assert out.labels == ["sad", "happy"] and out.t == {"capture": 1.0}


@pytest.mark.parametrize(
    "msg",
    [
        Frame("c", 1, 2.0, pixels=np.zeros((4, 4, 3), np.uint8), faces=[Face((1, 1, 2, 2))], wait=True),
        Frame("c", 1, 2.0, faces=[Face((1, 1, 2, 2))], crops=np.zeros((1, 8, 8, 1), np.uint8), result=True),
        Frame("c", 1, 2.0, faces=[Face((1, 1, 2, 2))], no_emotions=DropReason.SEND),
        Drop("c", 1, 2.0, DropReason.CLASSIFY_ERROR, result=True),
    ],
)
def test_the_two_paths_keys_round_trip(msg: Message) -> None:
    out = roundtrip(msg)
    for key in ("wait", "result", "no_emotions", "reason"):
        assert getattr(out, key, None) == getattr(msg, key, None), key


def test_a_result_frame_becomes_a_result_drop_and_an_unknown_no_emotions_reads_unknown() -> None:
    res = Frame("c", 1, 2.0, result=True)
    assert drop_marker(res, DropReason.STALE).result and not drop_marker(Eos("c", 1, 2.0), DropReason.SEND).result
    head = msgpack.packb({"v": VERSION, "kind": "frame", "src": "c", "seq": 1, "ts": 2.0, "no_emotions": "newer"})
    out = decode([head])
    assert out.kind == "frame" and out.no_emotions == DropReason.UNKNOWN


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 1), (480, 640, 3)])
def test_image_shapes(shape: tuple[int, int, int]) -> None:
    img = np.zeros(shape, np.uint8)
    assert roundtrip(Frame("s", 0, 0.0, pixels=img)).image.shape == shape


def test_grey_2d_image_travels_as_one_channel() -> None:
    assert roundtrip(Frame("s", 0, 0.0, pixels=np.zeros((4, 4), np.uint8))).image.shape == (4, 4, 1)


def test_empty_crops_and_markers() -> None:
    assert roundtrip(Frame("s", 0, 0.0, crops=np.zeros((0, 48, 48, 1), np.uint8))).crops.shape == (0, 48, 48, 1)
    drop = roundtrip(Drop("s", 3, 1.0, reason="stale"))
    assert (drop.kind, drop.reason) == ("drop", "stale")
    eos = roundtrip(Eos("s", 9, 1.0, frames=10, dropped=1))
    assert (eos.kind, eos.frames, eos.dropped) == ("eos", 10, 1)


def test_jpeg_transport() -> None:
    img = np.full((32, 32, 3), 128, np.uint8)
    out = roundtrip(Frame("s", 0, 0.0, pixels=img), jpeg_quality=90)
    assert out.image.shape == (32, 32, 3) and abs(int(out.image.mean()) - 128) <= 2
    assert isinstance(out.pixels, Jpeg)
    again = encode(out)  # a JPEG goes on as the file it came as, not re-encoded nor sent raw
    assert bytes(again[1]) == out.pixels.data


def test_unknown_header_keys_are_ignored() -> None:
    header = msgpack.packb({"v": VERSION, "kind": "frame", "src": "s", "seq": 1, "ts": 0.0, "future": [1, 2]})
    assert decode([header]).seq == 1


def header(**kw) -> bytes:
    base = {"v": VERSION, "kind": "frame", "src": "s", "seq": 1, "ts": 0.0}
    base.update(kw)
    return msgpack.packb({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [b"\xc1garbage"],
        [b"\x93\x01\x02\x03"],  # a msgpack array, not a map
        [header(v=2)],
        [header(kind="bogus")],
        [header(src="")],
        [header(seq=-1)],
        [header(seq="1")],
        [header(ts="now")],
        [header(image={"shape": [2, 2, 3], "fmt": "bgr8"})],  # pixel frame missing
        [header(image={"shape": [2, 2, 3], "fmt": "bgr8"}), b"\x00" * 11],  # wrong size
        [header(image={"shape": [100000, 2, 3], "fmt": "bgr8"}), b""],  # huge declared size
        [header(image={"shape": [2, 2, 2], "fmt": "bgr8"}), b"\x00" * 8],  # 2 channels
        [header(image={"shape": [2, 2, 3], "fmt": "png"}), b"\x00" * 12],
        [header(image={"shape": [2, 2, 3], "fmt": "jpeg"}), b"notajpeg"],
        [header(crops={"n": 1, "size": 48, "ch": 1}), b"\x00" * 10],
        [header(crops={"n": 1, "size": 48, "ch": 1}), b"\x00" * 2304],  # crops but no faces
        [header(faces=[{"box": [1, 2, 3]}])],
        [header(faces=[{"box": [1, 2, 3, "x"]}])],
        [header(faces="nope")],
        [header(labels=[1, 2])],
        [header(kind="eos", frames=-3)],
        [header(), b"extra frame"],
        [b"\x00" * (2 << 20)],
    ],
)
def test_garbage_raises_codec_error(parts: list[bytes]) -> None:
    with pytest.raises(CodecError):
        decode(parts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_bytes_never_raise_anything_else(parts: list[bytes]) -> None:
    with contextlib.suppress(CodecError):  # any other exception type fails the test
        decode(parts)


REF = ShmRef("emostream-123-1-0123abcd", 3, 7, (480, 640, 3))


def test_shared_memory_reference_travels_without_pixels() -> None:
    img = np.zeros((480, 640, 3), np.uint8)  # the detector's in-place view: the reference wins
    parts = encode(Frame("s", 5, 1.0, pixels=replace(REF, view=img)))
    assert len(parts) == 1, "no pixel frame for a frame in shared memory"
    assert msgpack.unpackb(parts[0])["image"] == {
        "shape": [480, 640, 3],
        "fmt": "shm",
        "ring": REF.ring,
        "slot": 3,
        "gen": 7,
    }
    out = decode([bytes(p) for p in parts])
    assert out.kind == "frame" and out.pixels == REF and out.shm == REF and out.image is None
    crops = np.zeros((1, 48, 48, 1), np.uint8)
    faces = [Face((1, 2, 3, 4), 0.9)]
    parts = encode(Frame("s", 5, 1.0, faces=faces, crops=crops, pixels=REF))
    assert len(parts) == 2 and decode(parts).crops.shape == (1, 48, 48, 1)


def test_drop_marker_keeps_the_shared_memory_reference() -> None:
    msg = Frame("s", 5, 1.0, live=True, t={"capture": 1.0}, pixels=replace(REF, view=np.zeros((2, 2, 3), np.uint8)))
    marker = drop_marker(msg, "stale")
    assert (marker.kind, marker.reason, marker.shm, marker.live) == ("drop", "stale", REF, True)
    assert marker.shm.view is None, "a marker keeps the reference, never the pixels"
    marker.t["x"] = 2.0
    assert msg.t == {"capture": 1.0}, "the marker's stamps are a copy"
    out = roundtrip(marker)
    assert (out.kind, out.reason, out.shm) == ("drop", "stale", REF)


def shm_image(**kw) -> dict:
    spec = {"shape": [4, 4, 3], "fmt": "shm", "ring": REF.ring, "slot": 0, "gen": 1}
    spec.update(kw)
    return spec


@pytest.mark.parametrize(
    "parts",
    [
        [header(image=shm_image(slot=-1))],
        [header(image=shm_image(slot=5000))],
        [header(image=shm_image(slot=True))],
        [header(image=shm_image(gen="1"))],
        [header(image=shm_image(gen=-1))],
        [header(image=shm_image(gen=None))],
        [header(image=shm_image(ring=""))],
        [header(image=shm_image(ring="r" * 100))],
        [header(image=shm_image(ring=5))],
        [header(image=shm_image(shape=[4, 4]))],
        [header(image=shm_image(shape=[0, 4, 3]))],
        [header(image=shm_image(shape=[4, 4, 2]))],
        [header(image=shm_image(shape="4x4"))],
        [header(image=shm_image()), b"\x00" * 48],  # a pixel frame besides the reference
    ],
)
def test_garbage_shared_memory_references_raise_codec_error(parts: list[bytes]) -> None:
    with pytest.raises(CodecError):
        decode(parts)


# The types: one class per kind, one pixel field, and the header validated through them.


def test_a_drop_cannot_carry_pixels() -> None:
    with pytest.raises(TypeError):
        Drop("s", 1, 1.0, pixels=np.zeros((2, 2, 3), np.uint8))  # type: ignore[call-arg]
    img = {"shape": [2, 2, 3], "fmt": "bgr8"}
    with pytest.raises(CodecError, match="image"):
        decode([header(kind="drop", reason="stale", image=img), b"\x00" * 12])
    shm = {"shape": [2, 2, 3], "fmt": "shm", "ring": "r", "slot": 0, "gen": 1}
    assert decode([header(kind="drop", reason="stale", image=shm)]).shm == ShmRef("r", 0, 1, (2, 2, 3))


@pytest.mark.parametrize(
    "parts",
    [
        [header(kind=None)],  # the kind is the tag: no default
        [header(kind="eos", frames=1), b"\x00" * 12],  # an end of stream has no pixels
        [header(kind="drop", reason="stale"), b"\x00" * 12],
        [header(seq=True)],  # a bool is not an int
        [header(kind="eos", frames=False)],
        [header(ts=True)],  # nor a number
        [header(faces=[{"box": [1.0, 2.0, 3.0, True]}])],
        [header(live=1)],
        [header(faces=[{"box": [1, 2, 3, 4], "uncertain": 0}])],
        [header(labels=["a", ""])],
        [header(path="a\nb")],
        [header(image={"shape": [2, 2, 3], "fmt": "shm", "ring": "r", "slot": 0, "gen": 1}), b"\x00" * 12],
    ],
)
def test_the_types_refuse(parts: list[bytes]) -> None:
    with pytest.raises(CodecError):
        decode(parts)


def test_a_drop_reason_this_reader_does_not_know_is_unknown() -> None:
    assert decode([header(kind="drop", reason="from_the_future")]).reason == DropReason.UNKNOWN
    assert decode([header(kind="drop")]).reason == DropReason.UNKNOWN


def test_numpy_scalars_encode_as_numbers() -> None:
    face = Face(
        (np.float32(1.5), 2, 3, 4), np.float32(0.25), [(np.float64(1), 1)], "a", [np.float32(0.5)], np.bool_(True)
    )
    out = roundtrip(Frame("s", np.int64(3), np.float64(1.0), faces=[face]))
    assert out.seq == 3 and out.faces == [Face((1.5, 2.0, 3.0, 4.0), 0.25, [(1.0, 1.0)], "a", [0.5], True)]


def test_what_cannot_be_encoded_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        encode(Frame("s", 1, 1.0, faces=[Face((object(), 0, 1, 1))]))  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        encode("not a message")  # type: ignore[arg-type]


def test_one_face_object_in_json() -> None:
    face = Face((1.04, 2.0, 3.0, 4.0), 0.91234, [(1.0, 1.0)], "b", [0.25, 0.75], False)
    assert face.to_json(["a", "b"]) == {
        "box": [1.0, 2.0, 3.0, 4.0],
        "score": 0.9123,
        "kp": [[1.0, 1.0]],
        "label": "b",
        "probs": {"a": 0.25, "b": 0.75},
        "uncertain": False,
    }
    assert Face((0, 0, 1, 1), 0.5).to_json() == {
        "box": [0.0, 0.0, 1.0, 1.0],
        "score": 0.5,
        "kp": [],
        "label": None,
        "probs": {},
        "uncertain": False,
    }


def test_a_thumbnail_travels_after_the_crops_and_comes_back_the_same() -> None:
    thumb = np.random.default_rng(1).integers(0, 256, THUMB, dtype=np.uint8)
    crops = np.zeros((1, 8, 8, 1), np.uint8)
    msg = Frame("s", 1, 1.0, faces=[Face((1, 2, 3, 4))], crops=crops, thumb=thumb, wait=True)
    parts = encode(msg)
    assert len(parts) == 3 and bytes(parts[2]) == thumb.tobytes()  # header, crops, thumb: no pixels
    out = roundtrip(msg)
    assert out.kind == "frame" and out.pixels is None and out.wait
    assert out.thumb is not None and out.thumb.dtype == np.uint8 and np.array_equal(out.thumb, thumb)
    assert roundtrip(Frame("s", 1, 1.0)).thumb is None  # absent unless sent


@pytest.mark.parametrize(
    "thumb",
    [np.zeros((64, 48), np.uint8), np.zeros((48, 64, 1), np.uint8), np.zeros(THUMB, np.float32), [[0] * 64] * 48],
)
def test_a_thumbnail_that_is_not_48x64_uint8_is_not_encoded(thumb) -> None:
    with pytest.raises(CodecError, match=r"^thumb: must be a 48x64 uint8 grey array") as e:
        encode(Frame("s", 1, 1.0, thumb=thumb))
    assert len(e.value.args) == 1


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ([header(thumb={"shape": [64, 48]}), b"\x00" * 3072], r"^thumb\.shape\[0\]: "),
        ([header(thumb={"shape": [48, 64, 1]}), b"\x00" * 3072], r"^thumb\.shape: "),
        ([header(thumb={}), b"\x00" * 3072], r"^thumb: "),
        ([header(thumb={"shape": [48, 64]}), b"\x00" * 3071], r"^thumb: 3071 bytes for 48x64"),
        ([header(thumb={"shape": [48, 64]}), b"\x00" * 6144], r"^thumb: 6144 bytes for 48x64"),  # 16-bit
        ([header(thumb={"shape": [48, 64]})], r"^thumb: expected a thumbnail frame"),
        ([header(thumb={"shape": [48, 64]}), b"\x00" * 3072, b"x"], r"unexpected extra frame"),
    ],
)
def test_a_bad_thumbnail_is_one_codec_error_naming_the_field(parts: list[bytes], error: str) -> None:
    with pytest.raises(CodecError, match=error):
        decode(parts)
