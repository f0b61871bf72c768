"""Fixtures shared by every test package (keep this file small)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.paths import DATA_ENV, research_data

SHARED_DATA = research_data()  # $EMOSTREAM_DATA, else ../shared/data beside the repository


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only research data (media/, ...); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set {DATA_ENV} to its folder)")
    return SHARED_DATA
