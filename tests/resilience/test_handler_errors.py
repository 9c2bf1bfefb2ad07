"""L2: an exception inside a FUSE handler answers EIO to that caller; the daemon keeps serving (row 2.2)."""

from __future__ import annotations

import errno

import pytest

from musicfs_test_utils.assertions import assert_mount_matches_origin, tree_files

pytestmark = pytest.mark.l2


@pytest.mark.resilience("2.2")
def test_a_panicking_read_handler_gives_eio_and_the_mount_lives_on(small_library, daemons):
    # The kernel ignores failed readahead and retries, so a few failures are armed, not one.
    daemon = daemons([small_library[0]], env={"FAILPOINTS": "fuse-read=4*panic(injected handler bug)"})
    daemon.start()
    daemon.wait_for_mount()
    target = tree_files(daemon.mountpoint)[0]
    failures = []
    for _ in range(5):
        try:
            target.read_bytes()
            break
        except OSError as exc:
            failures.append(exc.errno)
    assert failures and set(failures) == {errno.EIO}
    assert_mount_matches_origin(daemon.mountpoint, small_library[2])  # every file, the first one included
    log = daemon.log_text()
    assert log.count("injected handler bug") >= 1 and "Traceback" in log
    assert 1 <= log.count("fuse read") <= 4
    assert daemon.stop() == 0
