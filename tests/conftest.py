"""Shared test fixtures.

The real credit data in ``../shared/data`` is required: a test that needs it fails with
a clear message when it is missing, rather than skipping and passing silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "default_credit_homo_guest.csv").exists():
        pytest.fail(f"the shared UCI credit data is required beside the project at {SHARED_DATA}", pytrace=False)
    return SHARED_DATA
