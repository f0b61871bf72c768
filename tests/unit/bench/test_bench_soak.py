"""bench/soak.py's figures from samples (pure functions; the 10-minute run is in docs/operations.md)."""

from __future__ import annotations

import os

import pytest

from bench.procs import fd_count, rss_mb
from bench.soak import growth, summary, table


@pytest.mark.parametrize(
    ("a", "b", "pct"), [(100.0, 103.0, 3.0), (80.0, 76.0, -5.0), (None, 1.0, None), (0.0, 1.0, None)]
)
def test_growth(a: float | None, b: float | None, pct: float | None) -> None:
    assert growth(a, b) == pct


def sample(t: float, rss: float, fds: int) -> dict:
    return {"t_s": t, "stages": {"capture": {"rss_mb": rss, "fds": fds}}}


def test_summary_measures_from_the_first_sample_and_from_after_the_warm_up() -> None:
    samples = [sample(5, 80.0, 18), sample(65, 90.0, 18), sample(125, 90.9, 19), sample(185, 91.8, 18)]
    s = summary(samples, ["capture"], warmup_s=60.0)
    g = s["per_stage"]["capture"]
    assert s["warm_sample_t_s"] == 65
    assert (g["rss_growth_pct"], g["rss_growth_after_warmup_pct"]) == (14.75, 2.0)
    assert (g["fds_start"], g["fds_end"], g["fds_max"]) == (18, 18, 19)
    assert table(samples, ["capture"]).splitlines()[2] == "| 5 | 80.0 | 18 |"


def test_this_process_can_be_sampled() -> None:
    rss, fds = rss_mb(os.getpid()), fd_count(os.getpid())
    assert rss is not None and rss > 1 and fds is not None and fds >= 3
    assert rss_mb(2**22 + 12345) is None and fd_count(2**22 + 12345) is None
