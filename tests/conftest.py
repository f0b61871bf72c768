"""Fixtures shared by every test package (keep this file small)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[1] / "../shared/data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only research data (media/, ...); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
