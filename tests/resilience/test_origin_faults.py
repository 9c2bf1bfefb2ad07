"""L2: a real mount of a local library whose origin misbehaves.

* 3.8: a FUSE read blocked on a hanging origin answers EIO after read_timeout; the reading process ends.
* 5.1: 100 concurrent reads all finish; one file stuck at the origin does not stall cached reads of others.
* 4.4: a file changed at the origin is never served as a mix of old and new bytes; after a rescan (SIGHUP)
  the tree shows the new file and reads return it whole.

A hanging origin file is a FIFO put in place of the file after the scan: the origin's open() then blocks in
its worker thread, as on a hung NFS mount, until the test opens the FIFO's other end.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from musicfs_test_utils.assertions import file_digest
from musicfs_test_utils.daemon import wait_until, write_config
from musicfs_test_utils.fixtures import flac_audio_start
from musicfs_test_utils.mount_io import mount_files_by_size, read_in_child, reader_process, reader_result

pytestmark = pytest.mark.l2




def read_uncached(path: Path) -> bytes:
    """Read through the mount from this process, past the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def start(daemons, root: Path, tmp_path: Path, **config):
    path = write_config(tmp_path / "musicfs.toml", **{"chunk_size": "64K", **config})
    daemon = daemons([root], extra_args=["--config", str(path)])
    daemon.start()
    daemon.wait_for_mount()
    return daemon


@pytest.fixture
def library_by_size(library_copy) -> tuple[Path, list[Path]]:
    root, files = library_copy
    return root, sorted(files, key=lambda f: f.stat().st_size)


class Fifo:
    """Turn an origin file into a FIFO (reads of it hang in open()); release() lets every stuck open() return."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        stat = path.stat()
        path.unlink()
        os.mkfifo(path)
        self.stat = stat

    def release(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # wakes every reader blocked in open()
        except OSError as exc:
            assert exc.errno == errno.ENXIO  # nobody was blocked
        else:
            os.close(fd)

    def restore(self) -> None:
        self.release()
        self.path.unlink()
        self.path.write_bytes(self.data)
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))


@pytest.mark.resilience("3.8")
def test_a_read_stuck_at_the_origin_answers_eio_after_read_timeout_and_the_reader_exits(library_by_size, daemons,
                                                                                         tmp_path):
    root, files = library_by_size
    read_timeout = 2.0
    daemon = start(daemons, root, tmp_path, read_timeout=read_timeout)
    pairs = mount_files_by_size(daemon.mountpoint, files)
    stuck, other = files[-1], files[0]
    fifo = Fifo(stuck)
    try:
        outcome, code, seconds = read_in_child(pairs[stuck])
        assert (outcome, code) == ("ERR", str(errno.EIO))
        # Each FUSE read gives up at read_timeout; the kernel may retry a failed readahead once.
        assert read_timeout * 0.9 <= seconds < 2 * read_timeout + 1.5, f"the reader waited {seconds:.1f}s"
        assert read_in_child(pairs[other])[:2] == ("OK", file_digest(other))  # the daemon serves on
        assert "timed out; answering EIO" in daemon.log_text()
    finally:
        fifo.restore()
    assert read_in_child(pairs[stuck])[:2] == ("OK", file_digest(stuck))
    assert daemon.stop() == 0


@pytest.mark.resilience("5.1")
def test_100_concurrent_reads_finish_and_a_stuck_file_does_not_stall_cached_reads(library_by_size, daemons, tmp_path):
    root, files = library_by_size
    read_timeout = 3.0
    daemon = start(daemons, root, tmp_path, read_timeout=read_timeout)
    pairs = mount_files_by_size(daemon.mountpoint, files)
    stuck = files[-1]
    others = [f for f in pairs if f != stuck]
    digests = {f: file_digest(f) for f in pairs}

    def read(f: Path) -> str:
        return hashlib.sha256(read_uncached(pairs[f])).hexdigest()

    # 100 concurrent cold reads of every file but one: all finish, all right.
    jobs = [others[i % len(others)] for i in range(100)]
    with ThreadPoolExecutor(100) as pool:
        assert list(pool.map(read, jobs, timeout=60)) == [digests[f] for f in jobs]

    fifo = Fifo(stuck)
    try:
        blocked = reader_process(pairs[stuck])
        wait_until(lambda: fifo_has_reader(daemon.pid), 10, "the daemon stuck opening the FIFO")
        started = time.monotonic()
        with ThreadPoolExecutor(100) as pool:
            assert list(pool.map(read, jobs, timeout=60)) == [digests[f] for f in jobs]
        took = time.monotonic() - started
        assert blocked.poll() is None, "the stuck read ended early: the test proves nothing"
        assert took < read_timeout, f"100 cached reads took {took:.1f}s while one file hung at the origin"
        outcome, code, _ = reader_result(blocked)
        assert (outcome, code) == ("ERR", str(errno.EIO))
    finally:
        fifo.restore()
    assert daemon.stop() == 0


def fifo_has_reader(pid: int) -> bool:
    """Some thread of the daemon is blocked opening a FIFO (the kernel's wait_for_partner)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as fh:
                if fh.read() == "wait_for_partner":
                    return True
        except OSError:
            continue
    return False


CHUNK = 64 * 1024


@pytest.mark.resilience("4.4")
def test_a_file_changed_at_the_origin_is_never_mixed_and_shows_new_after_a_rescan(library_by_size, daemons, tmp_path):
    root, files = library_by_size
    daemon = start(daemons, root, tmp_path, read_timeout=5.0)
    pairs = mount_files_by_size(daemon.mountpoint, files)
    # A FLAC of more than one chunk whose tags (metadata blocks) all sit early in the first chunk.
    target = max((f for f in pairs if f.suffix == ".flac" and f.stat().st_size > CHUNK
                  and flac_audio_start(f.read_bytes()) < CHUNK // 2), key=lambda f: f.stat().st_size)
    mounted = pairs[target]
    old = target.read_bytes()
    with open(mounted, "rb") as fh:
        assert fh.read(CHUNK) == old[:CHUNK]  # its first chunk is now cached

    # Same tags (the metadata blocks are untouched), new audio bytes in every chunk, a new size and mtime.
    audio = flac_audio_start(target.read_bytes()) + 64
    new = old[:audio] + bytes(b ^ 0xFF for b in old[audio:]) + b"\0" * 4096
    target.write_bytes(new)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10 * 10**9))

    outcome, digest, _ = read_in_child(mounted)  # before the rescan: never a mix of old and new
    # All old (every chunk was cached by the kernel's readahead) or EIO (an uncached chunk would be new).
    assert (outcome, digest) in {("ERR", str(errno.EIO)), ("OK", hashlib.sha256(old).hexdigest())}, (outcome, digest)

    daemon.signal(signal.SIGHUP)
    try:
        wait_until(lambda: mounted.exists() and mounted.stat().st_size == len(new), 30, "the tree showing the new file")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{daemon.log_text()}") from None
    assert read_in_child(mounted)[:2] == ("OK", hashlib.sha256(new).hexdigest())
    assert "1 changed" in daemon.log_text()
    assert daemon.stop() == 0
