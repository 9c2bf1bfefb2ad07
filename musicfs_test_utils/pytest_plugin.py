"""Pytest plugin: a test fails on WARNING/ERROR log records it did not declare.

Declare the ones a test provokes on purpose with `@pytest.mark.expected_log(r"regex", ...)`;
each pattern is searched in "logger: message". Hidden errors cannot pass silently. A record a test
required with `assertions.assert_logs` (which fails when the line is missing) is declared by that.
"""

from __future__ import annotations

import logging
import re

import pytest

from .assertions import ASSERTED


class _Collector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def pytest_configure(config):
    config.addinivalue_line("markers", "expected_log(*patterns): WARNING/ERROR log lines this test provokes on purpose")


@pytest.fixture(autouse=True)
def _no_unexpected_log_records(request):
    collector = _Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
    patterns = [re.compile(p) for m in request.node.iter_markers("expected_log") for p in m.args]
    unexpected = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in collector.records
        if not getattr(r, ASSERTED, False) and not any(p.search(f"{r.name}: {r.getMessage()}") for p in patterns)
    ]
    if unexpected:
        pytest.fail("unexpected log records (declare them with @pytest.mark.expected_log):\n  " + "\n  ".join(unexpected),
                    pytrace=False)
