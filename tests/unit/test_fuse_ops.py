"""FUSE operations without a mount: errno mapping, EROFS, lookup/forget refcounts (rows 2.2, 5.4, 2.9)."""

from __future__ import annotations

import errno
import logging
import os
import re

import psutil
import pyfuse3
import pytest

from musicfs.daemon.fuse_ops import MusicOperations
from musicfs.library.tree import ROOT_INO, file_key
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.fixtures import make_audio_meta, make_file_meta, setup_test_tree


class BrokenReader:
    """Stands in for FileReader: open works, read raises what the test says."""

    def __init__(self):
        self.exc: BaseException | None = None
        self.open_files = 0

    async def open(self, row, next_track=None, *, inode=0):
        return 7

    def settled(self, fh):
        return True

    async def read_buffer(self, fh, off, size):
        if self.exc is not None:
            raise self.exc
        return b"x" * size

    def release(self, fh):
        pass

    async def after_release(self):
        pass


def _tree(n: int = 3):
    rows = [make_file_meta(i + 1, f"a/{i}.flac", 1000 + i, **make_audio_meta("Artist", "Album", f"Song {i}", track_no=i + 1))
            for i in range(n)]
    return setup_test_tree(rows)


def _ops(n: int = 3) -> MusicOperations:
    return MusicOperations(_tree(n), BrokenReader())


async def _file_ino(ops, name=b"01 - Song 0.flac") -> int:
    artist = await ops.lookup(ROOT_INO, b"Artist", None)
    album = await ops.lookup(artist.st_ino, b"Album", None)
    return (await ops.lookup(album.st_ino, name, None)).st_ino


@pytest.mark.resilience("2.2")
async def test_an_unexpected_exception_becomes_eio_logged_once_and_serving_goes_on():
    ops = _ops()
    ino = await _file_ino(ops)
    info = await ops.open(ino, os.O_RDONLY, None)
    ops.reader.exc = RuntimeError("handler bug")
    with assert_logs("", count=1, level=logging.ERROR) as lines, pytest.raises(pyfuse3.FUSEError) as err:
        await ops.read(info.fh, 0, 10)
    assert err.value.errno == errno.EIO
    assert re.search(r"fuse read.*failed unexpectedly", lines[0]) and lines.records[0].exc_info
    ops.reader.exc = None
    assert await ops.read(info.fh, 0, 10) == b"x" * 10
    stats = ops.statistics()
    assert stats.errors_by_handler == {"read": 1} and stats.errors == 1 and stats.open_files == 1


@pytest.mark.expected_log(r"fuse read")
async def test_emfile_becomes_eio():
    ops = _ops()
    info = await ops.open(await _file_ino(ops), os.O_RDONLY, None)
    ops.reader.exc = OSError(errno.EMFILE, "Too many open files")
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.read(info.fh, 0, 10)
    assert err.value.errno == errno.EIO


@pytest.mark.parametrize("call", [
    lambda ops: ops.mkdir(ROOT_INO, b"x", 0o755, None),
    lambda ops: ops.unlink(ROOT_INO, b"Artist", None),
    lambda ops: ops.write(1, 0, b"data"),
    lambda ops: ops.create(ROOT_INO, b"new", 0o644, os.O_WRONLY, None),
    lambda ops: ops.rename(ROOT_INO, b"Artist", ROOT_INO, b"B", 0, None),
    lambda ops: ops.setattr(ROOT_INO, None, None, None, None),
])
async def test_every_write_answers_erofs(call):
    with pytest.raises(pyfuse3.FUSEError) as err:
        await call(_ops())
    assert err.value.errno == errno.EROFS


async def test_open_for_writing_is_refused():
    ops = _ops()
    with pytest.raises(pyfuse3.FUSEError) as err:
        await ops.open(await _file_ino(ops), os.O_RDWR, None)
    assert err.value.errno == errno.EROFS


async def test_unknown_names_and_inodes_answer_enoent():
    ops = _ops()
    for call in (ops.lookup(ROOT_INO, b"nope", None), ops.getattr(99999, None)):
        with pytest.raises(pyfuse3.FUSEError) as err:
            await call
        assert err.value.errno == errno.ENOENT


@pytest.mark.resilience("5.4")
async def test_a_million_lookups_and_forgets_keep_memory_flat():
    ops = _ops()
    artist = (await ops.lookup(ROOT_INO, b"Artist", None)).st_ino
    await ops.forget([(artist, 1)])
    rss = psutil.Process().memory_info
    samples = []
    for _ in range(10):
        for _ in range(100):
            for _ in range(1000):
                await ops.lookup(ROOT_INO, b"Artist", None)
            await ops.forget([(artist, 1000)])
        samples.append(rss().rss)
    assert ops.lookups[artist] == 0 and not ops.lookups
    # A leak of even 16 bytes a lookup would add 16 MB; allocator noise stays far below 4 MB.
    assert samples[-1] - samples[1] < 4 << 20, [s >> 10 for s in samples]


@pytest.mark.resilience("5.4")
async def test_an_inode_removed_by_a_rescan_answers_until_the_kernel_forgets_it():
    ops = _ops(3)
    ino = await _file_ino(ops, b"02 - Song 1.flac")
    kept = make_file_meta(1, "a/0.flac", 1000, **make_audio_meta("Artist", "Album", "Song 0", track_no=1))
    smaller = setup_test_tree([kept], inodes={"d:Artist": 2, "d:Artist/Album": 3, file_key(kept, "Artist", "Album"): 4})
    _, gone = ops.swap_tree(smaller)
    assert ino in gone  # its pages are retired
    assert (await ops.getattr(ino, None)).st_ino == ino  # the kernel still holds a reference
    await ops.forget([(ino, 1)])
    with pytest.raises(pyfuse3.FUSEError):
        await ops.getattr(ino, None)
    assert ino not in ops.retired


async def test_forget_never_raises_on_unknown_inodes():
    ops = _ops()
    await ops.forget([(123456, 5), (ROOT_INO, 1)])
    assert not ops.lookups
