"""L2, row 4.5: an origin file that changes while it is being read never gives bytes the origin never had.

* Page cache: a handle opened before a same-size replace (atomic rename, as tag editors save) reads the
  old version again after the rescan; a fresh open afterwards must see only the new version. A changed
  file is a new inode, so the kernel cannot keep old pages under the name of the new version.
* In-place edit during a fetch: a chunk is being fetched when the origin file is edited in place, first in
  the range of a chunk that is already cached, then in the range being fetched. The daemon is held between
  its identity check and the read by the `origin-read-checked` failpoint (armed through FAILPOINTS, it
  logs when it sleeps), so the edit lands inside the fetch every time. The fetch must be refused (the
  identity is checked again after the read), nothing of it cached, and a rescan started by itself.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path

import pytest

from musicfs.commands.demo import BIG_FILE_PATH
from musicfs.shared import points
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import flac_audio_start, make_library
from musicfs_test_utils.mount_io import mount_file_for

pytestmark = pytest.mark.l2

CHUNK = 64 * 1024
PAGE = 4096


def start(daemons, root: Path, tmp_path: Path, env: dict | None = None, name: str = "d", **config):
    path = write_config(tmp_path / f"{name}.toml", **{"chunk_size": "64K", **config})
    daemon = daemons([root], name=name, extra_args=["--config", str(path)], env=env)
    daemon.start()
    daemon.wait_for_mount()
    return daemon


@pytest.fixture
def big_track(tmp_path) -> tuple[Path, Path]:
    """A library with one 4 MB FLAC (64 chunks of 64 KiB): (root, the FLAC)."""
    root = tmp_path / "library"
    make_library(root, 1, big_file_mb=4, hostile=False)
    return root, root / BIG_FILE_PATH


def other_audio(data: bytes) -> bytes:
    """The same tags and size, every audio byte different."""
    audio = flac_audio_start(data)
    return data[:audio] + bytes(b ^ 0xFF for b in data[audio:])


def read_range(path: Path, offset: int, size: int, *, drop_cache: bool = True) -> bytes:
    """Bytes [offset, offset+size) through the mount, with no kernel readahead (FADV_RANDOM)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return read_fd(fd, offset, size)
    finally:
        os.close(fd)


def read_fd(fd: int, offset: int, size: int) -> bytes:
    parts, end = [], offset + size
    while offset < end:
        data = os.pread(fd, min(128 << 10, end - offset), offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
    return b"".join(parts)


def stale_pages(got: bytes, old: bytes, new: bytes) -> int:
    """Pages of `got` that hold the old version where the new one differs."""
    return sum(1 for i in range(0, len(got), PAGE)
               if got[i:i + PAGE] != new[i:i + PAGE] and got[i:i + PAGE] == old[i:i + PAGE])


def shows_version(mounted: Path, origin: Path) -> bool:
    """The mount's entry for the track has the origin file's current mtime (a rescan swapped it in)."""
    try:
        return mounted.stat().st_mtime_ns == origin.stat().st_mtime_ns
    except OSError:
        return False


@pytest.mark.resilience("4.5")
def test_a_handle_from_before_a_same_size_replace_never_leaves_old_pages_for_a_fresh_open(big_track, daemons,
                                                                                          tmp_path):
    root, track = big_track
    daemon = start(daemons, root, tmp_path)
    mounted = mount_file_for(daemon.mountpoint, track)
    old = track.read_bytes()
    new = other_audio(old)
    fd = os.open(mounted, os.O_RDONLY)
    try:
        assert read_fd(fd, 0, len(old)) == old  # the old version is in the daemon's cache and the page cache

        staged = tmp_path / "saved.flac"  # a tag editor saves beside and renames over: same size, new file
        staged.write_bytes(new)
        os.replace(staged, track)
        daemon.signal(signal.SIGHUP)
        eventually(lambda: shows_version(mounted, track), 30, "the rescan showing the new version")

        again = read_fd(fd, 0, 4 << 20)  # the old handle reads its version again (refilling its pages)
        assert again == old[:4 << 20]
    finally:
        os.close(fd)

    with open(mounted, "rb") as fh:  # a fresh open, page cache and all
        got = fh.read()
    assert len(got) == len(new)
    assert got == new, f"{stale_pages(got, old, new)} of {len(got) // PAGE} pages are the old version's"
    assert daemon.stop() == 0


@pytest.mark.resilience("4.5")
def test_an_in_place_edit_during_a_fetch_is_never_cached_mixed_and_starts_a_rescan(big_track, daemons, tmp_path):
    root, track = big_track
    # Scan once without the failpoint; the armed daemon then starts from the catalog (no tag reads).
    first = start(daemons, root, tmp_path, name="scan")
    assert first.stop() == 0
    sleeping = f"failpoint {points.ORIGIN_READ_CHECKED} sleeping"
    # Without read-ahead: the one fetch of the next chunk is the reader's own, paused between its checks; loads ahead
    # would pause at the same failpoint, queued as the reader enters a chunk, at times the log cannot tell apart.
    daemon = start(daemons, root, tmp_path, name="scan", readahead=0,
                   env={"FAILPOINTS": f"{points.ORIGIN_READ_CHECKED}=sleep(700)"})
    mounted = mount_file_for(daemon.mountpoint, track)

    for attempt in range(3):
        c0 = 3 * attempt  # a cached chunk, and the next one, read for the first time
        at0, at1, end = c0 * CHUNK, (c0 + 1) * CHUNK, (c0 + 2) * CHUNK
        old = track.read_bytes()
        assert read_range(mounted, at0, CHUNK) == old[at0:at1]  # chunk c0 is cached

        seen = daemon.log_text().count(sleeping)
        outcome: list[bytes | OSError] = []

        def read_next_chunk():
            try:
                outcome.append(read_range(mounted, at1, CHUNK))
            except OSError as exc:
                outcome.append(exc)

        reader = threading.Thread(target=read_next_chunk)
        reader.start()
        try:  # the daemon has checked the identity and not read yet: edit in place, chunk c0 then c0 + 1
            eventually(lambda: daemon.log_text().count(sleeping) > seen, 30, "the fetch of the next chunk")
            new = bytearray(old)
            with open(track, "r+b") as fh:
                for at in (at1 - 4096, end - 4096):
                    new[at:at + 1024] = bytes(b ^ 0x5A for b in old[at:at + 1024])
                    fh.seek(at)
                    fh.write(new[at:at + 1024])
                    fh.flush()
                    os.fsync(fh.fileno())
        finally:
            reader.join(60)
        new = bytes(new)
        got = outcome[0]
        assert isinstance(got, OSError) and got.errno == errno.EIO or got == old[at1:end], \
            f"attempt {attempt}: the edited chunk was served under the old identity"

        # A fresh handle: one version or an error, never chunk c0 old with chunk c0 + 1 new.
        try:
            both = read_range(mounted, at0, 2 * CHUNK)
        except OSError as exc:
            assert exc.errno == errno.EIO
        else:
            assert both in (old[at0:end], new[at0:end]), (
                f"attempt {attempt}: chunk {c0} {'old' if both[:CHUNK] == old[at0:at1] else 'new'}, "
                f"chunk {c0 + 1} {'old' if both[CHUNK:] == old[at1:end] else 'new'}: a mix the origin never had")

        # The refused fetch started a rescan by itself (no SIGHUP): the mount shows the new version.
        eventually(lambda: shows_version(mounted, track), 60, "the rescan started by the changed file")
        assert read_range(mounted, at0, CHUNK) == new[at0:at1]
    assert "changed under a read: rescanning" in daemon.log_text()
    assert daemon.stop() == 0


@pytest.mark.resilience("4.5")
def test_a_change_during_a_pushed_sequential_read_leaves_no_page_of_the_old_version_for_later_reads(
        big_track, daemons, tmp_path):
    root, track = big_track
    daemon = start(daemons, root, tmp_path, page_push=True)
    mounted = mount_file_for(daemon.mountpoint, track)
    old = track.read_bytes()
    new = other_audio(old)
    half = len(old) // 2
    fd = os.open(mounted, os.O_RDONLY)
    try:
        assert read_fd(fd, 0, half) == old[:half]  # sequential: chunks ahead of the reader are pushed
        eventually(lambda: daemon.status()["reader"]["pages"]["pushes"] > 0, 30, "chunks pushed to the page cache")
        with open(track, "r+b") as fh:  # the origin file changes in place, mid-read
            fh.write(new)
        offset = half
        while offset < len(old):  # the old handle: its pushed pages are its own version's; the rest fails
            try:
                data = os.pread(fd, 128 << 10, offset)
            except OSError as exc:
                assert exc.errno == errno.EIO
                break
            assert data and data == old[offset:offset + len(data)], f"bytes at {offset} of no version"
            offset += len(data)
    finally:
        os.close(fd)

    daemon.signal(signal.SIGHUP)
    eventually(lambda: shows_version(mounted, track), 30, "the rescan showing the new version")
    for _ in range(2):  # fresh opens, page cache and all: only the new bytes
        with open(mounted, "rb") as fh:
            got = fh.read()
        assert got == new, f"{stale_pages(got, old, new)} of {len(got) // PAGE} pages are the old version's"
    assert read_range(mounted, half, 1 << 20, drop_cache=False) == new[half:half + (1 << 20)]
    pages = daemon.status()["reader"]["pages"]
    assert pages["retired"] >= 1 and pages["failed"] == 0
    assert daemon.stop() == 0
