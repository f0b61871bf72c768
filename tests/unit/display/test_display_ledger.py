from __future__ import annotations

import pytest

from display.worker import Ledger

# Events: ("f", src) frame with results, ("d", src, reason) drop marker, ("e", src, read, capture_dropped) eos,
# ("t", seconds) time passes. Each case: events, waiting sources, expected done, per-source (received, drops, lost).
CASES = [
    ("in-order", [("f", "a"), ("f", "a"), ("f", "a"), ("e", "a", 3, 0)], True, {"a": (3, {}, 0)}),
    ("eos-first", [("e", "a", 3, 0), ("f", "a"), ("f", "a"), ("f", "a")], True, {"a": (3, {}, 0)}),
    ("eos-before-last", [("f", "a"), ("e", "a", 3, 0), ("f", "a")], False, {"a": (2, {}, 1)}),
    (
        "drops-count",
        [("f", "a"), ("d", "a", "stale"), ("d", "a", "send_full"), ("e", "a", 3, 0)],
        True,
        {"a": (1, {"stale": 1, "send_full": 1}, 0)},
    ),
    ("capture-dropped", [("f", "a"), ("e", "a", 3, 2)], True, {"a": (1, {}, 0)}),
    ("no-eos", [("f", "a"), ("f", "a"), ("t", 99)], False, {"a": (2, {}, 0)}),
    ("lost-after-timeout", [("f", "a"), ("e", "a", 5, 0), ("t", 6)], True, {"a": (1, {}, 4)}),
    (
        "progress-resets-timeout",
        [("f", "a"), ("e", "a", 5, 0), ("t", 4), ("f", "a"), ("t", 4)],
        False,
        {"a": (2, {}, 3)},
    ),
    ("two-sources-one-ended", [("f", "a"), ("e", "a", 1, 0), ("f", "b")], False, {"a": (1, {}, 0), "b": (1, {}, 0)}),
    (
        "two-sources-out-of-order",
        [("f", "b"), ("e", "b", 2, 0), ("f", "a"), ("e", "a", 1, 0), ("f", "b")],
        True,
        {"a": (1, {}, 0), "b": (2, {}, 0)},
    ),
    (
        "camera-keeps-going",
        [("f", "a"), ("e", "a", 1, 0), ("f", "cam"), ("t", 9), ("f", "cam")],
        True,
        {"a": (1, {}, 0), "cam": (2, {}, 0)},
    ),
    ("empty-file", [("e", "a", 0, 0)], True, {"a": (0, {}, 0)}),
    ("unknown-source-not-awaited", [("f", "zz"), ("e", "a", 0, 0)], True, {"a": (0, {}, 0), "zz": (1, {}, 0)}),
]


@pytest.mark.parametrize(("events", "done", "counts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ledger(events, done, counts):
    sources = sorted({k for k in counts if k != "zz"} | {"a"})
    waiting = [s for s in sources if s != "cam"]
    ledger = Ledger(sources, waiting)
    now = 0.0
    for ev in events:
        now += 0.01
        if ev[0] == "f":
            ledger.frame(ev[1], now)
        elif ev[0] == "d":
            ledger.drop(ev[1], ev[2], now)
        elif ev[0] == "e":
            ledger.eos(ev[1], ev[2], ev[3], now)
        else:
            now += ev[1]
    assert ledger.done(now, drain_timeout_s=5.0) is done
    ledger.finalise()
    for src, (received, drops, lost) in counts.items():
        c = ledger.sources[src]
        assert (c.received, dict(c.drops), c.lost) == (received, drops, lost)


def test_nothing_awaited_never_finishes():
    assert Ledger(["a"], []).done(1e9, 0.0) is False


def test_lines_name_everything():
    ledger = Ledger(["a", "b"], ["a"])
    ledger.frame("a", 0.0)
    ledger.drop("a", "stale", 0.0)
    ledger.eos("a", 5, 1, 0.0)
    ledger.finalise()
    assert ledger.lines() == [
        "a: read 5  in events 1  dropped capture=1 stale=1  lost 2",
        "b: read ?  in events 0  dropped 0  lost 0  (no eos)",
    ]
