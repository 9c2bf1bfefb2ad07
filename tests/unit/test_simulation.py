"""X.1: deterministic simulation — same seed, same fault trace; never wrong bytes."""

from __future__ import annotations

import pytest

from musicfs_test_utils.simulation import simulate

# The simulated faults are logged by the code under test, as they would be in production.
NOISE = (r"cache", r"origin", r"replica", r"task .* failed", r"probe", r"unhealthy", r"offline", r"failpoint")


@pytest.mark.resilience("X.1")
@pytest.mark.expected_log(*NOISE)
def test_the_same_seed_gives_the_same_trace_byte_for_byte(small_library, tmp_path):
    first = simulate(1234, small_library[0], tmp_path / "one")
    second = simulate(1234, small_library[0], tmp_path / "two")
    assert first.trace == second.trace
    assert len(first.trace) > 100
    for fault in ("transient", "timeout", "short", "not_found", "down", "corrupt", "eio", "enospc"):
        assert any(line.endswith(f"-> {fault}") for line in first.trace), f"the run never drew {fault}"
    assert first.reads_ok and not first.wrong_bytes


@pytest.mark.resilience("X.1")
@pytest.mark.expected_log(*NOISE)
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_never_wrong_bytes_whatever_the_seed(seed, small_library, tmp_path):
    result = simulate(seed, small_library[0], tmp_path / "run")
    assert not result.wrong_bytes, result.wrong_bytes
    assert result.reads_ok + result.reads_failed == 80


@pytest.mark.expected_log(*NOISE)
def test_different_seeds_give_different_traces(small_library, tmp_path):
    assert simulate(5, small_library[0], tmp_path / "a").trace != simulate(6, small_library[0], tmp_path / "b").trace
