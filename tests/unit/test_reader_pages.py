"""The reader's offers to the kernel's page cache (pages.py through loader.py): only verified, kept chunks of
a handle the policy calls sequential, at their offsets, within the file; never a racy version's bytes, never a
tag reader's, never a handle with no inode (a pin's reads)."""

from __future__ import annotations

import pytest
import trio

from musicfs.cache.cas import CasStore
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.library.catalog import Catalog, FileRow
from musicfs.origins.base import SETTLE_MARGIN
from musicfs.origins.memory import MemoryOrigin, serve
from musicfs.origins.registry import OriginRegistry
from musicfs.read import PagePusher, build_reader
from musicfs_test_utils.clocks import Clock
from musicfs_test_utils.eventually import eventually_async

CHUNK = 64 << 10
READ = 16 << 10
DATA = bytes((i * 7 + i // 251) % 256 for i in range(20 * CHUNK + 999))
INODE = 42


class Kernel:
    def __init__(self):
        self.pages: dict[int, bytes] = {}  # offset -> bytes stored there (inode INODE)
        self.other: list[int] = []

    def store(self, inode, offset, data):
        if inode != INODE:
            self.other.append(inode)
        self.pages[offset] = bytes(data)


@pytest.fixture
async def setup(tmp_path, nursery):
    """(reader, row, kernel, clock): one file on a whole-second origin, its reader pushing to a recorded
    kernel; the clock starts where the catalog saw the version (racy until moved on)."""
    registry = OriginRegistry([MemoryOrigin(serve({"a.flac": DATA}, mtime_ns=10**9), resolution=1.0)], backoff=0.0)
    clock = registry.wall_clock = Clock(0.0)
    catalog = Catalog(str(tmp_path / "catalog.db"))
    catalog.upsert_files([FileRow(path="a.flac", kind="track", size=len(DATA), mtime_ns=10**9)])
    [row] = catalog.files()
    clock.now = catalog.version_seen(row.version) + 1.0 + SETTLE_MARGIN  # settled
    cas = CasStore(str(tmp_path / "cache"), 1 << 30)
    kernel = Kernel()
    pages = PagePusher(kernel.store)
    reader = build_reader(catalog, ChunkCache(cas), registry, chunk_size=CHUNK, memory_cache=64 * CHUNK,
                          read_timeout=10.0, pages=pages)
    nursery.start_soon(reader.readahead.run)
    nursery.start_soon(pages.run)
    yield reader, row, kernel, clock
    cas.close()
    catalog.close()


async def read_sequentially(reader, fh, start, end):
    for off in range(start, end, READ):
        await reader.read(fh, off, READ)


async def handled(reader) -> None:
    """Until read-ahead has nothing queued or in flight and every offer was handled."""
    def quiet():
        ra, pages = reader.readahead.statistics(), reader.pages.statistics()
        return ra.queued == 0 and ra.inflight_bytes == 0 and pages.queued_bytes == 0
    await eventually_async(quiet, 10, "read-ahead and pushes done")
    await trio.testing.wait_all_tasks_blocked()


def pushed_bytes_are_the_files(kernel: Kernel) -> None:
    for offset, data in kernel.pages.items():
        assert offset % CHUNK == 0 and offset + len(data) <= len(DATA)
        assert data == DATA[offset:offset + len(data)], f"pushed bytes at {offset} are not the file's"


async def test_a_sequential_reader_gets_its_verified_chunks_and_those_ahead_pushed(setup):
    reader, row, kernel, _ = setup
    fh = await reader.open(row, inode=INODE)
    await read_sequentially(reader, fh, 0, 3 * CHUNK)
    await handled(reader)
    pushed_bytes_are_the_files(kernel)
    chunks = sorted(offset // CHUNK for offset in kernel.pages)
    assert chunks and max(chunks) > 3  # chunks ahead of the reader, not only those it read
    assert kernel.other == [] and reader.statistics().pages.failed == 0
    await read_sequentially(reader, fh, 3 * CHUNK, len(DATA))
    await handled(reader)
    pushed_bytes_are_the_files(kernel)
    assert sorted(offset // CHUNK for offset in kernel.pages) == list(range(21))  # the last one short
    reader.release(fh)


async def test_a_tag_readers_reads_push_nothing(setup):
    reader, row, kernel, _ = setup
    for _ in range(2):
        fh = await reader.open(row, inode=INODE)
        await read_sequentially(reader, fh, 0, 3 * READ)
        await reader.read(fh, len(DATA) - READ, READ)
        reader.release(fh)
    await handled(reader)
    assert kernel.pages == {}


@pytest.mark.resilience("4.6")
async def test_a_racy_version_is_never_pushed_and_a_handle_without_an_inode_pushes_nothing(setup):
    reader, row, kernel, clock = setup
    clock.now -= 1.0  # within a second of the version being seen: another write could keep its identity
    fh = await reader.open(row, inode=INODE)
    await read_sequentially(reader, fh, 0, 6 * CHUNK)
    await handled(reader)
    reader.release(fh)
    assert kernel.pages == {} and reader.statistics().racy_fetches > 0
    clock.now += 1.0  # settled
    fh = await reader.open(row)  # no inode: a pin's reads
    await read_sequentially(reader, fh, 0, 6 * CHUNK)
    await handled(reader)
    reader.release(fh)
    assert kernel.pages == {}
