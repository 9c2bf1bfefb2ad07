"""L2: signals on the real daemon — clean stops, the second signal, bounded drains (rows 2.1, 2.3)."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from musicfs_test_utils.assertions import tree_files
from musicfs_test_utils.daemon import is_mounted, write_config
from musicfs_test_utils.eventually import eventually

pytestmark = pytest.mark.l2


def _slow_read(daemon):
    """Start `cat` on a track (a child process: the mount may die under it) and wait until it is stuck."""
    target = next(p for p in tree_files(daemon.mountpoint) if p.suffix == ".flac")
    reader = subprocess.Popen(["cat", str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon.wait_for_log("failpoint reader-manifest-fetch paused")
    return reader


def _config(tmp_path, **values) -> list[str]:
    return ["--config", str(write_config(tmp_path / "musicfs.toml", **values))]


# Chunks no bigger than a block: the scan keeps no blocks of what it read for tags (a small track would be read
# whole from those), so the read of a track goes to the origin, where the failpoint holds it.
READS_AT_THE_ORIGIN = {"chunk_size": "128K"}


@pytest.mark.resilience("2.1")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_and_exits_zero(small_library, daemons, signum):
    daemon = daemons([small_library[0]])
    daemon.start()
    daemon.wait_for_mount()
    assert tree_files(daemon.mountpoint)
    daemon.signal(signum)
    assert daemon.wait(30) == 0
    assert not is_mounted(daemon.mountpoint)
    assert "shutdown: fuse intake stopped" in daemon.log_text()


@pytest.mark.resilience("2.1")
def test_second_signal_exits_at_once_and_detaches_the_mount(small_library, daemons, tmp_path):
    daemon = daemons([small_library[0]], env={"FAILPOINTS": "reader-manifest-fetch=pause"},
                     extra_args=_config(tmp_path, drain_timeout=120, **READS_AT_THE_ORIGIN))
    daemon.start()
    daemon.wait_for_mount()
    reader = _slow_read(daemon)
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_log("SIGTERM: stopping")
    assert daemon.alive()  # draining: the paused read holds it
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 128 + signal.SIGTERM
    assert not is_mounted(daemon.mountpoint)
    assert reader.wait(10) != 0  # the read fails; it does not hang


@pytest.mark.resilience("2.3")
def test_shutdown_with_reads_in_flight_is_bounded_and_ordered(small_library, daemons, tmp_path):
    daemon = daemons([small_library[0]], env={"FAILPOINTS": "reader-manifest-fetch=pause"},
                     extra_args=_config(tmp_path, drain_timeout=1, **READS_AT_THE_ORIGIN))
    daemon.start()
    daemon.wait_for_mount()
    reader = _slow_read(daemon)
    daemon.signal(signal.SIGTERM)
    # drain_timeout (1 s) plus the close bound (10 s) is the promise; the wait allows exactly that.
    assert daemon.wait(11) == 0
    assert not is_mounted(daemon.mountpoint)
    assert reader.wait(10) != 0
    steps = re.search(r"shutdown: (.*)", daemon.log_text()).group(1).split(" -> ")
    assert steps == ["fuse intake stopped", "drain timed out", "unmounted", "background tasks stopped",
                     "catalog and cache closed", "STOPPING=1"]
    assert daemon.notify.find("STOPPING", "1")


def test_sighup_rescans(small_library, daemons, tmp_path):
    import shutil

    src = tmp_path / "lib"
    shutil.copytree(small_library[0], src)
    daemon = daemons([src])
    daemon.start()
    daemon.wait_for_mount()
    before = {p.name for p in tree_files(daemon.mountpoint)}
    victim = next(p for p in small_library[2] if p.suffix == ".ogg")
    os.unlink(src / victim.relative_to(small_library[0]))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("1 removed")  # the scan's line: the tree is swapped right after it
    eventually(lambda: len(tree_files(daemon.mountpoint)) != len(before), 30, "the rescanned tree served")
    after = {p.name for p in tree_files(daemon.mountpoint)}
    assert len(after) == len(before) - 1 and after < before


@pytest.mark.resilience("2.3")
def test_a_stop_during_a_rescan_waits_for_it_before_closing_the_catalog(small_library, daemons, tmp_path):
    # the rescan runs in a worker thread that is not abandoned: closing the catalog under it made the rescan
    # fail ("Cannot operate on a closed database") on the way out
    first = daemons([small_library[0]], "first")
    first.start()
    first.wait_for_mount()
    assert first.stop() == 0
    again = daemons([small_library[0]], "again", env={"FAILPOINTS": "scan-checkpoint=sleep(1500)"})
    again.state_dir, again.cache_dir = first.state_dir, first.cache_dir  # the same library: a rescan at start
    again.start()
    again.wait_for_mount()
    again.wait_for_log("failpoint scan-checkpoint sleeping")  # the background rescan is in its thread
    again.signal(signal.SIGTERM)
    assert again.wait(30) == 0
    log = again.log_text()
    assert "task rescan failed" not in log and "closed database" not in log, log[-2000:]
    steps = re.search(r"shutdown: (.*)", log).group(1).split(" -> ")
    assert "background tasks stopped" in steps
