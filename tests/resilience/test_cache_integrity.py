"""L2: cache integrity on a real mount — a chunk corrupted under a running daemon (6.4), kill -9 during
reads and cache writes then restart and `musicfs fsck` (6.2), a crash before a search index commit (5.2).

Reads happen in child processes that drop the file's page cache first (posix_fadvise DONTNEED), so the
daemon answers them; `memory_cache = "1K"` keeps no chunk in the daemon's RAM, so they reach the disk cache.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.commands.demo import JUNK_FILES
from musicfs.shared import points
from musicfs.shared.damage import RunMarker
from musicfs_test_utils.assertions import (
    assert_mount_matches_origin,
    file_digest,
    tree_files,
)
from musicfs_test_utils.daemon import is_mounted, write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.mount_io import mount_file_for, read_digest

pytestmark = pytest.mark.l2

CHUNK = 64 * 1024




def config(tmp_path: Path, **extra) -> list[str]:
    values = {"chunk_size": "64K", "memory_cache": "1K", **extra}
    return ["--config", str(write_config(tmp_path / "musicfs.toml", **values))]


def fsck(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicfs", "fsck", "--state-dir", str(daemon.state_dir),
                           "--cache-dir", str(daemon.cache_dir), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.resilience("6.4")
def test_a_chunk_corrupted_under_a_running_mount_is_quarantined_and_read_correctly(library_copy, daemons, tmp_path):
    root, good = library_copy
    origin = max(good, key=lambda p: p.stat().st_size)
    data = origin.read_bytes()
    assert len(data) > 3 * CHUNK
    daemon = daemons([root], extra_args=config(tmp_path))
    daemon.start()
    daemon.wait_for_mount()
    mounted = mount_file_for(daemon.mountpoint, origin)
    expected = hashlib.sha256(data).hexdigest()
    assert read_digest(mounted) == expected  # now in the disk cache
    digest = hashlib.sha256(data[CHUNK:2 * CHUNK]).hexdigest()
    chunk = daemon.cache_dir / "chunks" / digest[:2] / digest
    rotten = bytearray(chunk.read_bytes())
    rotten[1000] ^= 0x10
    chunk.write_bytes(bytes(rotten))  # bit rot under the running daemon

    assert read_digest(mounted) == expected  # detected, quarantined, fetched again: the right bytes
    daemon.wait_for_log(f"chunk {digest[:12]} failed verification; moved to")
    assert chunk.read_bytes() == data[CHUNK:2 * CHUNK]  # stored again, good this time
    [kept] = [p for p in (daemon.cache_dir / "quarantine").iterdir() if p.name.startswith(digest)]
    assert kept.read_bytes() == bytes(rotten)
    assert read_digest(mounted) == expected
    assert daemon.stop() == 0
    done = fsck(daemon)
    assert done.returncode == 0, done.stdout + done.stderr


_LOOP_READER = r"""
import os, sys
while True:
    for path in sys.argv[1:]:
        try:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            while os.read(fd, 1 << 20):
                pass
            os.close(fd)
        except OSError:
            sys.exit(0)  # the mount died under us
"""


@pytest.mark.resilience("6.2")
def test_kill_9_during_reads_and_cache_writes_then_restart_and_fsck_is_clean(tmp_path, daemons):
    root = tmp_path / "library"
    make_library(root, 8, big_file_mb=8)
    junk = {root / j for j in JUNK_FILES}
    good = [p for p in tree_files(root) if p not in junk]
    daemon = daemons([root], extra_args=config(tmp_path))
    daemon.start()
    daemon.wait_for_mount()
    files = sorted(tree_files(daemon.mountpoint), key=lambda p: -p.stat().st_size)
    readers = [subprocess.Popen([sys.executable, "-c", _LOOP_READER, *map(str, files[i::3])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(3)]
    try:
        chunks = daemon.cache_dir / "chunks"
        eventually(lambda: sum(1 for _ in chunks.rglob("*")) > 40, 60, "chunks written to the cache")
        daemon.kill9()  # in the middle of reads and cache writes
    finally:
        for reader in readers:
            reader.kill()
            reader.wait(10)
    assert (daemon.state_dir / RunMarker.NAME).exists()  # it never stopped cleanly
    found = fsck(daemon)
    assert found.returncode in (0, 4), found.stdout + found.stderr  # whatever the crash left, fsck copes

    log_before = len(daemon.log_text())
    daemon.start()
    daemon.wait_for_mount()
    assert "did not stop cleanly: running full integrity checks" in daemon.log_text()[log_before:]
    assert_mount_matches_origin(daemon.mountpoint, good)  # the right bytes, every one
    assert daemon.stop() == 0
    assert not (daemon.state_dir / RunMarker.NAME).exists()  # a clean stop this time
    clean = fsck(daemon)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.rstrip().endswith("clean")


@pytest.mark.resilience("5.2")
def test_killed_before_the_search_index_commit_the_restart_reindexes_and_search_works(library_copy, daemons):
    root, good = library_copy
    daemon = daemons([root], env={"FAILPOINTS": f"{points.INDEX_COMMIT}=crash", "RUST_BACKTRACE": "0"})
    daemon.start()
    assert daemon.wait(120) == -signal.SIGKILL  # the first scan committed; the index commit never happened
    assert not is_mounted(daemon.mountpoint)
    index = daemon.state_dir / "index"
    assert (index / ".tantivy-writer.lock").exists()  # the dead writer's lock is left behind

    daemon.env = {}
    log_before = len(daemon.log_text())
    daemon.start()
    daemon.wait_for_mount()
    log = daemon.log_text()[log_before:]
    assert "did not stop cleanly" in log and "is damaged" not in log  # nothing committed was lost or broken
    found = subprocess.run([sys.executable, "-m", "musicfs", "search", "symphony", "--state-dir",
                            str(daemon.state_dir)], capture_output=True, text=True, timeout=60, check=True)
    lines = found.stdout.splitlines()
    assert lines and all(os.path.isfile(os.path.join(daemon.mountpoint, p)) for p in lines)
    assert {file_digest(p) for p in tree_files(daemon.mountpoint)} == {file_digest(p) for p in good}
