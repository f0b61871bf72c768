"""The fuzzing harness (bench/fuzz.py): a short libFuzzer run on every test run (the long run's
figures are in docs/operations.md), and its inputs reach deep into the message handling."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("atheris")

from bench.fuzz import Targets, build, fuzz, one
from bus.codec import CodecError, decode

pytestmark = pytest.mark.timeout(300)


def test_a_short_fuzz_run_has_no_crash(tmp_path: Path) -> None:
    r = fuzz(3000, jobs=1, seed=11, artifacts=tmp_path)
    assert (r["inputs"], r["crashes"]) == (3000, 0), r["first_crash"]
    assert not list(tmp_path.glob("crash-*"))


def test_inputs_reach_every_kind_of_valid_message() -> None:
    """Random bytes through build(): a good share decodes, with every kind, faces, images, crops."""
    rng = np.random.default_rng(5)
    seen: Counter[str] = Counter()
    t = Targets()
    for _ in range(3000):
        parts = build(rng.bytes(int(rng.integers(0, 400))))
        one(t, parts)  # raises on a crash
        try:
            m = decode(parts)
        except CodecError:
            seen["rejected"] += 1
            continue
        seen[m.kind] += 1
        if m.kind == "frame":
            seen["faces"] += bool(m.faces)
            seen["image"] += m.image is not None
            seen["crops"] += m.crops is not None
            seen["probs"] += any(f.probs for f in m.faces)
    assert all(seen[k] > 0 for k in ("frame", "drop", "eos", "faces", "image", "crops", "probs")), seen
    assert 0.05 < seen["rejected"] / 3000 < 0.95, seen


def test_a_non_json_events_record_is_a_crash() -> None:
    t = Targets()
    t.strict.bad.append("NaN in an events record")
    with pytest.raises(AssertionError, match="NaN"):
        one(t, [b""])
