"""Blocks (blocks.py): small reads outside a stream fetch a small aligned range, kept and verified like chunks.

A counting origin (MemoryOrigin over a recording handler) shows what each read costs the origin.
"""

from __future__ import annotations

import random
import types
from pathlib import Path

import pytest
import trio

from musicfs.cache.cas import CasStore
from musicfs.commands.fsck import Fsck
from musicfs.library.blocks import BLOCK_SIZE, Block, aligned, cover, cut, merge
from musicfs.library.catalog import Catalog, FileRow
from musicfs.library.scanner import Scanner
from musicfs.library.storage import Library
from musicfs.origins.memory import READ, MemoryOrigin, serve
from musicfs.origins.registry import OriginRegistry
from musicfs.read.plan import STREAMING_SOON
from musicfs.shared.errors import OriginFileChanged
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.reader_rig import ReaderRig, settle_readahead

CHUNK = 1 << 20
BIG = "album/big.flac"


class Recording:
    """serve(files), remembering (path, offset, length) of every read."""

    def __init__(self, files: dict[str, bytes], mtime_ns: int = 1):
        self.files = files
        self.mtime_ns = mtime_ns
        self.reads: list[tuple[str, int, int]] = []

    def __call__(self, request):
        if request.op == READ:
            self.reads.append((request.path, request.offset, request.length))
        return serve(self.files, mtime_ns=self.mtime_ns)(request)


def build(tmp_path: Path, files: dict[str, bytes]) -> ReaderRig:
    recording = Recording(files)
    rig = ReaderRig.build(tmp_path, root=tmp_path / "unused", inner=MemoryOrigin(recording), chunk_size=CHUNK,
                          memory_cache=16 * CHUNK, read_timeout=10.0)
    rig.recording = recording
    return rig


@pytest.fixture
def rig(tmp_path):
    r = build(tmp_path, {BIG: random.Random(7).randbytes(4 * CHUNK + 12345)})
    yield r
    r.close()


async def read(reader, row: FileRow, offset: int, size: int) -> bytes:
    fh = await reader.open(row)
    try:
        return await reader.read(fh, offset, size)
    finally:
        reader.release(fh)


# -- the pure helpers ---------------------------------------------------------------------------------------
def test_aligned_merge_cut_and_cover():
    assert aligned(5, 10, 10 << 20) == (0, BLOCK_SIZE)
    assert aligned(BLOCK_SIZE - 1, BLOCK_SIZE + 1, 10 << 20) == (0, 2 * BLOCK_SIZE)
    assert aligned(BLOCK_SIZE + 3, BLOCK_SIZE + 9, BLOCK_SIZE + 100) == (BLOCK_SIZE, 100)  # clipped to the file
    assert merge([(10, 5), (0, 10), (30, 1)]) == [(0, 15), (30, 1)]
    data = bytes(range(256)) * 2048  # 512 KiB
    pieces = cut([(64 << 10, data[64 << 10:128 << 10]), (0, data[:64 << 10]), (128 << 10, data[128 << 10:200 << 10])])
    assert [(o, len(d)) for o, d in pieces] == [(0, BLOCK_SIZE), (BLOCK_SIZE, (200 << 10) - BLOCK_SIZE)]
    assert all(d == data[o:o + len(d)] for o, d in pieces)
    a, b = Block(0, 100, "a"), Block(50, 100, "b")
    used, gaps = cover(20, 300, [b, a])
    assert used == [a, b] and gaps == [(150, 300)]
    assert cover(0, 10, []) == ([], [(0, 10)])


# -- probe reads ---------------------------------------------------------------------------------------------------
async def test_a_probe_of_a_never_scanned_region_fetches_only_the_aligned_block(rig):
    row, data = rig.row(BIG), rig.recording.files[BIG]
    offset = 3 * CHUNK + 5000
    assert await read(rig.reader, row, offset, 4096) == data[offset:offset + 4096]
    assert rig.recording.reads == [(BIG, 3 * CHUNK, BLOCK_SIZE)]
    # a read across a block boundary fetches both blocks, in one request
    rig.recording.reads.clear()
    edge = CHUNK + 3 * BLOCK_SIZE - 100
    assert await read(rig.reader, row, edge, 200) == data[edge:edge + 200]
    assert rig.recording.reads == [(BIG, CHUNK + 2 * BLOCK_SIZE, 2 * BLOCK_SIZE)]
    # the file's tail block is clipped to the file
    rig.recording.reads.clear()
    assert await read(rig.reader, row, len(data) - 10, 4096) == data[-10:]
    assert rig.recording.reads == [(BIG, 4 * CHUNK, 12345)]
    stats = rig.reader.statistics()
    assert stats.block_fetches == 3 and stats.origin_fetches == 0
    # again, and after a restart (nothing in memory): from the cache, verified, nothing from the origin
    rig.recording.reads.clear()
    assert await read(rig.reader, row, offset, 4096) == data[offset:offset + 4096]
    restarted = rig.new_reader()
    assert await read(restarted, row, edge, 200) == data[edge:edge + 200]
    assert await read(restarted, row, len(data) - 10, 10) == data[-10:]
    assert rig.recording.reads == []
    assert rig.reader.statistics().block_hits == 1
    assert restarted.statistics().block_hits == 3  # the two blocks across the edge, and the tail


async def test_a_small_file_whose_blocks_are_in_hand_is_read_whole_without_the_origin(tmp_path):
    # a scan reads small files whole for their tags and keeps the bytes as blocks; a player's (or a copy's) read of
    # the whole file covers its one chunk, which is not in hand: the blocks serve it
    small = "album/short.mp3"
    r = build(tmp_path, {small: random.Random(3).randbytes(9000)})
    try:
        row, data = r.row(small), r.recording.files[small]
        assert await read(r.reader, row, 100, 50) == data[100:150]  # a probe: the aligned block is the whole file
        assert r.recording.reads == [(small, 0, 9000)]
        r.recording.reads.clear()
        reader = r.new_reader()
        fh = await reader.open(row)
        assert [b.length for b in reader._open[row.version].blocks] == [9000]  # known at open: one catalog call
        reader.release(fh)
        assert await read(reader, row, 0, 16384) == data
        assert r.recording.reads == [] and reader.statistics().block_hits == 1
        assert reader.statistics().origin_fetches == 0
    finally:
        r.close()


async def test_a_cached_chunk_serves_small_reads_and_a_whole_chunk_read_fetches_the_chunk(rig):
    row, data = rig.row(BIG), rig.recording.files[BIG]
    assert await read(rig.reader, row, CHUNK, CHUNK) == data[CHUNK:2 * CHUNK]  # a pin's read: the whole chunk
    assert rig.recording.reads == [(BIG, CHUNK, CHUNK)]
    rig.recording.reads.clear()
    assert await read(rig.new_reader(), row, CHUNK + 777, 4096) == data[CHUNK + 777:CHUNK + 777 + 4096]
    assert rig.recording.reads == []  # the cached chunk, not a block


async def test_a_stream_still_fetches_whole_chunks(rig):
    row, data = rig.row(BIG), rig.recording.files[BIG]
    piece = 128 << 10
    fh = await rig.reader.open(row)
    try:
        out = [await rig.reader.read(fh, off, piece) for off in range(0, len(data), piece)]
    finally:
        rig.reader.release(fh)
    assert b"".join(out) == data
    reads = rig.recording.reads
    # the first chunk's reads come before the read-ahead window opens (a run of one chunk): blocks, until the run
    # is longer than a tag reader's (STREAMING_SOON): then the rest of the chunk at once; then whole chunks
    soon = STREAMING_SOON // BLOCK_SIZE
    assert reads[:soon] == [(BIG, off, BLOCK_SIZE) for off in range(0, STREAMING_SOON, BLOCK_SIZE)]
    assert reads[soon] == (BIG, STREAMING_SOON, CHUNK - STREAMING_SOON)
    assert reads[soon + 1:] == [(BIG, i * CHUNK, min(CHUNK, len(data) - i * CHUNK)) for i in range(1, 5)]
    assert rig.reader.statistics().origin_fetches == 4


async def test_a_long_run_entering_a_new_chunk_loads_it_once_as_a_chunk(rig, nursery):
    # the kernel sends two reads at once: the one entering chunk 1 is dispatched before the one ending chunk 0
    # has opened the read-ahead window; it must load chunk 1 whole, not as blocks that the stream fetches again
    nursery.start_soon(rig.reader.readahead.run)  # the daemon's supervisor runs this task
    row, data = rig.row(BIG), rig.recording.files[BIG]
    piece = 128 << 10
    fh = await rig.reader.open(row)
    try:
        for off in range(0, CHUNK - piece, piece):
            assert await rig.reader.read(fh, off, piece) == data[off:off + piece]
        got = {}

        async def read_at(off):
            got[off] = await rig.reader.read(fh, off, piece)

        async with trio.open_nursery() as both:
            both.start_soon(read_at, CHUNK - piece)
            both.start_soon(read_at, CHUNK)
        for off in range(CHUNK + piece, 2 * CHUNK, piece):
            got[off] = await rig.reader.read(fh, off, piece)
        await settle_readahead(rig.reader)
    finally:
        rig.reader.release(fh)
    assert all(got[off] == data[off:off + piece] for off in got)
    inside = CHUNK + 200_000
    covering = [r for r in rig.recording.reads if r[1] <= inside < r[1] + r[2]]
    assert covering == [(BIG, CHUNK, CHUNK)], f"chunk 1 fetched as {covering}"


async def test_a_changed_file_never_gets_the_old_blocks(rig):
    row, files = rig.row(BIG), rig.recording.files
    old = files[BIG]
    assert await read(rig.reader, row, 100, 4096) == old[100:4196]
    assert rig.catalog.blocks(row.version)
    new = random.Random(8).randbytes(len(old))
    files[BIG] = new
    rig.recording.mtime_ns = 2
    # before a rescan: an uncached region of the old version is refused, never mixed
    with pytest.raises(OriginFileChanged):
        await read(rig.new_reader(), row, 2 * CHUNK, 4096)
    # the rescan commits the new identity: the old version's blocks are dropped with it
    rig.catalog.upsert_files([FileRow(path=BIG, kind="track", size=len(new), mtime_ns=2)])
    assert rig.catalog.blocks(row.version) == []
    fresh = rig.row(BIG)
    rig.recording.reads.clear()
    assert await read(rig.new_reader(), fresh, 100, 4096) == new[100:4196]
    assert rig.recording.reads == [(BIG, 0, BLOCK_SIZE)]


@pytest.mark.expected_log(r"musicfs.cache.cas: cache: chunk \w+ failed verification",
                          r"musicfs.cache.chunk_cache: cache: chunk \w+ failed verification and was quarantined")
async def test_a_corrupt_block_is_quarantined_and_fetched_again(rig):
    row, data = rig.row(BIG), rig.recording.files[BIG]
    assert await read(rig.reader, row, 2 * CHUNK + 10, 100) == data[2 * CHUNK + 10:2 * CHUNK + 110]
    [(offset, length, digest)] = rig.catalog.blocks(row.version)
    assert (offset, length) == (2 * CHUNK, BLOCK_SIZE)
    path = rig.chunk_file(digest)
    path.write_bytes(b"\0" * length)
    rig.recording.reads.clear()
    reader = rig.new_reader()
    assert await read(reader, row, 2 * CHUNK + 10, 100) == data[2 * CHUNK + 10:2 * CHUNK + 110]
    assert rig.recording.reads == [(BIG, 2 * CHUNK, BLOCK_SIZE)]
    assert any(p.name.startswith(digest) for p in (rig.cache_dir / "quarantine").iterdir())
    assert path.read_bytes() == data[2 * CHUNK:2 * CHUNK + BLOCK_SIZE]  # stored again, right
    assert reader.statistics().block_fetches == 1


async def test_concurrent_probes_of_one_block_fetch_it_once(rig):
    row, data = rig.row(BIG), rig.recording.files[BIG]
    results = {}

    async def probe(n):
        results[n] = await read(rig.reader, row, 3 * CHUNK + 1000 * n, 512)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(probe, n)
    assert all(results[n] == data[3 * CHUNK + 1000 * n:3 * CHUNK + 1000 * n + 512] for n in range(4))
    assert rig.recording.reads == [(BIG, 3 * CHUNK, BLOCK_SIZE)]


async def test_fsck_is_clean_on_a_cache_with_blocks(rig):
    row, data = rig.row(BIG), rig.recording.files[BIG]
    assert await read(rig.reader, row, 3 * CHUNK, 10) == data[3 * CHUNK:3 * CHUNK + 10]
    assert await read(rig.reader, row, 0, CHUNK) == data[:CHUNK]
    report = Fsck(str(rig.base), str(rig.cache_dir)).check()
    assert [p for p in report.problems if p.area != "index"] == []
    assert "1 block rows" in report.notes["catalog"]


# -- the scan's blocks -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks") / "lib"
    make_library(root, 3, hostile=False)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def test_a_scanned_files_head_and_tail_cost_the_origin_nothing(tmp_path, audio):
    recording = Recording(dict(audio))
    catalog = Catalog(str(tmp_path / "catalog.db"))
    cas = CasStore(str(tmp_path / "cache"), 1 << 30)
    registry = OriginRegistry([MemoryOrigin(recording)], backoff=0.0)
    keeper = types.SimpleNamespace(cas=cas, catalog=catalog)
    Scanner(catalog, registry,
            on_fetched=lambda pairs: Library.keep_scan_blocks(keeper, pairs)).scan()
    tracks = [r for r in catalog.files() if r.kind == "track"]
    assert tracks and all(catalog.blocks(r.version) for r in tracks)
    cas.close()
    catalog.close()
    rig = ReaderRig.build(tmp_path, root=tmp_path / "unused", inner=MemoryOrigin(recording), chunk_size=CHUNK,
                          memory_cache=16 * CHUNK, read_timeout=10.0)
    try:
        recording.reads.clear()
        for row in tracks:
            data = audio[row.path]
            assert await read(rig.reader, row, 0, 4096) == data[:4096]
            assert await read(rig.reader, row, row.size - 128, 128) == data[-128:]
        assert recording.reads == []
        assert rig.reader.statistics().block_hits >= 2 * len(tracks)
    finally:
        rig.close()


async def test_a_scan_without_a_cache_keeps_nothing_and_still_scans(tmp_path, audio):
    recording = Recording(dict(audio))
    catalog = Catalog(str(tmp_path / "catalog.db"))
    try:
        registry = OriginRegistry([MemoryOrigin(recording)], backoff=0.0)
        keeper = types.SimpleNamespace(cas=None, catalog=catalog)
        result = Scanner(catalog, registry,
                         on_fetched=lambda pairs: Library.keep_scan_blocks(keeper, pairs)).scan()
        assert result.added == len(audio)
        tracks = [r for r in catalog.files() if r.kind == "track"]
        assert len(tracks) == 3 and all(catalog.blocks(r.version) == [] for r in tracks)
    finally:
        catalog.close()
