"""L2, as root: the cache on a real disk that fills up (2.8) or turns read-only (6.6) under a running mount.

- A 2 MiB tmpfs holds the cache of a library several times its size: ENOSPC evicts and retries, else the
  read is served uncached; every byte is right and the daemon never falls over.
- The cache folder turns read-only under the running daemon: reads go straight to the origin
  (passthrough), status says the cache is unstable/down; once it is writable again a probe re-enables it.
  SQLite holds index.db open for writing, so the whole tmpfs cannot be remounted read-only while the
  daemon runs (EBUSY); a read-only bind mount on top of the folder (`mount -o remount,bind,ro`) makes every
  new write under it fail with EROFS instead (see musicfs_test_utils/disks.py). The whole-filesystem
  `mount -o remount,ro` is used where nothing holds it open: a daemon that starts on a read-only cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from musicfs_test_utils import disks
from musicfs_test_utils.assertions import assert_mount_matches_origin, tree_files
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.mount_io import read_digest

pytestmark = [pytest.mark.l2,
              pytest.mark.skipif(not disks.can_mount(), reason="needs root and mount(8) for tmpfs and remounts")]




def read_digests(*paths: Path) -> list[str]:
    return [read_digest(p) for p in paths]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config(tmp_path: Path, **values: str) -> list[str]:
    return ["--config", str(write_config(tmp_path / "musicfs.toml", **values))]


@pytest.fixture(scope="module")
def big_library(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk") / "library"
    make_library(root, 8, big_file_mb=6, hostile=False)
    return root, tree_files(root)  # tracks and covers


@pytest.mark.resilience("2.8")
def test_a_cache_on_a_tiny_full_disk_serves_every_byte_and_never_crashes(big_library, daemons, tmp_path):
    root, files = big_library
    daemon = daemons([root], extra_args=config(tmp_path, memory_cache="1K"))  # 1 MiB chunks, 10G quota
    with disks.tmpfs(daemon.cache_dir, "2m"):
        daemon.start()
        daemon.wait_for_mount()
        for _ in range(2):  # twice over a library four times the disk
            assert_mount_matches_origin(daemon.mountpoint, files)
            got = read_digests(*tree_files(daemon.mountpoint))  # past the page cache: the daemon answers
            assert sorted(got) == sorted(sha(p) for p in files)
        assert daemon.alive()
        used, total = disks.usage(daemon.cache_dir)
        assert total <= 2 << 20 and used <= total
        log = daemon.log_text()
        assert "disk full" in log  # ENOSPC was met ...
        assert "serving it uncached" in log or "evicted" in log  # ... and handled, not raised
        assert "Traceback" not in log and "failed unexpectedly" not in log
        status = daemon.status()["cache"]
        assert status["state"] == "normal" and status["used_bytes"] <= total  # a full disk is not a broken one
        assert daemon.stop() == 0


@pytest.mark.resilience("6.6")
def test_a_cache_folder_turned_read_only_means_passthrough_until_a_probe_sees_it_writable(big_library, daemons,
                                                                                       tmp_path):
    root, files = big_library
    daemon = daemons([root], extra_args=config(tmp_path, memory_cache="1K", chunk_size="64K"))
    small = sorted((f for f in files if f.suffix == ".flac"), key=lambda p: p.stat().st_size)
    with disks.tmpfs(daemon.cache_dir, "64m"):
        daemon.start()
        daemon.wait_for_mount()
        mount = {p.stat().st_size: p for p in tree_files(daemon.mountpoint)}
        first, second, third = (mount[f.stat().st_size] for f in small[-4:-1])
        assert read_digests(first) == [sha(small[-4])]  # cached
        chunks_before = daemon.status()["cache"]["chunks"]

        with disks.read_only(daemon.cache_dir) as writable_again:
            assert read_digests(second, first) == [sha(small[-3]), sha(small[-4])]  # right bytes throughout
            daemon.wait_for_log("Read-only file system")
            state = daemon.status()["cache"]
            assert state["state"] in ("unstable", "down"), state
            assert "Read-only file system" in state["reason"] or "probe" in state["reason"]
            assert read_digests(third) == [sha(small[-2])]
            assert daemon.status()["cache"]["chunks"] == chunks_before  # passthrough: nothing stored
            eventually(lambda: daemon.status()["cache"]["state"] == "down", 30, "the cache marked down")
            writable_again()
            eventually(lambda: daemon.status()["cache"]["state"] == "normal", 30, "a probe re-enabling the cache")
        assert read_digests(third) == [sha(small[-2])]
        assert daemon.status()["cache"]["chunks"] > chunks_before  # caching again
        assert "a probe passed: the cache is used again" in daemon.log_text()
        assert daemon.stop() == 0


@pytest.mark.resilience("6.6")
def test_a_daemon_started_on_a_read_only_cache_serves_and_takes_the_cache_back_when_remounted_rw(
        big_library, daemons, tmp_path):
    root, files = big_library
    daemon = daemons([root], extra_args=config(tmp_path, memory_cache="1K", chunk_size="64K"))
    with disks.tmpfs(daemon.cache_dir, "64m"):
        disks.remount(daemon.cache_dir, "ro")  # nothing holds it open yet: the whole filesystem
        daemon.start()
        daemon.wait_for_mount()
        assert daemon.status()["cache"]["state"] == "down"
        assert_mount_matches_origin(daemon.mountpoint, files)  # straight from the origin
        assert "cache: cannot open" in daemon.log_text()
        disks.remount(daemon.cache_dir, "rw")
        eventually(lambda: daemon.status()["cache"]["state"] == "normal", 30, "a probe opening the cache")
        assert read_digests(*tree_files(daemon.mountpoint))
        assert daemon.status()["cache"]["chunks"] > 0
        assert daemon.stop() == 0

