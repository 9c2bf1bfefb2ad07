"""Root conftest: the --failpoints switch, the log guard, and a stale-mount sweep after the session."""

from __future__ import annotations

import pytest

pytest_plugins = ["musicfs_test_utils.pytest_plugin"]


def pytest_addoption(parser):
    parser.addoption("--failpoints", action="store_true", default=False,
                     help="run the failpoint suite (tests/failpoints/) alone; use with -p no:xdist")


def _is_failpoint_test(item) -> bool:
    return "tests/failpoints/" in item.nodeid.replace("\\", "/")


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("--failpoints")
    keep = [i for i in items if _is_failpoint_test(i) == wanted]
    dropped = [i for i in items if _is_failpoint_test(i) != wanted]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    """Dead mounts left by this session's crash tests are detached, and only this session's:
    a concurrent session's test may be about to prove that the daemon cleans its own."""
    if hasattr(session.config, "workerinput"):
        return  # xdist workers live under the controller's base temp: it sweeps once for all
    from musicfs_test_utils.daemon import sweep_stale_mounts

    sweep_stale_mounts(str(session.config._tmp_path_factory.getbasetemp()))
