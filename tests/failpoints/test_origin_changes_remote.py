"""L3, row 4.5: a remote origin file edited while a read of it is in flight (real sshd and moto S3).

The read is held at `origin-read-checked` (identity checked, bytes not yet read) while the test changes the
file, so the change lands inside the read every time:

* SFTP: an in-place edit of the range being read. The read must fail with OriginFileChanged (the open
  file is stat'ed again after its bytes are read), never return the edited bytes as the old version's.
* S3: a PUT of new content under the key. One GET is one version: the read returns the old version whole
  (what the caller's identity stands for), and the next read with that identity is refused (If-Match).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from pathlib import Path

import pytest

from musicfs import failpoints
from musicfs.origins.s3 import S3Origin
from musicfs.origins.sftp import SftpOrigin
from musicfs.shared import points
from musicfs.shared.errors import OriginFileChanged
from musicfs_test_utils.servers import MotoServer, SshServer

pytestmark = pytest.mark.l3

SIZE = 300 * 1024
OLD_MTIME = 1_700_000_000  # whole seconds, long ago: SFTP's mtime resolution cannot hide the edit


def read_while(origin, path: str, expect, change, do_read=None) -> bytes | Exception:
    """origin.read of the whole file (or `do_read()`) with `change()` run while the read waits between
    check and bytes."""
    failpoints.cfg(points.ORIGIN_READ_CHECKED, "1*pause")
    result: list[bytes | Exception] = []
    do_read = do_read or (lambda: origin.read(path, 0, SIZE, expect))

    def read():
        try:
            result.append(do_read())
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert failpoints.wait_paused(points.ORIGIN_READ_CHECKED, timeout=30), "the read never reached its check"
        change()
    finally:
        failpoints.remove(points.ORIGIN_READ_CHECKED)
        reader.join(60)
    assert not reader.is_alive()
    return result[0]


@contextlib.contextmanager
def sftp_track(tmp_path: Path, seed: int):
    """(origin, the track's local path, its bytes): one track with an old whole-second mtime, served by sshd."""
    old = random.Random(seed).randbytes(SIZE)
    root = tmp_path / "library"
    root.mkdir()
    track = root / "song.flac"
    track.write_bytes(old)
    os.utime(track, (OLD_MTIME, OLD_MTIME))
    with SshServer() as ssh:
        origin = SftpOrigin.from_url(ssh.url(root), ssh.origin_options())
        try:
            yield origin, track, old
        finally:
            origin.close()


@contextlib.contextmanager
def s3_track(seed: int):
    """(origin, a client, the object's bytes): one object `lib/song.flac` in moto's S3."""
    old = random.Random(seed).randbytes(SIZE)
    with MotoServer() as moto:
        moto.make_bucket("changes")
        client = moto.client()
        client.put_object(Bucket="changes", Key="lib/song.flac", Body=old)
        origin = S3Origin.from_url("s3://changes/lib", moto.origin_options())
        try:
            yield origin, client, old
        finally:
            origin.close()


def edit_in_place(track: Path, at: int) -> None:
    """rsync --inplace / a tag editor with padding: same size, bytes changed in place."""
    with open(track, "r+b") as fh:
        fh.seek(at)
        fh.write(b"\0" * 1000)


@pytest.mark.resilience("4.5")
def test_sftp_an_in_place_edit_during_a_read_is_refused(tmp_path: Path) -> None:
    with sftp_track(tmp_path, 1) as (origin, track, old):
        expect = origin.stat("song.flac")
        got = read_while(origin, "song.flac", expect, lambda: edit_in_place(track, SIZE - 1000))
        assert isinstance(got, OriginFileChanged), f"the edited bytes came back as the old version: {got!r:.80}"
        assert "changed" in str(got)  # before the reads (pipelined with the first stat) or during them
        with pytest.raises(OriginFileChanged):  # and the old identity stays refused
            origin.read("song.flac", 0, 10, expect)


@pytest.mark.resilience("4.5")
def test_s3_a_put_during_a_ranged_read_gives_one_version_and_then_refuses_the_old_identity() -> None:
    new = random.Random(3).randbytes(SIZE)
    with s3_track(2) as (origin, client, old):
        expect = origin.stat("song.flac")
        got = read_while(origin, "song.flac", expect,
                         lambda: client.put_object(Bucket="changes", Key="lib/song.flac", Body=new))
        assert got == old, "a read answered with bytes of another version than its identity's"
        with pytest.raises(OriginFileChanged):
            origin.read("song.flac", 0, 10, expect)
        assert origin.read("song.flac", 0, SIZE, origin.stat("song.flac")) == new


# Many ranges of one file (read_ranges and streams, the read-ahead's API): the same guarantees per range.
RANGES = [(offset, 32 * 1024) for offset in range(0, SIZE, 32 * 1024)]


@pytest.mark.resilience("4.5")
def test_sftp_an_in_place_edit_during_a_multi_range_stream_read_is_refused(tmp_path: Path) -> None:
    with sftp_track(tmp_path, 4) as (origin, track, old):
        expect = origin.stat("song.flac")
        stream = origin.open_stream("song.flac", expect)
        assert stream.read(0, 100) == old[:100]  # the stream's handle is open before the edit
        got = read_while(origin, "song.flac", expect, lambda: edit_in_place(track, SIZE // 2),
                         lambda: stream.read_ranges(RANGES))
        assert isinstance(got, OriginFileChanged), f"edited bytes came back as the old version: {got!r:.80}"
        assert "changed" in str(got)  # before the reads (pipelined with the first stat) or during them
        with pytest.raises(OriginFileChanged):  # the stream stays refused, and so does read_ranges
            stream.read_ranges(RANGES[:2])
        with pytest.raises(OriginFileChanged):
            origin.read_ranges("song.flac", RANGES, expect)
        stream.close()


@pytest.mark.resilience("4.5")
def test_s3_a_put_during_concurrent_ranged_gets_never_mixes_versions() -> None:
    new = random.Random(6).randbytes(SIZE)
    with s3_track(5) as (origin, client, old):
        expect = origin.stat("song.flac")
        got = read_while(origin, "song.flac", expect,
                         lambda: client.put_object(Bucket="changes", Key="lib/song.flac", Body=new),
                         lambda: origin.read_ranges("song.flac", RANGES, expect))
        # Each GET is one version (If-Match): the old one whole, or refused; never a new range among old.
        assert isinstance(got, OriginFileChanged) or got == [old[o:o + n] for o, n in RANGES], \
            "a multi-range read mixed versions"
        with pytest.raises(OriginFileChanged):
            origin.read_ranges("song.flac", RANGES, expect)
        assert b"".join(origin.read_ranges("song.flac", RANGES, origin.stat("song.flac"))) == new
