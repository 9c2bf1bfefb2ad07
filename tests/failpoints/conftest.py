"""The failpoint suite shares one process-wide registry: every test starts and ends with it empty."""

from __future__ import annotations

import pytest

from musicfs import failpoints


@pytest.fixture(autouse=True)
def clean_failpoints():
    failpoints.teardown()
    yield
    failpoints.teardown()  # also frees any thread still paused at a point
