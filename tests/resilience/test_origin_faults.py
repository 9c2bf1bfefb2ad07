"""L2: a real mount of a local library whose origin misbehaves.

* 3.8: a FUSE read blocked on a hanging origin answers EIO after read_timeout; the reading process ends.
* 5.1: 100 concurrent reads all finish; one file stuck at the origin does not stall cached reads of others.
* 4.4: a file changed at the origin is never served as a mix of old and new bytes; after a rescan (SIGHUP)
  the tree shows the new file and reads return it whole.

* 4.7: a FIFO put in place of a track is refused at once (never opened for reading, so it cannot hang); an
  origin call that hangs (the `origin-read-checked` failpoint sleeping in its worker thread, as on a hung NFS
  share) costs its read read_timeout and marks the origin unhealthy with the reason, never more.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from musicfs.shared import points
from musicfs_test_utils.assertions import file_digest
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import flac_audio_start
from musicfs_test_utils.mount_io import (
    mount_files_by_size,
    read_in_child,
    reader_process,
    reader_result,
)

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


def start_hung(daemons, root: Path, tmp_path: Path, hang_ms: int, **config):
    """A daemon whose first origin read hangs for `hang_ms` in its worker thread, as on a hung NFS share (the
    `origin-read-checked` failpoint, armed with a count of 1): the library is scanned first by a daemon without
    it, so the armed one starts from the catalog and its first origin read is a test's."""
    first = start(daemons, root, tmp_path, **config)
    assert first.stop() == 0
    path = write_config(tmp_path / "musicfs.toml", **{"chunk_size": "64K", **config})
    daemon = daemons([root], extra_args=["--config", str(path)],
                     env={"FAILPOINTS": f"{points.ORIGIN_READ_CHECKED}=1*sleep({hang_ms})"})
    daemon.start()
    daemon.wait_for_mount()
    return daemon


HANGING = f"failpoint {points.ORIGIN_READ_CHECKED} sleeping"


@pytest.mark.resilience("3.8", "4.7")
@pytest.mark.expected_log(r"origin .* is unhealthy: .*1 call stuck past the read deadline")
def test_a_read_stuck_at_the_origin_answers_eio_at_read_timeout_and_the_origin_says_why(library_by_size, daemons,
                                                                                         tmp_path):
    root, files = library_by_size
    read_timeout = 2.0
    daemon = start_hung(daemons, root, tmp_path, hang_ms=6000, read_timeout=read_timeout, health_interval=0.5)
    pairs = mount_files_by_size(daemon.mountpoint, files)
    stuck, other = files[-1], files[0]
    outcome, code, seconds = read_in_child(pairs[stuck])
    assert (outcome, code) == ("ERR", str(errno.EIO))
    assert HANGING in daemon.log_text()
    # read_timeout end to end: the stuck call marked its origin unhealthy, so the kernel's retry fails at once
    assert read_timeout * 0.9 <= seconds < read_timeout + 1.0, f"the reader waited {seconds:.1f}s"
    [origin] = daemon.status()["origins"]
    assert origin["state"] == "unhealthy" and "stuck past the read deadline" in origin["last_error"]
    # the hung call returns at last: the next probe brings the origin back, and every file reads right
    eventually(lambda: daemon.status()["origins"][0]["state"] == "healthy", 15, "the origin healthy again")
    assert read_in_child(pairs[other])[:2] == ("OK", file_digest(other))
    assert read_in_child(pairs[stuck])[:2] == ("OK", file_digest(stuck))
    assert daemon.stop() == 0


@pytest.mark.resilience("5.1")
@pytest.mark.expected_log(r"origin .* is unhealthy: .*1 call stuck past the read deadline",
                          r"every origin is down", r"fuse read: every origin is down")
def test_100_concurrent_reads_finish_and_a_stuck_file_does_not_stall_cached_reads(library_by_size, daemons, tmp_path):
    root, files = library_by_size
    read_timeout = 3.0
    daemon = start_hung(daemons, root, tmp_path, hang_ms=8000, read_timeout=read_timeout)
    pairs = mount_files_by_size(daemon.mountpoint, files)
    stuck = files[-1]
    others = [f for f in pairs if f != stuck]
    digests = {f: file_digest(f) for f in pairs}

    def read(f: Path) -> str:
        return hashlib.sha256(read_uncached(pairs[f])).hexdigest()

    blocked = reader_process(pairs[stuck])  # the first origin read: it hangs in its worker thread
    eventually(lambda: HANGING in daemon.log_text(), 10, "the daemon's origin read hanging")
    # 100 concurrent cold reads of every file but the stuck one: all finish, all right.
    jobs = [others[i % len(others)] for i in range(100)]
    with ThreadPoolExecutor(100) as pool:
        assert list(pool.map(read, jobs, timeout=60)) == [digests[f] for f in jobs]
    # all 100 done while the stuck read still waits for its read_timeout: none of them waited on it
    assert blocked.poll() is None, "the stuck read ended before the 100 others: they may have waited on it"
    outcome, code, _ = reader_result(blocked)
    assert (outcome, code) == ("ERR", str(errno.EIO))
    # cached reads never wait on the hung call, whatever the origin's state now
    with ThreadPoolExecutor(100) as pool:
        assert list(pool.map(read, jobs, timeout=60)) == [digests[f] for f in jobs]
    assert daemon.stop() == 0


@pytest.mark.resilience("4.7")
def test_a_fifo_swapped_in_for_a_track_is_eio_at_once_and_every_other_file_still_reads(library_by_size, daemons,
                                                                                        tmp_path):
    root, files = library_by_size
    daemon = start(daemons, root, tmp_path, read_timeout=4.0)
    pairs = mount_files_by_size(daemon.mountpoint, files)
    fifo, others = files[-1], [f for f in pairs if f != files[-1]]
    fifo.unlink()
    os.mkfifo(fifo)
    outcome, code, seconds = read_in_child(pairs[fifo])
    assert (outcome, code) == ("ERR", str(errno.EIO)) and seconds < 1.0, (outcome, code, seconds)
    for _ in range(12):  # more than the daemon has fetch threads; the rescan that read started may drop it
        outcome, code, seconds = read_in_child(pairs[fifo])
        assert outcome == "ERR" and code in (str(errno.EIO), str(errno.ENOENT)) and seconds < 1.0
    for f in others:  # uncached reads of every other file still reach the origin
        assert read_in_child(pairs[f])[:2] == ("OK", file_digest(f))
    [origin] = daemon.status()["origins"]
    assert origin["state"] == "healthy" and origin["stuck"] == 0
    assert not [t for t in os.listdir(f"/proc/{daemon.pid}/task") if wchan(daemon.pid, t) == "wait_for_partner"]
    # the rescan the first read started drops it from the tree: it is no music
    eventually(lambda: not pairs[fifo].exists(), 15, "the FIFO gone from the tree")
    assert daemon.stop() == 0


def wchan(pid: int, tid: str) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/wchan") as fh:
            return fh.read()
    except OSError:
        return ""


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
        eventually(lambda: mounted.exists() and mounted.stat().st_size == len(new), 30, "the tree showing the new file")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{daemon.log_text()}") from None
    assert read_in_child(mounted)[:2] == ("OK", hashlib.sha256(new).hexdigest())
    assert "1 changed" in daemon.log_text()
    assert daemon.stop() == 0


@pytest.mark.resilience("4.4")
def test_a_read_of_a_file_deleted_at_the_origin_answers_eio_and_the_rescan_drops_it(library_by_size, daemons,
                                                                                     tmp_path):
    root, files = library_by_size
    daemon = start(daemons, root, tmp_path)
    pairs = mount_files_by_size(daemon.mountpoint, files)
    gone = files[-1]
    fd = os.open(pairs[gone], os.O_RDONLY)  # a handle opened before the delete, as a player's
    try:
        gone.unlink()
        with pytest.raises(OSError) as err:
            os.pread(fd, 4096, 0)
        assert err.value.errno == errno.EIO  # read(2) never answers ENOENT
    finally:
        os.close(fd)
    eventually(lambda: not pairs[gone].exists(), 15, "the rescan the read started dropping the file")
    assert daemon.stop() == 0
