"""L2, row 4.6: a version is cached only once it can no longer change unseen; after a rescan the mount equals
the origin, byte for byte.

* Whole-second timestamps (an ext4 image with 128-byte inodes, as SFTP, FAT and many NAS shares give): a track
  is written, rescanned and read, then written again with the same size within the same second, so its
  identity (size, mtime, inode, ctime) does not change. Bytes read between the two writes must not have been
  kept: after the next rescan every read gives the second version.
* A same-size rewrite whose mtime is put back (`touch -r`, restores, sync tools) on a filesystem with ns
  timestamps: the ctime moved, so it is a new version, read whole as such after the rescan.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from musicfs.commands.demo import BIG_FILE_PATH
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.disks import can_mount, ext4_image
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import flac_audio_start, make_library
from musicfs_test_utils.mount_io import mount_file_for

pytestmark = pytest.mark.l2


def start(daemons, root: Path, tmp_path: Path):
    daemon = daemons([root], extra_args=["--config", str(write_config(tmp_path / "d.toml", chunk_size="64K"))])
    daemon.start()
    daemon.wait_for_mount()
    return daemon


def variant(data: bytes, n: int) -> bytes:
    """The same tags and size, the audio bytes XORed with n (1..255): every version differs from the others."""
    audio = flac_audio_start(data)
    return data[:audio] + bytes(b ^ n for b in data[audio:])


def write_in_place(path: Path, data: bytes) -> os.stat_result:
    """Overwrite the file's bytes in place (same inode, as a tag editor that rewrites in place); its stat after."""
    with open(path, "r+b") as fh:
        fh.write(data)
    return path.stat()


def read_all(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def inode_of(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def at_the_start_of_a_second() -> None:
    """Return just after the wall clock turns a second (and the kernel's coarse clock, a tick behind, has too),
    so what follows has most of one second to run in."""
    while not 0.02 <= (frac := time.time() % 1.0) <= 0.1:
        time.sleep((1.02 - frac) % 1.0)


@pytest.mark.resilience("4.6")
@pytest.mark.skipif(not can_mount(), reason="needs root and mount(8) for a loop-mounted ext4 image")
def test_two_same_size_writes_within_one_second_on_a_whole_second_disk_never_leave_the_first_cached(daemons,
                                                                                                     tmp_path):
    with ext4_image(tmp_path / "disk") as disk:
        root = disk / "library"
        make_library(root, 1, big_file_mb=2, hostile=False)
        track = root / BIG_FILE_PATH
        base = track.read_bytes()
        assert track.stat().st_ctime_ns % 10**9 == 0, "the image was to keep whole-second timestamps"
        daemon = start(daemons, root, tmp_path)
        mounted = mount_file_for(daemon.mountpoint, track)

        for attempt in range(10):
            first_version, second_version = variant(base, 2 * attempt + 1), variant(base, 2 * attempt + 2)
            at_the_start_of_a_second()
            ino = inode_of(mounted)
            first = write_in_place(track, first_version)
            written = time.time()
            daemon.signal(signal.SIGHUP)
            eventually(lambda: inode_of(mounted) not in (ino, None), 10, "the rescan showing the first write")
            if time.time() - written >= 1.0:
                # The rescan waited for the version to settle before recording it (a scan does, on a source of
                # whole seconds): no read can come between two writes of one second. The bytes must still be
                # right after the next write, whatever its second.
                ino = inode_of(mounted)
                write_in_place(track, second_version)  # a second later: a new version, shown after a rescan
                daemon.signal(signal.SIGHUP)
                eventually(lambda: inode_of(mounted) not in (ino, None), 10, "the rescan showing the second write")
                break
            with open(mounted, "rb") as fh:  # read while it is the origin's: the mount fetches its first chunks
                assert fh.read(256 << 10) == first_version[:256 << 10]
            second = write_in_place(track, second_version)
            if (second.st_ctime_ns, second.st_mtime_ns, second.st_size) == (first.st_ctime_ns, first.st_mtime_ns,
                                                                             first.st_size):
                break  # one identity, two contents: what this test is about
        else:
            pytest.fail("ten attempts could not write twice, rescan and read within one second")

        for _ in range(2):  # after any rescan the mount equals the origin
            scans = daemon.log_text().count("scan of ")
            daemon.signal(signal.SIGHUP)
            eventually(lambda: daemon.log_text().count("scan of ") > scans, 10, "a rescan")
            got = read_all(mounted)
            assert got == second_version, (f"{sum(got[i] != second_version[i] for i in range(len(got)))} bytes "
                                           "differ from the origin's version")
        assert daemon.stop() == 0


@pytest.mark.resilience("4.6")
def test_a_same_size_rewrite_with_its_mtime_put_back_is_read_whole_as_the_new_version(daemons, tmp_path):
    root = tmp_path / "library"
    make_library(root, 1, big_file_mb=4, hostile=False)
    track = root / BIG_FILE_PATH
    old = track.read_bytes()
    daemon = start(daemons, root, tmp_path)
    mounted = mount_file_for(daemon.mountpoint, track)
    assert read_all(mounted) == old  # cached whole, page cache and all

    before = track.stat()
    new = variant(old, 0xFF)
    write_in_place(track, new)
    os.utime(track, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r: the mtime put back
    assert (track.stat().st_size, track.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    ino = inode_of(mounted)
    daemon.signal(signal.SIGHUP)
    eventually(lambda: inode_of(mounted) not in (ino, None), 30, "the rescan showing the rewrite as a new version")
    assert read_all(mounted) == new
    assert daemon.stop() == 0
