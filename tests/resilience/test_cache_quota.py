"""L2, row 6.1: a file larger than the cache quota, read through a real mount and closed, leaves the cache
within its quota (an open file pins only the chunks around where it is read, and a release trims at once); the
chunks of a track being played outlive the chunks of other reads, until it is closed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.commands.demo import BIG_FILE_PATH
from musicfs_test_utils.assertions import file_digest, tree_files
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.mount_io import mount_file_for, read_digest

pytestmark = pytest.mark.l2

QUOTA = 2 << 20


def start(tmp_path: Path, daemons, root: Path, **config):
    path = write_config(tmp_path / "musicfs.toml", **config)
    daemon = daemons([root], extra_args=["--config", str(path)])
    daemon.start()
    daemon.wait_for_mount()
    return daemon


@pytest.mark.resilience("6.1")
def test_a_file_larger_than_the_quota_read_and_closed_leaves_the_cache_within_it(tmp_path, daemons):
    root = tmp_path / "library"
    make_library(root, 1, big_file_mb=6, hostile=False)
    track = root / BIG_FILE_PATH
    daemon = start(tmp_path, daemons, root, chunk_size="256K", cache_size="2M", readahead="1M")
    mounted = mount_file_for(daemon.mountpoint, track)
    assert track.stat().st_size > 2 * QUOTA

    assert read_digest(mounted) == file_digest(track)  # read whole in a child process, then closed

    eventually(lambda: daemon.status()["cache"]["used_bytes"] <= QUOTA, 10,
               "the cache back within its quota after the close")
    assert daemon.status()["cache"]["pinned"] == 0
    assert read_digest(mounted) == file_digest(track)  # and it reads right again
    assert daemon.stop() == 0


# A player: reads the whole file sequentially (past the page cache), says so, keeps it open until told to close.
PLAYER = r"""
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
data = b""
while part := os.read(fd, 128 << 10):
    data += part
print("READ", hashlib.sha256(data).hexdigest(), flush=True)
sys.stdin.readline()
os.close(fd)
"""


@pytest.mark.resilience("6.1")
def test_a_played_track_keeps_its_chunks_while_other_reads_evict_until_it_is_closed(tmp_path, daemons):
    root = tmp_path / "library"
    make_library(root / "a", 24, big_file_mb=1, hostile=False)
    for seed in (1, 2):  # more small tracks (other bytes): what a media server reads meanwhile
        make_library(root / f"s{seed}", 24, seed=seed, hostile=False)
    track = root / "a" / BIG_FILE_PATH  # alone in its album: no next track is fetched ahead of it
    chunk, quota = 64 << 10, 2560 << 10
    daemon = start(tmp_path, daemons, root, chunk_size="64K", cache_size="2560K", readahead="512K")
    mounted = mount_file_for(daemon.mountpoint, track)
    data = track.read_bytes()
    played = [hashlib.sha256(data[i:i + chunk]).hexdigest() for i in range(0, len(data), chunk)]
    others = [p for p in tree_files(daemon.mountpoint) if p != mounted and p.suffix in (".flac", ".mp3", ".ogg")]
    assert sum(p.stat().st_size for p in others) > quota - len(data) + (1 << 20)  # far more than the room left

    def cached(digest: str) -> bool:
        return (daemon.cache_dir / "chunks" / digest[:2] / digest).exists()

    player = subprocess.Popen([sys.executable, "-c", PLAYER, str(mounted)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert player.stdout.readline().split() == ["READ", hashlib.sha256(data).hexdigest()]
        assert all(cached(d) for d in played)
        # held, all but the chunks it is in: protected behind the player, pinned where the daemon saw no READ yet
        # (pushed pages answered the player without asking)
        held = daemon.status()["cache"]
        assert held["protected"] + held["pinned"] >= len(played) - 3, held
        for other in others:
            read_digest(other)
        assert all(cached(d) for d in played), "a chunk of the track being played went before other reads' chunks"
        assert daemon.status()["cache"]["used_bytes"] <= quota
    finally:
        player.communicate("close\n", timeout=30)
    # closed: its chunks are ordinary again (what stays protected is the heads of the last next tracks fetched
    # ahead of the small tracks read to their end: 4 of them, 2 chunks each at most)
    eventually(lambda: daemon.status()["cache"]["protected"] <= 4 * 2 and daemon.status()["cache"]["pinned"] == 0,
               10, "the closed track's chunks ordinary again")
    assert daemon.status()["cache"]["used_bytes"] <= quota
    assert daemon.stop() == 0
