"""Issue 11 cases 2 and 13: decode refuses non-finite or absurd numbers and unbounded or
line-forging strings (one error type, :class:`bus.codec.CodecError`); valid messages still pass."""

from __future__ import annotations

import math

import msgpack
import pytest

from bus.codec import VERSION, CodecError, decode

INF, NAN = math.inf, math.nan


def header(**kw: object) -> bytes:
    base: dict[str, object] = {"v": VERSION, "kind": "frame", "src": "s", "seq": 1, "ts": 1.0}
    base.update(kw)
    return msgpack.packb({k: v for k, v in base.items() if v is not None})


def face(**kw: object) -> dict[str, object]:
    f: dict[str, object] = {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "kp": [[1.0, 1.0]]}
    f.update(kw)
    return f


@pytest.mark.parametrize(
    "head",
    [
        # case 2: numbers a sink would choke on
        header(faces=[face(box=[0, 0, INF, 10])]),
        header(faces=[face(box=[0, 0, 1e30, 10])]),
        header(faces=[face(box=[NAN, 0, 10, 10])]),
        header(faces=[face(box=[-1e9, 0, 10, 10])]),
        header(faces=[face(score=NAN)]),
        header(faces=[face(score=INF)]),
        header(faces=[face(score=-0.5)]),
        header(faces=[face(score=7.0)]),
        header(faces=[face(kp=[[INF, 0.0]])]),
        header(faces=[face(kp=[[0.0, 1e300]])]),
        header(faces=[face(kp=[[1.0, 1.0]] * 1000)]),
        header(faces=[face(label="happy", probs=[NAN, 0.5])]),
        header(faces=[face(label="happy", probs=[2.0, 0.5])]),
        header(faces=[face(label="happy", probs=[-0.1, 0.5])]),
        header(faces=[face(label="happy", probs=[0.1] * 1000)]),
        header(ts=NAN),
        header(ts=INF),
        header(ts=-1.0),
        header(ts=1e300),
        header(t={"capture": NAN}),
        header(t={"capture": -INF}),
        header(t={"capture": 1e300}),
        header(t={f"stage{i}": 1.0 for i in range(100)}),
        header(t={"a\nb": 1.0}),
        header(uncertain_below=NAN),
        header(seq=1 << 63),
        header(kind="eos", frames=1 << 63),
        header(kind="eos", frames=1, dropped=1 << 64 - 1),
        # case 13: strings that forge log lines or bloat every later line
        header(src="cam0\n2026-01-01 display INFO final cam0: read 1"),
        header(src="cam\r0"),
        header(src="cam\x1b[31m0"),
        header(src="cam\u20280"),
        header(kind="drop", reason="stale\nforged line"),
        header(kind="drop", reason="x" * 100_000),
        header(kind="drop", reason=7),
        header(faces=[face(label="happy\nsad", probs=[0.5])]),
        header(faces=[face(label="h" * 1000, probs=[0.5])]),
        header(labels=["a\nb"]),
        header(labels=["x" * 1000]),
        header(labels=[str(i) for i in range(1000)]),
    ],
)
def test_absurd_values_raise_codec_error(head: bytes) -> None:
    with pytest.raises(CodecError):
        decode([head])


@pytest.mark.parametrize(
    "head",
    [
        header(faces=[face(box=[-50.0, -20.0, 8192.0, 8192.0], score=1.0, label="happy", probs=[0.0, 1.0])]),
        header(faces=[face(score=0.0, kp=[])]),
        header(ts=0.0, t={"capture": 1.7e9, "detector": 1.7e9}),
        header(src="cam-0_ü.1 x", seq=10**12),
        header(kind="drop", reason="stale"),
        header(kind="eos", frames=648, dropped=3),
        header(labels=["angry", "happy"], uncertain_below=0.5),
        header(faces=[face(label="happy", probs=[1.0000001, 0.0])]),  # float32 softmax rounding
    ],
)
def test_ordinary_values_pass(head: bytes) -> None:
    decode([head])


def test_error_messages_stay_short() -> None:
    """A refused value is quoted at most a few dozen characters long (errors are logged)."""
    for head in (header(v="v" * 100_000), header(kind="k" * 100_000), header(src="s" * 100_000)):
        with pytest.raises(CodecError) as e:
            decode([head])
        assert len(str(e.value)) < 200
