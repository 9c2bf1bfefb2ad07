"""Root conftest: the --failpoints switch, the log guard, and a stale-mount sweep around the session."""

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


def _sweep(session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # xdist workers: the controller sweeps once for everyone
    from musicfs_test_utils.daemon import sweep_stale_mounts

    sweep_stale_mounts()


def pytest_sessionstart(session):
    _sweep(session)


def pytest_sessionfinish(session, exitstatus):
    _sweep(session)
