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
        [("f", "a"), ("d", "a", "stale"), ("d", "a", "send"), ("e", "a", 3, 0)],
        True,
        {"a": (1, {"stale": 1, "send": 1}, 0)},
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
        "b: read ?  in events 0  dropped 0  in flight 0  (no eos)",
    ]


def test_duplicates_and_more_in_events_than_read_are_flagged():
    """Issue 11 case 6: a restarted capture replayed a file: 881 events for 648 frames read showed
    as `lost 0`. Every seq that arrives twice is a duplicate; the line says so."""
    ledger = Ledger(["a"], ["a"])
    for seq in [*range(5), *range(3)]:  # 0..4, then 0..2 again
        ledger.frame("a", 0.0, seq)
    ledger.drop("a", "stale", 0.0, 5)
    ledger.drop("a", "stale", 0.0, 5)
    ledger.eos("a", 6, 0, 0.0)
    ledger.finalise()
    c = ledger.sources["a"]
    assert (c.received, c.duplicates, c.accounted, c.lost) == (8, 4, 6, 0)
    assert ledger.lines() == [
        "a: read 6  in events 8  dropped stale=2  lost 0  DUPLICATES 4  MORE IN EVENTS THAN READ (8 > 6)"
    ]


def test_a_source_without_eos_counts_capture_drops_from_its_frames_and_what_is_in_flight():
    """Issue 11 case 14: a live or looped source never sends eos; capture's own drops (carried on
    its frames as `dropped`) used to be left out (`stale=16 lost 0` for 234 of 890 dropped)."""
    ledger = Ledger(["cam"], [])
    ledger.frame("cam", 0.0, 0, capture_dropped=0)
    ledger.frame("cam", 0.0, 3, capture_dropped=2)  # capture dropped seqs 1 and 2
    ledger.drop("cam", "stale", 0.0, 4, capture_dropped=2)
    ledger.frame("cam", 0.0, 7, capture_dropped=3)  # capture dropped 5; 6 was sent and is still on its way
    ledger.frame("cam", 0.0, 2, capture_dropped=1)  # an older frame arriving late does not lower the count
    ledger.finalise()
    c = ledger.sources["cam"]
    assert (c.top, c.capture_dropped, c.accounted, c.lost) == (8, 3, 8, 0)
    assert ledger.lines() == ["cam: read 8 so far  in events 4  dropped capture=3 stale=1  in flight 0  (no eos)"]


def test_a_frame_missing_from_a_source_without_eos_is_in_flight():
    ledger = Ledger(["cam"], [])
    ledger.frame("cam", 0.0, 0, capture_dropped=0)
    ledger.frame("cam", 0.0, 2, capture_dropped=0)
    ledger.finalise()
    assert ledger.lines() == ["cam: read 3 so far  in events 2  dropped 0  in flight 1  (no eos)"]


def test_evicted_sources_keep_their_counts_in_one_line():
    ledger = Ledger(["a"], ["a"])
    for src in ("x", "y"):
        ledger.frame(src, 0.0, 0)
        ledger.drop(src, "stale", 0.0, 1)
        ledger.evict(src)
    assert (
        ledger.lines()[-1] == "2 evicted source(s): read 4 so far  in events 2  dropped stale=2  in flight 0  (no eos)"
    )
