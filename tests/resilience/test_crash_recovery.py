"""L2: kill -9 leaves a stale mount; the next start cleans it; a live mount is never taken over (row 2.7)."""

from __future__ import annotations

import pytest

from musicfs_test_utils.assertions import assert_mount_matches_origin
from musicfs_test_utils.daemon import is_mounted, is_stale

pytestmark = pytest.mark.l2


@pytest.mark.resilience("2.7")
def test_restart_after_kill_9_cleans_the_stale_mount(small_library, daemons):
    daemon = daemons([small_library[0]])
    daemon.start()
    daemon.wait_for_mount()
    daemon.kill9()
    assert is_mounted(daemon.mountpoint) and is_stale(daemon.mountpoint)
    daemon.start()
    daemon.wait_for_mount()
    assert "cleaning a stale mount" in daemon.log_text()
    assert not is_stale(daemon.mountpoint)
    assert_mount_matches_origin(daemon.mountpoint, small_library[2])


def test_a_live_mount_is_refused_with_a_clear_message(small_library, daemons):
    first = daemons([small_library[0]], name="first")
    first.start()
    first.wait_for_mount()
    second = daemons([small_library[0]], name="second")
    second.mountpoint = first.mountpoint
    second.start()
    assert second.wait(60) == 1
    assert "is already mounted" in second.log_text()
    assert not is_stale(first.mountpoint) and first.alive()
