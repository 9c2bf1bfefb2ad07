"""L1: the chunk loader (read/loader.py) on its own terms: with read-ahead and blocks off, each read loads whole
chunks, and the reader's statistics say exactly where each came from (memory, the disk cache, the origin), what
the origin was asked (the last chunk up to the end of the file, never past it) and when a file changed."""

from __future__ import annotations

import random

import pytest

from musicfs.cache.chunk_cache import ChunkCache
from musicfs.origins.memory import READ, MemoryOrigin, serve
from musicfs.origins.registry import OriginRegistry
from musicfs.read import build_reader
from musicfs.shared.errors import OriginFileChanged
from musicfs_test_utils.reader_rig import ReaderRig, read_range

CHUNK = 64 << 10
PATH = "a/b.flac"
SIZE = 3 * CHUNK + 1000


class Recording:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.reads: list[tuple[int, int]] = []

    def __call__(self, request):
        if request.op == READ:
            self.reads.append((request.offset, request.length))
        return serve(self.files)(request)


@pytest.fixture
def rig(tmp_path):
    recording = Recording({PATH: random.Random(3).randbytes(SIZE)})
    r = ReaderRig.build(tmp_path, root=tmp_path / "unused", inner=MemoryOrigin(recording), chunk_size=CHUNK,
                        memory_cache=16 * CHUNK, read_timeout=10.0)
    r.recording = recording
    yield r
    r.close()


def plain_reader(rig, memory_cache: int = 16 * CHUNK):
    """Whole chunks per read: no read-ahead, no blocks (the loader alone)."""
    return build_reader(rig.catalog, ChunkCache(rig.cas, op_timeout=3.0), OriginRegistry([rig.origin], backoff=0.0),
                        chunk_size=CHUNK, memory_cache=memory_cache, read_timeout=10.0, readahead=0, block_size=0)


def counts(reader) -> tuple[int, int, int, int]:
    s = reader.statistics()
    return s.origin_fetches, s.memory_hits, s.cache_hits, s.changed_files


async def test_each_chunk_comes_from_the_origin_once_then_memory_then_the_disk_cache(rig):
    data = rig.recording.files[PATH]
    row = rig.row(PATH)
    reader = plain_reader(rig)
    assert await read_range(reader, row, 10, 100) == data[10:110]
    assert counts(reader) == (1, 0, 0, 0) and rig.recording.reads == [(0, CHUNK)]
    assert await read_range(reader, row, 200, 100) == data[200:300]
    assert counts(reader) == (1, 1, 0, 0) and len(rig.recording.reads) == 1  # memory
    again = plain_reader(rig)  # a restart: memory empty, the chunk on disk
    assert await read_range(again, row, 5, 10) == data[5:15]
    assert counts(again) == (0, 0, 1, 0) and len(rig.recording.reads) == 1


async def test_the_last_chunk_is_asked_up_to_the_end_of_the_file_and_no_further(rig):
    data = rig.recording.files[PATH]
    reader = plain_reader(rig)
    assert await read_range(reader, rig.row(PATH), 3 * CHUNK + 10, 50) == data[3 * CHUNK + 10:3 * CHUNK + 60]
    assert rig.recording.reads == [(3 * CHUNK, 1000)]
    assert await read_range(reader, rig.row(PATH), CHUNK - 5, 10) == data[CHUNK - 5:CHUNK + 5]  # two chunks
    assert sorted(rig.recording.reads[1:]) == [(0, CHUNK), (CHUNK, CHUNK)] and counts(reader)[0] == 3


async def test_a_file_changed_at_the_origin_is_refused_and_counted_once_per_fetch(rig):
    row = rig.row(PATH)
    reader = plain_reader(rig)
    rig.recording.files[PATH] = rig.recording.files[PATH] + b"grown"
    with pytest.raises(OriginFileChanged):
        await read_range(reader, row, 0, 10)
    assert counts(reader) == (0, 0, 0, 1)
    with pytest.raises(OriginFileChanged):
        await read_range(reader, row, CHUNK, 10)
    assert counts(reader) == (0, 0, 0, 2)
    assert rig.manifest(PATH) == {}  # nothing of it named in the catalog
