"""A mount whose daemon cannot answer (here: stopped; in life: killed while a page store waits, page_push) is freed
by aborting its FUSE connection through fusectl, found by the mount table alone (daemon/mounts.py): every request
on it then fails at once instead of hanging, and the next daemon mounts the library there again."""

from __future__ import annotations

import errno
import os
import signal
import threading

import pytest

from musicfs.daemon.mounts import abort_connection
from musicfs_test_utils.eventually import eventually


def statvfs_errno(path) -> list:
    """statvfs of `path` in a thread: [errno or 0], or [] while it hangs."""
    out: list = []

    def run():
        try:
            os.statvfs(path)
            out.append(0)
        except OSError as exc:
            out.append(exc.errno)

    threading.Thread(target=run, daemon=True).start()
    return out


@pytest.mark.resilience("2.7")
def test_an_unanswering_mount_is_freed_by_aborting_its_connection_and_mounted_again(daemons, small_library):
    daemon = daemons([small_library[0]])
    daemon.start()
    daemon.wait_for_mount()
    mnt = str(daemon.mountpoint)
    daemon.signal(signal.SIGSTOP)  # nobody answers the mount's requests any more
    try:
        hung = statvfs_errno(mnt)
        assert abort_connection(mnt)
        eventually(lambda: hung, 10, "the hung request failed once the connection was aborted")
        assert hung[0] in (errno.ECONNABORTED, errno.ENOTCONN)
        after = statvfs_errno(mnt)
        eventually(lambda: after, 10, "a request after the abort fails at once")
        assert after[0] in (errno.ECONNABORTED, errno.ENOTCONN)
    finally:
        daemon.signal(signal.SIGCONT)
    assert daemon.wait(60) is not None  # its /dev/fuse is gone: it stops
    again = daemons([small_library[0]], name="d")  # same state, cache and mountpoint
    again.start()
    again.wait_for_mount()
    assert any(os.scandir(mnt))


@pytest.mark.resilience("2.7")
def test_a_pushing_daemon_runs_a_watcher_that_ends_with_it(daemons, small_library, tmp_path):
    import psutil

    from musicfs_test_utils.daemon import write_config

    config = write_config(tmp_path / "push.toml", page_push=True)  # the default, said
    off = write_config(tmp_path / "quiet.toml", page_push=False)
    quiet = daemons([small_library[0]], name="quiet", extra_args=["--config", str(off)])  # not pushing: no watcher
    quiet.start()
    quiet.wait_for_mount()
    assert not [p for p in psutil.Process(quiet.pid).children() if "musicfs.daemon.guard" in " ".join(p.cmdline())]
    assert quiet.stop() == 0
    daemon = daemons([small_library[0]], extra_args=["--config", str(config)])
    daemon.start()
    daemon.wait_for_mount()
    watchers = [p for p in psutil.Process(daemon.pid).children() if "musicfs.daemon.guard" in " ".join(p.cmdline())]
    assert len(watchers) == 1 and str(daemon.mountpoint) in watchers[0].cmdline()
    assert daemon.stop() == 0
    assert not psutil.pid_exists(watchers[0].pid)  # stopped and reaped at a clean stop: no zombie
