"""`musicfs scan` takes the library's lock like a mount does: never two processes on one catalog and index."""

from __future__ import annotations

import os
import subprocess
import sys

from musicfs.shared.statefiles import LibraryBusy, LibraryLock


def scan(source, state) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicfs", "scan", str(source), "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=120)


def test_a_scan_of_a_mounted_library_is_refused_naming_the_daemon_then_runs_once_it_is_gone(small_library, tmp_path):
    source, state = small_library[0], tmp_path / "state"
    lock = LibraryLock(str(state)).acquire({"mountpoint": "/srv/music-mnt", "sources": [str(source)]})
    try:
        refused = scan(source, state)
        assert refused.returncode == 1, refused.stderr
        assert f"already mounted by musicfs pid {os.getpid()} on /srv/music-mnt" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert not (state / "catalog.db").exists()  # nothing was opened or written
    finally:
        lock.release()
    done = scan(source, state)
    assert done.returncode == 0, done.stderr
    assert "tracks" in done.stdout


def test_a_mount_while_a_scan_runs_is_told_the_library_is_being_scanned(tmp_path):
    state = tmp_path / "state"
    scanning = LibraryLock(str(state)).acquire({"mountpoint": "", "sources": ["/srv/music"]})
    try:
        try:
            LibraryLock(str(state)).acquire({"mountpoint": "/mnt", "sources": ["/srv/music"]})
        except LibraryBusy as exc:
            assert f"being scanned by musicfs pid {os.getpid()}" in str(exc)
        else:
            raise AssertionError("a second holder took the library's lock")
    finally:
        scanning.release()
