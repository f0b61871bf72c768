"""``python -m bench.fuzz_codec [--inputs N] [--seed S]``: throw garbage at ``bus.codec.decode``.

A plain random-mutation fuzzer (no extra dependency). Each input is one multipart message made by
one of these generators, in turn:

- ``random``: 1..4 parts of random bytes (0..600 bytes each);
- ``truncated``: a valid message (frame with image, crops and faces; drop; eos; JPEG frame) with a
  part cut short, a part missing, or an extra part;
- ``version``: a valid header with ``v`` set to another value (0, 2, -1, "1", None, 1.0, huge);
- ``huge``: a header declaring huge or negative sizes (image shape, crops n/size, face lists,
  strings, maps) with small buffers;
- ``mutated``: a valid message whose header bytes had 1..8 random byte flips, inserts or deletes;
- ``typed``: a valid header with one key replaced by a value of a random wrong type;
- ``jpeg``: a JPEG frame with flipped bytes, cut short, or declaring up to 65535 x 65535 pixels.

Decoding must either return a :class:`bus.codec.Message` or raise :class:`bus.codec.CodecError`;
any other exception is a crash, printed with the input (repr, cut to 300 characters). Prints inputs
run per generator, accepted, rejected, crashes, and one JSON line; exit 1 when anything crashed.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable

import click
import msgpack
import numpy as np

from bus.codec import VERSION, CodecError, Face, Message, decode, encode

Parts = list[bytes]


def valid_messages(rng: random.Random) -> list[Parts]:
    """A few valid messages of every kind to mutate."""
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    img = nrng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    faces = [Face((1.0, 2.0, 5.0, 6.0), 0.9, [(1.0, 1.0)] * 6, "happy", [0.2, 0.8]), Face((3, 3, 4, 4), 0.7)]
    msgs = [
        Message("cam0", 7, 1.5, live=True, image=img, faces=faces, crops=nrng.integers(0, 256, (2, 8, 8, 1), np.uint8)),
        Message("cam0", 8, 1.6, image=img[:, :, :1], labels=["sad", "happy"], faces=faces[:1], t={"capture": 1.0}),
        Message("s", 3, 2.0, kind="drop", reason="stale", t={"capture": 1.0, "detector": 1.1}),
        Message("s", 9, 3.0, kind="eos", frames=10, dropped=1),
    ]
    out = [[bytes(p) for p in encode(m)] for m in msgs]
    out.append([bytes(p) for p in encode(Message("j", 1, 0.0, image=img), jpeg_quality=70)])
    return out


def _random(rng: random.Random, _valid: list[Parts]) -> Parts:
    return [rng.randbytes(rng.randrange(0, 600)) for _ in range(rng.randrange(1, 5))]


def _truncated(rng: random.Random, valid: list[Parts]) -> Parts:
    parts = list(rng.choice(valid))
    action = rng.randrange(3)
    if action == 0:  # cut one part short
        i = rng.randrange(len(parts))
        parts[i] = parts[i][: rng.randrange(0, max(1, len(parts[i])))]
    elif action == 1 and len(parts) > 1:  # lose a part
        del parts[rng.randrange(len(parts))]
    else:  # one part too many
        parts.insert(rng.randrange(1, len(parts) + 1), rng.randbytes(rng.randrange(0, 64)))
    return parts


def _header(parts: Parts) -> dict:
    h = msgpack.unpackb(parts[0], raw=False)
    assert isinstance(h, dict)
    return h


def _version(rng: random.Random, valid: list[Parts]) -> Parts:
    parts = list(rng.choice(valid))
    h = _header(parts)
    h["v"] = rng.choice([0, VERSION + 1, -1, str(VERSION), None, float(VERSION) + 0.5, 2**63 - 1, [VERSION], True])
    return [msgpack.packb(h, use_bin_type=True), *parts[1:]]


BIG = [2**31, 2**32 + 1, 2**62, -(2**31), -1, 10**6, 8193, 65536]


def _huge(rng: random.Random, valid: list[Parts]) -> Parts:
    parts = list(rng.choice(valid[:2]))
    h = _header(parts)
    what = rng.randrange(5)
    if what == 0:
        h["image"] = {"shape": [rng.choice(BIG), rng.choice([1, *BIG]), rng.choice([1, 3, *BIG])], "fmt": "bgr8"}
    elif what == 1:
        h["crops"] = {"n": rng.choice(BIG), "size": rng.choice([8, *BIG]), "ch": rng.choice([1, *BIG])}
    elif what == 2:
        h["faces"] = [{"box": [1, 2, 3, 4], "score": 1.0}] * rng.choice([257, 1000, 4000])
    elif what == 3:
        h["src"] = "x" * rng.choice([129, 10_000, 500_000])
    else:
        h["t"] = {f"k{i}": float(i) for i in range(rng.choice([257, 2000]))}
    return [msgpack.packb(h, use_bin_type=True), *parts[1:]]


def _mutated(rng: random.Random, valid: list[Parts]) -> Parts:
    parts = list(rng.choice(valid))
    head = bytearray(parts[0])
    for _ in range(rng.randrange(1, 9)):
        op = rng.randrange(3)
        i = rng.randrange(len(head) + 1)
        if op == 0 and head:
            head[min(i, len(head) - 1)] = rng.randrange(256)
        elif op == 1:
            head[i:i] = bytes([rng.randrange(256)])
        elif head:
            del head[min(i, len(head) - 1)]
    return [bytes(head), *parts[1:]]


WRONG = [
    None,
    True,
    -3,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x",
    b"\x00",
    [],
    [1, "a"],
    {},
    {"a": 1},
]


def _typed(rng: random.Random, valid: list[Parts]) -> Parts:
    parts = list(rng.choice(valid))
    h = _header(parts)
    key = rng.choice([*h.keys(), "faces", "labels", "t", "reason", "frames", "dropped", "image", "crops"])
    h[key] = rng.choice(WRONG)
    if "faces" in h and isinstance(h["faces"], list) and h["faces"] and rng.random() < 0.5:
        face = dict(h["faces"][0]) if isinstance(h["faces"][0], dict) else {}
        face[rng.choice(["box", "score", "kp", "label", "probs"])] = rng.choice(WRONG)
        h["faces"] = [face]
    return [msgpack.packb(h, use_bin_type=True), *parts[1:]]


def _jpeg(rng: random.Random, valid: list[Parts]) -> Parts:
    head, data = valid[-1]  # the JPEG frame
    buf = bytearray(data)
    if rng.random() < 0.5:  # a picture size the header never promised: up to 65535 x 65535
        sof = buf.find(b"\xff\xc0")
        buf[sof + 5 : sof + 9] = rng.randrange(65536).to_bytes(2, "big") + rng.randrange(65536).to_bytes(2, "big")
    for _ in range(rng.randrange(0, 6)):
        i = rng.randrange(len(buf))
        buf[i] = rng.randrange(256)
    return [head, bytes(buf[: rng.randrange(len(buf) // 2, len(buf) + 1)])]


GENERATORS: dict[str, Callable[[random.Random, list[Parts]], Parts]] = {
    "random": _random,
    "truncated": _truncated,
    "version": _version,
    "huge": _huge,
    "mutated": _mutated,
    "typed": _typed,
    "jpeg": _jpeg,
}


def fuzz(inputs: int, seed: int) -> dict:
    """Run ``inputs`` inputs; returns counts and the first crashes (at most 10)."""
    rng = random.Random(seed)
    valid = valid_messages(rng)
    names = list(GENERATORS)
    runs: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    crashes: list[dict[str, str]] = []
    crash_count = 0
    t0 = time.perf_counter()
    for i in range(inputs):
        name = names[i % len(names)]
        parts = GENERATORS[name](rng, valid)
        runs[name] += 1
        try:
            decode(parts)
            accepted[name] += 1
        except CodecError:
            pass
        except Exception as e:  # the finding: anything but CodecError is a crash (reported, not hidden)
            crash_count += 1
            if len(crashes) < 10:
                crashes.append(
                    {
                        "generator": name,
                        "error": f"{type(e).__name__}: {e}",
                        "input": repr(parts)[:300],
                        "where": traceback.format_exc(limit=-1).strip().splitlines()[-2].strip(),
                    }
                )
    return {
        "inputs": inputs,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "per_generator": dict(runs),
        "accepted": sum(accepted.values()),
        "rejected": inputs - sum(accepted.values()) - crash_count,
        "crashes": crash_count,
        "first_crashes": crashes,
    }


@click.command()
@click.option("--inputs", type=click.IntRange(min=1), default=100_000, show_default=True, help="How many inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (a run is reproducible).")
def main(inputs: int, seed: int) -> None:
    """Fuzz bus.codec.decode with random, truncated, wrong-version, huge and mutated messages."""
    r = fuzz(inputs, seed)
    for name, n in r["per_generator"].items():
        click.echo(f"{name:10s} {n:8d} inputs")
    click.echo(
        f"inputs run {r['inputs']}  accepted {r['accepted']}  rejected (CodecError) {r['rejected']}  "
        f"crashes {r['crashes']}  ({r['seconds']} s)"
    )
    for c in r["first_crashes"]:
        click.echo(f"CRASH [{c['generator']}] {c['error']} at {c['where']}\n  input: {c['input']}")
    click.echo(json.dumps(r))
    sys.exit(1 if r["crashes"] else 0)


if __name__ == "__main__":
    main()
