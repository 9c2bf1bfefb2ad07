"""L2 crash points: a real daemon armed through FAILPOINTS=...=crash SIGKILLs itself at a named point;
the next start (no failpoints, same state and cache) must clean up after it and serve the right bytes.

These arm a child process, not this process's registry, so they run in the plain suite.
Rows: 5.7 (crash between a chunk file and its index row) and 2.5 (crash in the middle of a scan).
The L1 halves are tests/failpoints/test_cas_failures.py and tests/failpoints/test_sync_interruption.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from musicfs.commands.demo import BIG_FILE_PATH, JUNK_FILES
from musicfs.daemon.mounts import unmount
from musicfs.library import tags
from musicfs.origins.local import LocalOrigin
from musicfs.shared import points
from musicfs_test_utils.assertions import assert_same_bytes, file_digest, tree_files
from musicfs_test_utils.daemon import is_mounted, is_stale
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.mount_io import mount_file_for

pytestmark = pytest.mark.l2

SCAN_BATCH = 200  # Library.scan's batch size
KILLED = -signal.SIGKILL


def _ro(db: Path) -> sqlite3.Connection:
    """Read-only, so looking does not checkpoint or otherwise repair what the crash left."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _read_in_child(path: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Read a file through the mount in a child process: the mount goes stale under the read."""
    code = "import sys\nwith open(sys.argv[1], 'rb') as fh:\n    sys.stdout.write(str(len(fh.read())))"
    return subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def private_mountpoint():
    """A mountpoint outside /tmp: the root conftest of every pytest session sweeps dead musicfs mounts
    under /tmp, and a concurrently running session would clean our stale mount before our restart does."""
    base = tempfile.mkdtemp(prefix="musicfs-crash-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    mnt = os.path.join(base, "mnt")
    yield mnt
    if is_mounted(mnt):
        unmount(mnt, lazy=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.resilience("5.7")
def test_crash_between_chunk_write_and_index_insert_then_restart(tmp_path, private_mountpoint, daemons):
    root = tmp_path / "library"
    make_library(root, 1, big_file_mb=2, hostile=False)  # a track larger than what the scan reads of it
    origin = root / BIG_FILE_PATH
    data = origin.read_bytes()

    # 0. a clean first mount scans (keeping what the scan read, in the cache too) and stops
    daemon = daemons([root])
    daemon.mountpoint = private_mountpoint
    daemon.start()
    daemon.wait_for_mount()
    assert daemon.stop() == 0
    with _ro(daemon.cache_dir / "index.db") as db:
        indexed = {row[0] for row in db.execute("SELECT hash FROM chunks")}

    # 1. the first read of what is not cached stores an object (chunk or block): the daemon dies between its
    #    file and its index row
    daemon.env = {"FAILPOINTS": f"{points.CAS_PUT_AFTER_WRITE_BEFORE_INDEX}=crash"}
    daemon.start()
    daemon.wait_for_mount()
    mounted = mount_file_for(daemon.mountpoint, origin)
    read = _read_in_child(str(mounted))
    assert read.returncode != 0, f"a read through a dying mount returned data: {read.stdout}"
    assert daemon.wait(30) == KILLED
    assert is_mounted(daemon.mountpoint) and is_stale(daemon.mountpoint)  # kill -9 leaves ENOTCONN behind
    on_disk = {p.name: p for p in (daemon.cache_dir / "chunks").rglob("*") if p.is_file()}
    with _ro(daemon.cache_dir / "index.db") as db:
        now_indexed = {row[0] for row in db.execute("SELECT hash FROM chunks")}
    assert now_indexed == indexed
    # the objects written but unknown to the index (a read-ahead run stores its chunks at once: one or more),
    # each complete (fsync + rename came first)
    orphans = {digest: on_disk[digest].read_bytes() for digest in set(on_disk) - indexed}
    assert orphans
    for digest, orphan in orphans.items():
        assert hashlib.sha256(orphan).hexdigest() == digest and orphan in data

    # 2. restart without failpoints on the same state and cache: stale mount cleaned, orphans adopted
    log_before = len(daemon.log_text())
    daemon.env = {}
    daemon.start()
    daemon.wait_for_mount()
    restart_log = daemon.log_text()[log_before:]
    assert "cleaning a stale mount" in restart_log
    assert not is_stale(daemon.mountpoint)
    with _ro(daemon.cache_dir / "index.db") as db:
        for digest, orphan in orphans.items():
            assert f"adopted chunk {digest[:12]}" in restart_log
            assert db.execute("SELECT size FROM chunks WHERE hash = ?", (digest,)).fetchone() == (len(orphan),)

    # 3. the file reads back byte for byte
    assert_same_bytes(mounted, origin)
    assert all(on_disk[digest].read_bytes() == orphan for digest, orphan in orphans.items())


@pytest.fixture(scope="module")
def scan_library(tmp_path_factory):
    """More files than one scan batch, so a crash after the first batch lands mid-scan."""
    root = tmp_path_factory.mktemp("scan-crash") / "library"
    tracks = make_library(root, SCAN_BATCH + 12)
    junk = {root / j for j in JUNK_FILES}
    return root, tracks, [p for p in tree_files(root) if p not in junk]


_SUMMARY = re.compile(r"scan of .*?: (\d+) added, (\d+) changed, (\d+) removed, (\d+) unchanged, (\d+) unreadable")


@pytest.mark.resilience("2.5")
def test_daemon_killed_mid_scan_resumes_on_restart(scan_library, daemons):
    root, tracks, good = scan_library
    listing = sorted(st.path for st in LocalOrigin(root).walk() if tags.classify(st.path))
    assert len(listing) > SCAN_BATCH

    # 1. first mount scans before mounting; it dies right after committing the first batch
    daemon = daemons([root], env={"FAILPOINTS": f"{points.DELTA_SYNC_AFTER_BATCH}=crash"})
    daemon.start()
    assert daemon.wait(120) == KILLED
    assert not is_mounted(daemon.mountpoint)  # it died before mounting: nothing to clean
    with _ro(daemon.state_dir / "catalog.db") as db:
        committed = sorted(r[0] for r in db.execute("SELECT path FROM files"))
        state = dict(db.execute("SELECT key, value FROM scan_state"))
    assert committed == listing[:SCAN_BATCH]
    assert state["last_path"] == listing[SCAN_BATCH - 1] and "completed_at" not in state

    # 2. restart without failpoints: the scan resumes (committed files are not read again) and mounts
    log_before = len(daemon.log_text())
    daemon.env = {}
    daemon.start()
    daemon.wait_for_mount(timeout=120)
    summary = _SUMMARY.search(daemon.log_text()[log_before:])
    assert summary, f"no scan summary in the log:\n{daemon.log_text()[log_before:]}"
    added, changed, removed, unchanged, unreadable = map(int, summary.groups())
    assert unchanged == SCAN_BATCH and changed == 0 and removed == 0
    assert added + unreadable == len(listing) - SCAN_BATCH  # only the files after the checkpoint were read

    # 3. no file lost, none duplicated: in the catalog and in the mount
    with _ro(daemon.state_dir / "catalog.db") as db:
        paths = [r[0] for r in db.execute("SELECT path FROM files")]
        state = dict(db.execute("SELECT key, value FROM scan_state"))
    assert sorted(paths) == listing
    assert state["in_progress"] == "0" and "completed_at" in state
    mounted = tree_files(daemon.mountpoint)
    assert len(mounted) == len(good)
    assert Counter(file_digest(p) for p in mounted) == Counter(file_digest(p) for p in good)
    audio = [p for p in mounted if tags.classify(p.name) == "track"]
    assert len(audio) == len(tracks)
    assert all(os.path.getsize(p) > 0 for p in audio)
