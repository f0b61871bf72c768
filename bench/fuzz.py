"""``python -m bench.fuzz [--inputs N] [--jobs J] [--seed S]``: coverage-guided fuzzing (atheris,
libFuzzer) of the codec and of each stage's per-message code; any exception is a crash.

Every input goes through four targets, in this order:

- ``decode``: :func:`bus.codec.decode` returns a :class:`~bus.codec.Message` or raises
  :class:`~bus.codec.CodecError`; anything else is a crash.
- ``detector``: what :func:`bus.stage.run` does with one message for the detector:
  :func:`bus.stage.receive` (garbage counted), :func:`bus.stage.handle` (pixels in place, age,
  ``step`` with a fake backend that returns the message's own faces as its detections, so crops
  are cut at fuzzed boxes), then ``encode`` of the result (a CodecError there is counted by the
  stage's :class:`bus.stage.Sender`).
- ``classifier``: the same for the classifier: ``receive``, ``handle`` with ``step`` on a fake
  3-label model on 8x8 grey crops (ValueError/RuntimeError become ``classify_error`` drops),
  ``encode``.
- ``display``: :meth:`display.worker.Display.handle` itself, with its state kept across inputs as
  in a running stage (ledger, sequence windows, source eviction, tracking, smoothing, drawing), an
  events sink writing to ``/dev/null`` and a sink that fails the run when an events record is not
  strict JSON (NaN, infinity) or an annotated image is not 8-bit BGR. ``handle`` must not raise.

An input is libFuzzer's byte string turned into one multipart message by :func:`build` (through
atheris' ``FuzzedDataProvider``, so libFuzzer's mutations and coverage feedback steer the fields):
raw parts; a valid message with byte edits; or a header whose every key is absent, plausible, one
of :data:`BAD_VALUES` (NaN, infinities, 2**63, control characters, wrong types) or any scalar,
with pixel, JPEG and crop buffers that mostly fit what it declares.

``--jobs J`` runs J libFuzzer processes (seeds S..S+J-1) of N/J inputs each and sums them; the
summary is one line and one JSON line (inputs, crashes, wall time, the command). A crash stops that
process with libFuzzer's report, the Python traceback and the input saved as ``crash-*`` in
``--artifacts``; the run exits 1. ``tests/unit/bench/test_bench_fuzz.py`` runs a short version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgpack
import msgspec
import numpy as np

from bus.codec import VERSION, CodecError, Drop, DropReason, Eos, Face, Frame, Message, decode, encode
from bus.config import Config, SourceConfig, validate
from bus.runtime import RateLimited, Stats
from bus.shm import Rings
from bus.sidecar import ModelSpec
from bus.stage import handle, receive
from classifier import worker as classifier_worker
from detector import worker as detector_worker
from display.sinks import EventsSink
from display.worker import Display

Parts = list[bytes]
LOG = logging.getLogger("fuzz")
LOG.addHandler(logging.NullHandler())
LOG.propagate = False
SOURCES = ("cam0", "cam1", "s")
BAD_VALUES: list[Any] = [
    None, True, False, -1, 0, 1, 2, 255, 1 << 31, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -(1 << 63),
    math.nan, math.inf, -math.inf, 1e30, -1e30, 1e308, -0.0, 0.5,
    "", "x", "a\nb", "\r", "\x1b[2J", "\u2028", "ü", "x" * 200, b"", b"\x00" * 8,
    [], [1], [1, 2, 3], [math.nan] * 4, ["a"], [[1, 2]], {}, {"a": 1}, {"shape": [1, 1, 3]},
]  # fmt: skip
ABSENT = object()

# --- inputs -----------------------------------------------------------------------------------


class Draw:
    """Typed choices from libFuzzer's bytes (atheris' FuzzedDataProvider)."""

    def __init__(self, data: bytes):
        import atheris

        self.fdp = atheris.FuzzedDataProvider(data)

    def integer(self, lo: int, hi: int) -> int:
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def pick(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.integer(0, len(options) - 1)]

    def real(self, lo: float, hi: float) -> float:
        return float(self.fdp.ConsumeFloatInRange(lo, hi))

    def bytes(self, n: int) -> bytes:
        return bytes(self.fdp.ConsumeBytes(n))

    def text(self, n: int) -> str:
        return str(self.fdp.ConsumeUnicodeNoSurrogates(self.integer(0, n)))

    def value(self, plausible: Any) -> Any:
        """Mostly ``plausible()``; sometimes absent, a bad value, or any scalar. (Choices are made so
        that an exhausted input, whose every draw is the lowest, keeps making plausible values.)"""
        c = self.integer(0, 63)
        if c == 61:
            return ABSENT
        if c == 62:
            return self.pick(BAD_VALUES)
        if c == 63:
            return self.pick([lambda: self.fdp.ConsumeInt(9), lambda: self.fdp.ConsumeFloat(), lambda: self.text(8)])()
        return plausible()

    def coord(self) -> float:
        return self.real(-50.0, 100.0) if self.integer(0, 31) < 31 else float(self.fdp.ConsumeFloat())

    def prob(self) -> float:
        return self.real(0.0, 1.0) if self.integer(0, 31) < 31 else float(self.fdp.ConsumeFloat())

    def items(self, n: int, make: Any) -> list[Any]:
        return [make() for _ in range(self.integer(0, n))]


def _header(d: Draw) -> dict[str, Any]:
    def face() -> dict[str, Any]:
        f = {
            "box": d.value(lambda: [d.coord() for _ in range(4)]),
            "score": d.value(d.prob),
            "kp": d.value(lambda: d.items(7, lambda: [d.coord(), d.coord()])),
            "label": d.value(lambda: d.pick(["a", "b", "c", "happy"])),
            "probs": d.value(lambda: d.items(4, d.prob)),
            "uncertain": d.value(lambda: bool(d.integer(0, 1))),
        }
        return {k: v for k, v in f.items() if v is not ABSENT}

    fields = {
        "v": d.value(lambda: VERSION),
        "kind": d.value(lambda: d.pick(["frame", "frame", "frame", "drop", "eos"])),
        "src": d.value(lambda: d.pick(SOURCES) if d.integer(0, 7) < 7 else d.text(140)),
        "seq": d.value(
            lambda: d.integer(0, 60) if d.integer(0, 7) < 7 else d.pick([10**12, (1 << 63) - 1, 5000, 200_000])
        ),
        "ts": d.value(lambda: d.real(1.7e9 - 2, 1.7e9 + 2) if d.integer(0, 3) < 3 else d.real(0.0, 1.2e10)),
        "live": d.value(lambda: bool(d.integer(0, 1))),
        "image": d.value(
            lambda: {
                "shape": d.value(lambda: [d.integer(1, 24), d.integer(1, 24), d.pick([1, 3])]),
                "fmt": d.value(lambda: d.pick(["bgr8", "bgr8", "jpeg", "shm"])),
                "ring": d.value(lambda: d.text(70)),
                "slot": d.value(lambda: d.integer(0, 5000)),
                "gen": d.value(lambda: d.integer(0, 9)),
            }
        ),
        "crops": d.value(
            lambda: {
                "n": d.value(lambda: d.integer(0, 4)),
                "size": d.value(lambda: d.pick([8, 8, 4])),
                "ch": d.value(lambda: d.pick([1, 1, 3])),
            }
        ),
        "faces": d.value(lambda: d.items(4, face)),
        "labels": d.value(
            lambda: d.pick([["a", "b", "c"], ["a", "b"], []]) if d.integer(0, 3) < 3 else d.items(4, lambda: d.text(70))
        ),
        "uncertain_below": d.value(d.prob),
        "t": d.value(
            lambda: {
                d.pick(["capture", "detector", "x"]): d.value(lambda: d.real(0.0, 2e9)) for _ in range(d.integer(0, 3))
            }
        ),
        "reason": d.value(lambda: d.pick(["stale", "send", "x"]) if d.integer(0, 3) < 3 else d.text(100)),
        "frames": d.value(lambda: d.integer(0, 100)),
        "dropped": d.value(lambda: d.integer(0, 100)),
    }
    h: dict[str, Any] = {}
    for k, v in fields.items():
        if isinstance(v, dict):
            v = {kk: vv for kk, vv in v.items() if vv is not ABSENT}
        if isinstance(v, dict) and k == "t":
            v = {kk: vv for kk, vv in v.items() if vv is not ABSENT}
        if v is not ABSENT:
            h[k] = v
    crops, faces = h.get("crops"), h.get("faces", [])
    if isinstance(crops, dict) and isinstance(faces, list) and d.integer(0, 7) < 7:
        crops["n"] = len(faces)  # mostly one crop per face, as the detector sends
    return h


def _buffer(d: Draw, spec: Any, n: int | None) -> bytes:
    if isinstance(spec, dict) and spec.get("fmt") == "jpeg":
        return _jpeg(d)
    if n is not None and 0 <= n <= 1 << 16 and d.integer(0, 15) < 15:
        return d.bytes(n).ljust(n, b"\x80")
    return d.bytes(d.integer(0, 64))


def _size(spec: Any, crops: bool) -> int | None:
    """Bytes a buffer should have for a (plausible) image or crops spec, else None."""
    try:
        if not crops:
            h, w, c = spec["shape"]
            return int(h) * int(w) * int(c)
        return int(spec["n"]) * int(spec["size"]) ** 2 * int(spec["ch"])
    except (TypeError, KeyError, ValueError, OverflowError):
        return None


def _valid() -> list[Parts]:
    img = (np.arange(12 * 16 * 3) % 251).astype(np.uint8).reshape(12, 16, 3)
    faces = [Face((1.0, 2.0, 5.0, 6.0), 0.9, [(1.0, 1.0)] * 6, "a", [0.2, 0.3, 0.5]), Face((3, 3, 4, 4), 0.7)]
    crops = np.zeros((2, 8, 8, 1), np.uint8)
    ts = 1.7e9
    msgs: list[Message] = [
        Frame("cam0", 7, ts, live=True, faces=faces, crops=crops, pixels=img),
        Frame("cam0", 8, ts, labels=["a", "b", "c"], faces=faces[:1], t={"capture": ts}, pixels=img[:, :, :1]),
        Drop("s", 3, ts, reason=DropReason.STALE, t={"capture": ts, "detector": ts}),
        Eos("s", 9, ts, frames=10, dropped=1),
    ]
    out = [[bytes(p) for p in encode(m)] for m in msgs]
    out.append([bytes(p) for p in encode(Frame("cam1", 1, ts, pixels=img), jpeg_quality=70)])
    return out


VALID = _valid()
JPEG = VALID[-1][1]
SOF = JPEG.index(b"\xff\xc0")


def _jpeg(d: Draw) -> bytes:
    raw, c = JPEG, d.integer(0, 3)
    if c == 1:  # cut short
        return raw[: d.integer(0, len(raw))]
    if c == 2:  # one byte changed
        at = d.integer(0, len(raw) - 1)
        return raw[:at] + d.bytes(1).ljust(1, b"\x00") + raw[at + 1 :]
    if c == 3:  # declares up to 65535 x 65535 pixels
        return (
            raw[: SOF + 5]
            + d.integer(0, 65535).to_bytes(2, "big")
            + d.integer(0, 65535).to_bytes(2, "big")
            + raw[SOF + 9 :]
        )
    return raw


def build(data: bytes) -> Parts:
    """libFuzzer's bytes -> one multipart message (see the module docstring)."""
    d = Draw(data)
    mode = d.integer(0, 5)
    if mode == 0:  # raw parts
        return [d.bytes(d.integer(0, 300)) for _ in range(d.integer(0, 4))]
    if mode == 1:  # a valid message with byte edits
        parts = list(d.pick(VALID))
        i = d.integer(0, len(parts) - 1)
        b = bytearray(parts[i])
        for _ in range(d.integer(1, 8)):
            at, op = d.integer(0, max(0, len(b) - 1)), d.integer(0, 2)
            if op == 0 and b:
                b[at] = d.integer(0, 255)
            elif op == 1:
                b.insert(at, d.integer(0, 255))
            elif b:
                del b[at]
        parts[i] = bytes(b)
        return parts
    h = _header(d)
    try:
        parts = [msgpack.packb(h, use_bin_type=True)]
    except (OverflowError, ValueError, TypeError):
        return [d.bytes(64)]
    for key in ("image", "crops"):
        if key in h and not (isinstance(h[key], dict) and h[key].get("fmt") == "shm"):
            parts.append(_buffer(d, h[key], _size(h[key], key == "crops")))
    if d.integer(0, 31) == 31:
        parts.append(d.bytes(16))  # one part too many
    return parts


# --- targets ----------------------------------------------------------------------------------


class FakeDetector:
    """Detects the message's own (fuzzed) faces, so crops are cut at fuzzed boxes."""

    excess = 0

    def __init__(self) -> None:
        self.faces: list[Face] = []

    def detect(self, bgr: np.ndarray) -> list[Face]:
        return list(self.faces)


class FakeModel:
    labels: tuple[str, ...] = ("a", "b", "c")
    size = 8
    channels = 1

    def classify(self, crops: np.ndarray) -> np.ndarray:
        x = crops.reshape(len(crops), -1).astype(np.float32).mean(axis=1, keepdims=True) / 255.0
        logits = np.concatenate([x, 1 - x, x * x], axis=1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True))


class StrictJsonSink:
    """Fails the run (not the display) when an events record is not strict JSON."""

    name = "strict_json"
    wants_image = True

    def __init__(self) -> None:
        self.bad: list[str] = []

    def write(self, msg: Message, image: np.ndarray | None, event: dict[str, Any]) -> None:
        try:
            json.dumps(event, allow_nan=False)
        except (ValueError, TypeError) as e:
            self.bad.append(f"{e}: {event!r}"[:300])
        if image is not None and (image.dtype != np.uint8 or image.ndim != 3):
            self.bad.append(f"annotated image {image.dtype} {image.shape}")

    def close(self) -> None:
        pass


def display_config() -> Config:
    cfg = Config()
    sources = tuple(SourceConfig(uri=f"{s}.mp4", id=s) for s in SOURCES[:2])
    cfg = msgspec.structs.replace(
        cfg,
        capture=msgspec.structs.replace(cfg.capture, sources=sources),
        display=msgspec.structs.replace(cfg.display, max_sources=8),
    )
    return validate(cfg)


class Targets:
    """The four targets, with their state kept across inputs (as in a running stage)."""

    def __init__(self) -> None:
        self.detector = FakeDetector()
        self.spec = ModelSpec("fuzz", FakeModel.labels, 8, "grey")
        self.model = FakeModel()
        self.rings = Rings()
        self.limited = RateLimited(LOG)
        self.stats = Stats(LOG, 1e9)
        self.strict = StrictJsonSink()
        self.display = Display(
            display_config(), [EventsSink(os.devnull), self.strict], Stats(LOG, 1e9), LOG, wall=lambda: 1.7e9
        )
        self.now = 0.0

    def decode(self, parts: Parts) -> bool:
        try:
            decode(parts)
        except CodecError:
            return False
        return True

    def detector_stage(self, parts: Parts) -> None:
        msg = receive(parts, self.stats, self.limited)
        if msg is None:
            return
        self.detector.faces = list(msg.faces) if msg.kind == "frame" else []
        out = handle(
            msg,
            lambda m: detector_worker.step(m, self.detector, self.spec),
            DropReason.DETECT_ERROR,
            1.7e9,
            500,
            self.stats,
            self.limited,
            self.rings,
        )
        if msg.shm is not None:
            self.rings.release(msg.shm)
        out.t["detector"] = 1.7e9
        with contextlib.suppress(CodecError):  # the Sender counts it and sends an `encode` marker
            encode(out, None)

    def classifier_stage(self, parts: Parts) -> None:
        msg = receive(parts, self.stats, self.limited)
        if msg is None:
            return
        out = handle(
            msg,
            lambda m: classifier_worker.step(m, self.model),
            DropReason.CLASSIFY_ERROR,
            1.7e9,
            500,
            self.stats,
            self.limited,
        )
        with contextlib.suppress(CodecError):  # as in the Sender: counted, an `encode` marker instead
            encode(out, None)

    def display_stage(self, parts: Parts) -> None:
        self.now += 0.01
        self.display.handle(parts, self.now)


def one(t: Targets, parts: Parts) -> None:
    """Every target on one input; raises on a crash (for libFuzzer)."""
    t.decode(parts)
    t.detector_stage(parts)
    t.classifier_stage(parts)
    t.display_stage(parts)
    if t.strict.bad:
        raise AssertionError("display: " + "; ".join(t.strict.bad))


def worker(runs: int, seed: int, artifacts: Path, max_len: int) -> None:
    """One libFuzzer process (does not return)."""
    import atheris

    targets = Targets()

    def test_one_input(data: bytes) -> None:
        one(targets, build(data))

    args = ["bench.fuzz", f"-runs={runs}", f"-seed={seed}", f"-max_len={max_len}", f"-artifact_prefix={artifacts}/"]
    args += ["-print_final_stats=1", "-rss_limit_mb=4096"]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


# Our packages are imported inside instrument_imports so that libFuzzer gets their coverage (and only
# theirs: instrumenting every loaded module took 3 minutes at start-up).
WORKER = """
import sys, atheris
with atheris.instrument_imports(include=["bus", "detector", "classifier", "display", "bench"]):
    import bench.fuzz
bench.fuzz.worker(int(sys.argv[1]), int(sys.argv[2]), __import__("pathlib").Path(sys.argv[3]), int(sys.argv[4]))
"""
DONE = re.compile(r"Done (\d+) runs in (\d+) second")
RSS = re.compile(r"stat::peak_rss_mb:\s+(\d+)")


def fuzz(inputs: int, jobs: int, seed: int, artifacts: Path, max_len: int = 4096) -> dict[str, Any]:
    """``jobs`` libFuzzer processes of ``inputs / jobs`` runs each; their figures summed."""
    artifacts.mkdir(parents=True, exist_ok=True)
    per = -(-inputs // jobs)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    start = time.monotonic()
    logs = [artifacts / f"fuzz-{seed + i}.log" for i in range(jobs)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as fh:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(per), str(seed + i), str(artifacts), str(max_len)],
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            )
    for p in procs:
        p.wait()
    outs = [log.read_text(errors="replace") for log in logs]
    runs = crashes = 0
    rss: list[int] = []
    first = ""
    for p, out in zip(procs, outs, strict=True):
        done = DONE.search(out)
        if p.returncode == 0 and done:
            runs += int(done.group(1))
        else:
            crashes += 1
            first = first or out[-4000:]
        rss += [int(m) for m in RSS.findall(out)]
    return {
        "inputs": runs,
        "crashes": crashes,
        "jobs": jobs,
        "wall_s": round(time.monotonic() - start, 1),
        "peak_rss_mb": max(rss, default=None),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "targets": ["decode", "detector", "classifier", "display"],
        "first_crash": first,
    }


@click.command()
@click.option("--inputs", type=click.IntRange(1), default=100_000, show_default=True, help="Inputs in all.")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="libFuzzer processes.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the first process.")
@click.option(
    "--artifacts",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("fuzz-artifacts"),
    show_default=True,
    help="Where crashing inputs are saved.",
)
@click.option("--max-len", type=click.IntRange(64), default=4096, show_default=True, help="Longest input (bytes).")
def main(inputs: int, jobs: int, seed: int, artifacts: Path, max_len: int) -> None:
    """Fuzz bus.codec.decode and the detector's, classifier's and display's message handling."""
    r = fuzz(inputs, jobs, seed, artifacts, max_len)
    if r["first_crash"]:
        print(r["first_crash"], file=sys.stderr)
    r["command"] = "python -m bench.fuzz " + shlex.join(sys.argv[1:])
    print(
        f"inputs {r['inputs']}  crashes {r['crashes']}  wall {r['wall_s']} s  jobs {jobs}  peak RSS {r['peak_rss_mb']} MB"
    )
    print(json.dumps({k: v for k, v in r.items() if k != "first_crash"}))
    sys.exit(1 if r["crashes"] else 0)


if __name__ == "__main__":
    main()
