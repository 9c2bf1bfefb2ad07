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
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from musicfs_test_utils.assertions import file_digest, tree_files
from musicfs_test_utils.daemon import wait_until

pytestmark = pytest.mark.l2

_READER = r"""
import hashlib, os, sys, time
started = time.monotonic()
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # no page cache: the daemon must answer
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
except OSError as exc:
    print("ERR", exc.errno, time.monotonic() - started)
else:
    print("OK", hashlib.sha256(data).hexdigest(), time.monotonic() - started)
"""


def reader_process(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _READER, str(path)], stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[str, str, float]:
    """("OK", sha256, seconds) or ("ERR", errno, seconds) of a reader process, which must finish."""
    out = proc.communicate(timeout=timeout)[0].split()
    return out[0], out[1], float(out[2])


def read_in_child(path: Path) -> tuple[str, str, float]:
    return result(reader_process(path))


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
    path = tmp_path / "musicfs.toml"
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {"chunk_size": "64K", **config}.items()))
    daemon = daemons([root], extra_args=["--config", str(path)])
    daemon.start()
    daemon.wait_for_mount()
    return daemon


def by_size(mountpoint: str, origin_files: list[Path]) -> dict[Path, Path]:
    """origin file -> its mount file, for files of a unique size (getattr only: nothing is read)."""
    mount: dict[int, list[Path]] = {}
    for p in tree_files(mountpoint):
        mount.setdefault(p.stat().st_size, []).append(p)
    sizes = [f.stat().st_size for f in origin_files]
    return {f: mount[f.stat().st_size][0] for f in origin_files
            if sizes.count(f.stat().st_size) == 1 and len(mount.get(f.stat().st_size, [])) == 1}


@pytest.fixture
def library_copy(small_library, tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "library"
    shutil.copytree(small_library[0], root)
    files = [root / p.relative_to(small_library[0]) for p in small_library[2]]
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
def test_a_read_stuck_at_the_origin_answers_eio_after_read_timeout_and_the_reader_exits(library_copy, daemons,
                                                                                         tmp_path):
    root, files = library_copy
    read_timeout = 2.0
    daemon = start(daemons, root, tmp_path, read_timeout=read_timeout)
    pairs = by_size(daemon.mountpoint, files)
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
def test_100_concurrent_reads_finish_and_a_stuck_file_does_not_stall_cached_reads(library_copy, daemons, tmp_path):
    root, files = library_copy
    read_timeout = 3.0
    daemon = start(daemons, root, tmp_path, read_timeout=read_timeout)
    pairs = by_size(daemon.mountpoint, files)
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
        outcome, code, _ = result(blocked)
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


def flac_audio_start(path: Path) -> int:
    """Offset of the first audio frame: after the last metadata block."""
    data = path.read_bytes()
    assert data[:4] == b"fLaC"
    offset = 4
    while True:
        header, length = data[offset], int.from_bytes(data[offset + 1:offset + 4], "big")
        offset += 4 + length
        if header & 0x80:
            return offset


@pytest.mark.resilience("4.4")
def test_a_file_changed_at_the_origin_is_never_mixed_and_shows_new_after_a_rescan(library_copy, daemons, tmp_path):
    root, files = library_copy
    daemon = start(daemons, root, tmp_path, read_timeout=5.0)
    pairs = by_size(daemon.mountpoint, files)
    # A FLAC of more than one chunk whose tags (metadata blocks) all sit early in the first chunk.
    target = max((f for f in pairs if f.suffix == ".flac" and f.stat().st_size > CHUNK
                  and flac_audio_start(f) < CHUNK // 2), key=lambda f: f.stat().st_size)
    mounted = pairs[target]
    old = target.read_bytes()
    with open(mounted, "rb") as fh:
        assert fh.read(CHUNK) == old[:CHUNK]  # its first chunk is now cached

    # Same tags (the metadata blocks are untouched), new audio bytes in every chunk, a new size and mtime.
    audio = flac_audio_start(target) + 64
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
