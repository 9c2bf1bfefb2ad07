"""assert_logs requires a log line (expected_log only allows one)."""

from __future__ import annotations

import logging

import pytest

from musicfs_test_utils.assertions import assert_logs

log = logging.getLogger("musicfs.example")


def test_a_missing_line_fails():
    with pytest.raises(AssertionError, match="no log line matching 'disk on fire'"):
        with assert_logs(r"disk on fire"):
            log.info("all quiet")  # below WARNING: neither matched nor the plugin's concern


@pytest.mark.expected_log(r"all quiet")
def test_an_unmatched_warning_still_needs_declaring():
    with pytest.raises(AssertionError):
        with assert_logs(r"disk on fire"):
            log.warning("all quiet")


def test_count_is_exact_and_the_lines_are_given_back():
    with pytest.raises(AssertionError, match="2 log lines matching 'retry', expected 1"):
        with assert_logs(r"retry", count=1):
            log.warning("retry 1")
            log.warning("retry 2")
    with assert_logs(r"musicfs\.example: retry \d", count=2) as lines:
        log.warning("retry 1")
        log.error("retry 2")
    assert lines == ["musicfs.example: retry 1", "musicfs.example: retry 2"]


def test_lower_levels_are_seen_when_asked_for():
    with assert_logs(r"scanned 3 files", count=1, level=logging.INFO):
        log.info("scanned 3 files")
    with pytest.raises(AssertionError):
        with assert_logs(r"scanned 3 files"):  # WARNING by default: an INFO line does not count
            log.info("scanned 3 files")
