"""bus.runtime.Stall: a source that went quiet is warned about with its age, once it flows again
that is logged, and a stall watchdog set to 0 says nothing."""

from __future__ import annotations

import logging

import pytest

from bus.runtime import Stall


@pytest.mark.parametrize(
    ("after_s", "last", "now", "silent"),
    [
        (2.0, {"cam0": 10.0}, 11.0, []),
        (2.0, {"cam0": 10.0}, 12.5, ["cam0"]),
        (2.0, {"cam0": 10.0, "cam1": 12.0}, 12.5, ["cam0"]),
        (0.0, {"cam0": 0.0}, 100.0, []),  # off
        (2.0, {}, 100.0, []),
    ],
)
def test_silent_sources(after_s: float, last: dict[str, float], now: float, silent: list[str]) -> None:
    assert Stall(logging.getLogger("t"), after_s).check(last, now) == silent


def test_warning_names_the_source_and_age_then_recovery(caplog: pytest.LogCaptureFixture) -> None:
    stall = Stall(logging.getLogger("t"), 1.0)
    with caplog.at_level(logging.INFO):
        stall.check({"cam0": 10.0}, 13.25)
        stall.check({"cam0": 10.0}, 13.5)  # rate-limited: no second line
        stall.check({"cam0": 14.0}, 14.1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "source cam0: nothing has arrived for 3.2 s: a stage upstream may be stuck or dead",
        "source cam0: flowing again after 4.0 s of silence",
    ]
