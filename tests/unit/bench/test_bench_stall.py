"""bench/stall.py: the display's events file and the figures of a stall run (pure; the real run is the bench)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.stall import BAR_MS, analyse, events

T0 = 1000.0  # the run starts here (s)
T_STOP = 1010.0  # the display is SIGSTOPped
T_RESUME = 1012.0  # ... and SIGCONTed 2 s later
T_END = 1018.0


def test_events_skip_bad_lines_and_are_timed_when_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"ts": 100.0, "latency_ms": 9.0, "faces": []}),
        "not json {",
        json.dumps({"ts": 101.0}),  # no latency_ms
        json.dumps({"latency_ms": 5.0}),  # no ts
        json.dumps({"ts": "x", "latency_ms": 5.0}),  # not a number
        json.dumps({"ts": None, "latency_ms": 5.0}),
        json.dumps([1, 2]),  # not an object
        "",
        json.dumps({"ts": 102.5, "latency_ms": 2000}),
    ]
    path.write_text("\n".join(lines) + "\n")
    assert events(path) == [(pytest.approx(100.009), 9.0), (pytest.approx(104.5), 2000.0)]


def test_events_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    assert events(path) == []


def steady(t_from: float, t_to: float, latency_ms: float = 9.0) -> list[tuple[float, float]]:
    """An event every 33 ms (written time, latency ms) in [t_from, t_to)."""
    n = int((t_to - t_from) / 0.033)
    return [(t_from + i * 0.033, latency_ms) for i in range(n) if t_from + i * 0.033 < t_to]


BURST = 21  # events written in the 0.2 s after the resume, every 10 ms
BURST_LAT = [2000.0 - i * (2000.0 - 9.0) / (BURST - 1) for i in range(BURST)]  # 2000 ms down to 9 ms


def stalled_run() -> list[tuple[float, float]]:
    """30 fps at 9 ms, nothing while stopped, a backlog burst draining over 0.2 s, then 30 fps at 9 ms again."""
    burst = [(T_RESUME + i * 0.01, lat) for i, lat in enumerate(BURST_LAT)]
    return steady(T0, T_STOP) + burst + steady(T_RESUME + 0.2 + 0.033, T_END)


def test_a_stall_and_its_recovery() -> None:
    evs = stalled_run()
    got = analyse(evs, [], T_STOP, T_RESUME)
    late = [lat for lat in BURST_LAT if lat > BAR_MS]
    assert len(late) == BURST - 1  # only the last one of the burst is back under the bar
    assert got["bar_ms"] == BAR_MS
    # the last late event is the 20th of the burst, 0.19 s after the resume
    assert got["recovery_s"] == pytest.approx(0.2, abs=0.011)
    assert got["recovery_s"] == 0.19
    assert got["late_after_resume"] == len(late)
    assert got["after_max_ms"] == 2000.0
    assert got["before_ms"] == {"p50": 9.0, "p99": 9.0}
    assert got["settled_ms"] == {"p50": 9.0, "p99": 9.0}  # from +1 s: the burst is left out
    n_after = len([t for t, _ in evs if t >= T_RESUME])
    assert got["events"]["after"] == n_after == BURST + len(steady(T_RESUME + 0.233, T_END))
    assert 0 < got["events"]["before"] <= len(steady(T0, T_STOP))
    assert got["memory"] == {}


def test_events_late_only_before_the_stall_do_not_count_as_recovery() -> None:
    evs = [(t, 100.0 if t < T0 + 1 else 9.0) for t, _ in steady(T0, T_STOP)] + steady(T_RESUME, T_END, 12.0)
    got = analyse(evs, [], T_STOP, T_RESUME)
    assert got["recovery_s"] == 0.0
    assert got["late_after_resume"] == 0
    assert got["after_max_ms"] == 12.0
    assert got["settled_ms"] == {"p50": 12.0, "p99": 12.0}


def test_a_late_event_much_later_is_the_recovery_time() -> None:
    after = steady(T_RESUME, T_END)
    after[91] = (after[91][0], 30.0)  # one late event 3.003 s after the resume
    evs = steady(T0, T_STOP) + after
    got = analyse(evs, [], T_STOP, T_RESUME)
    assert got["recovery_s"] == pytest.approx(3.003, abs=1e-3)
    assert got["late_after_resume"] == 1
    assert got["settled_ms"]["p50"] == 9.0
    assert got["settled_ms"]["p99"] == 9.0  # one late event in ~150 is under the 99th percentile


def test_no_events_at_all() -> None:
    got = analyse([], [], T_STOP, T_RESUME)
    assert got["recovery_s"] == 0.0 and got["late_after_resume"] == 0 and got["after_max_ms"] is None
    assert got["before_ms"] == {"p50": None, "p99": None} and got["settled_ms"] == {"p50": None, "p99": None}
    assert got["events"] == {"before": 0, "after": 0}


def samples() -> list[tuple[float, dict[str, float | None]]]:
    """/proc sampled every 0.1 s: capture flat, the display +5 MiB while stopped, the detector sometimes absent."""
    out: list[tuple[float, dict[str, float | None]]] = []
    for k in range(int((T_END - T0) * 10) + 1):
        t = T0 + k / 10
        display = 105.3 if T_STOP <= t < T_RESUME + 0.5 else 100.3
        rss: dict[str, float | None] = {"capture": 80.0, "display": display}
        if k % 3 == 0:
            rss["detector"] = None  # /proc could not be read
        elif k % 3 == 1:
            rss["detector"] = 200.0 + (k % 2)
        # k % 3 == 2: the detector is not in this sample at all
        rss["classifier"] = None if t < T_STOP + 0.5 else 150.0  # unreadable until into the stall
        rss["gone"] = None  # never readable
        out.append((t, rss))
    return out


def test_memory_per_stage() -> None:
    mem = analyse(stalled_run(), samples(), T_STOP, T_RESUME)["memory"]
    assert set(mem) == {"capture", "classifier", "detector", "display", "gone"}
    assert mem["display"] == {"before_mb": 100.3, "peak_mb": 105.3, "end_mb": 100.3, "growth_mb": 5.0}
    assert mem["capture"] == {"before_mb": 80.0, "peak_mb": 80.0, "end_mb": 80.0, "growth_mb": 0.0}
    det = mem["detector"]
    assert det["before_mb"] in (200.0, 201.0) and det["peak_mb"] == 201.0 and det["end_mb"] in (200.0, 201.0)
    assert det["growth_mb"] in (0.0, 1.0)
    # nothing readable before the stall: no baseline, so no growth, but a peak and an end
    assert mem["classifier"] == {"before_mb": None, "peak_mb": 150.0, "end_mb": 150.0, "growth_mb": None}
    assert mem["gone"] == {"before_mb": None, "peak_mb": None, "end_mb": None, "growth_mb": None}


def test_memory_is_from_the_windows_around_the_stall() -> None:
    # a spike long before the stall and one after the +2 s window are neither the baseline nor the peak
    smp: list[tuple[float, dict[str, float | None]]] = []
    for t, rss in samples():
        v = rss["display"]
        if T0 + 1 <= t < T0 + 2 or T_RESUME + 3 <= t < T_RESUME + 4:
            v = 500.0
        smp.append((t, {"display": v}))
    mem = analyse([], smp, T_STOP, T_RESUME)["memory"]["display"]
    assert mem == {"before_mb": 100.3, "peak_mb": 105.3, "end_mb": 100.3, "growth_mb": 5.0}
