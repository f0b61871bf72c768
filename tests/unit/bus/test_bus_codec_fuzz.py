"""A short run of bench/fuzz_codec.py on every test run (the full run is 210,000 inputs; see
docs/operations.md): every generator makes inputs, none crashes decode, and valid messages survive."""

from __future__ import annotations

import random

from bench.fuzz_codec import GENERATORS, fuzz, valid_messages
from bus.codec import decode


def test_a_short_fuzz_run_has_no_crash() -> None:
    r = fuzz(len(GENERATORS) * 300, seed=3)
    assert r["crashes"] == 0, r["first_crashes"]
    assert set(r["per_generator"]) == set(GENERATORS) and r["rejected"] > r["accepted"] > 0


def test_the_seed_messages_are_valid() -> None:
    assert [decode(parts).kind for parts in valid_messages(random.Random(0))] == [
        "frame",
        "frame",
        "drop",
        "eos",
        "frame",
    ]
