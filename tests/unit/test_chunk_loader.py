"""L1: the chunk loader (read/loader.py) on its own terms: with read-ahead and blocks off, each read loads whole
chunks, and the reader's statistics say exactly where each came from (memory, the disk cache, the origin), what
the origin was asked (the last chunk up to the end of the file, never past it) and when a file changed."""

from __future__ import annotations

import collections
import contextlib
import random
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from musicfs.cache.cas import chunk_hash
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.origins.memory import READ, READ_RANGES, MemoryOrigin, serve
from musicfs.origins.registry import OriginRegistry
from musicfs.read import build_reader
from musicfs.read.keeping import ChunkLRU, Protection
from musicfs.read.loader import KEEP_GRACE, ChunkLoader
from musicfs.read.open_files import NextHead, OpenFile
from musicfs.shared.errors import (
    CatalogError,
    OriginFileChanged,
    OriginTransient,
    ShortRead,
)
from musicfs_test_utils.eventually import eventually_async
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
    r = memory_rig(tmp_path, MemoryOrigin(recording))
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


# -- the loader by itself: built as build_reader builds it, driven as the reader and read-ahead drive it --------

class Pages:
    """Where offered chunks go (PagePusher's offer), recorded; `accept`: what the kernel side answers."""

    def __init__(self, accept: bool = True):
        self.accept = accept
        self.offers: list[tuple[int, int, int, int]] = []  # (inode, offset, length, file size)

    def offer(self, inode, version, offset, data, size) -> bool:
        self.offers.append((inode, offset, len(data), size))
        return self.accept


class Hang(threading.Event):
    """FaultyCasStore's `hang` that tells when the first call blocked on it."""

    def __init__(self):
        super().__init__()
        self.blocked = threading.Event()

    def wait(self, timeout=None):
        self.blocked.set()
        return super().wait(timeout)

    async def wait_blocked(self) -> None:
        assert await trio.to_thread.run_sync(self.blocked.wait, 10)


class Gate:
    """An origin handler that serves `files`, holding every READ at a gate until the test opens it."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.reads: list[tuple[int, int]] = []
        self.arrived = threading.Event()
        self.open = threading.Event()

    def __call__(self, request):
        if request.op == READ:
            self.reads.append((request.offset, request.length))
            self.arrived.set()
            if not self.open.wait(10):
                raise AssertionError("the gate was never opened")
        return serve(self.files)(request)

    async def wait_arrived(self) -> None:
        assert await trio.to_thread.run_sync(self.arrived.wait, 10)


@contextlib.contextmanager
def gated(base: Path, seed: int):
    """A loader over a file of random bytes whose origin holds every READ at a Gate: (data, gate, loader, the
    file opened)."""
    data = random.Random(seed).randbytes(SIZE)
    gate = Gate({PATH: data})
    rig = memory_rig(base, MemoryOrigin(gate))
    try:
        loader = direct_loader(rig)
        yield data, gate, loader, open_file(loader, rig.row(PATH))
    finally:
        rig.close()


def memory_rig(base: Path, origin, **kwargs) -> ReaderRig:
    """A ReaderRig over `origin` (a MemoryOrigin: the catalog holds what it walks), chunked as these tests are."""
    return ReaderRig.build(base, root=base / "unused", inner=origin, chunk_size=CHUNK, memory_cache=16 * CHUNK,
                           read_timeout=10.0, **kwargs)


def direct_loader(rig, *, origin=None, cas=None, pages=None, on_file_changed=None, op_timeout=3.0):
    cache = ChunkCache(cas or rig.cas, op_timeout=op_timeout)
    return ChunkLoader(rig.catalog, cache, OriginRegistry([origin or rig.origin], backoff=0.0), files={},
                       memory=ChunkLRU(16 * CHUNK), protection=Protection(cache), pages=pages,
                       counts=collections.Counter(), chunk_size=CHUNK, read_timeout=10.0, threads=8,
                       on_file_changed=on_file_changed)


def open_file(loader, row, **fields) -> OpenFile:
    manifest, seen = loader.version(row)
    of = OpenFile(row, manifest, seen, **fields)
    loader.files[row.version] = of
    return of


def piece(data: bytes, idx: int) -> bytes:
    return data[idx * CHUNK:(idx + 1) * CHUNK]


async def test_ready_and_in_memory_say_where_a_chunk_is(rig):
    data = rig.recording.files[PATH]
    loader = direct_loader(rig)
    of = open_file(loader, rig.row(PATH))
    assert not loader.ready(of, 0) and loader.in_memory(of, 0) is None  # nowhere yet
    assert await loader.chunk(of, 1) == piece(data, 1)
    assert loader.ready(of, 1) and loader.in_memory(of, 1) == piece(data, 1)
    assert not loader.ready(of, 0) and not loader.ready(of, 2)  # no digest: not in hand
    loader.memory.discard(of.manifest[1])
    assert loader.ready(of, 1)  # the disk cache has it
    assert loader.in_memory(of, 1) is None
    of.manifest[2] = chunk_hash(b"never stored")
    assert not loader.ready(of, 2)  # a digest neither memory nor the cache holds
    assert dict(loader.counts) == {"origin_fetches": 1, "memory_hits": 1}  # in_memory's one hit


async def test_a_chunk_being_loaded_is_ready_not_in_memory_and_loaded_once(tmp_path):
    with gated(tmp_path, 5) as (data, gate, loader, of):
        got = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(got, loader.chunk(of, 2)))
            await gate.wait_arrived()
            assert loader.ready(of, 2) and loader.in_memory(of, 2) is None
            nursery.start_soon(lambda: _append(got, loader.chunk(of, 2)))  # waits for the load under way
            await trio.testing.wait_all_tasks_blocked()
            gate.open.set()
        assert got == [piece(data, 2)] * 2 and gate.reads == [(2 * CHUNK, CHUNK)]
        assert loader.counts["origin_fetches"] == 1


async def _append(out: list, awaitable) -> None:
    out.append(await awaitable)


async def test_a_kept_chunk_is_pinned_ahead_of_the_reader_protected_behind_a_player_and_offered_once(rig):
    data = rig.recording.files[PATH]
    pages = Pages()
    loader = direct_loader(rig, pages=pages)
    of = open_file(loader, rig.row(PATH), unpinned_below=1, played=True, inode=7, sequential=True)
    await loader.chunk(of, 1)  # at the reader: pinned
    await loader.chunk(of, 0)  # behind a player: protected, not pinned
    d0, d1 = of.manifest[0], of.manifest[1]
    assert of.pinned == {d1: 1} and d1 in loader.cache.pins and d0 not in loader.cache.pins
    assert d0 in loader.cache.protection and d1 not in loader.cache.protection
    assert pages.offers == [(7, CHUNK, CHUNK, SIZE), (7, 0, CHUNK, SIZE)]
    loader.offer_pages(of, 1, piece(data, 1))  # once per open
    assert len(pages.offers) == 2 and of.pushed == {0, 1}


async def test_what_is_not_pinned_or_offered(rig):
    data = rig.recording.files[PATH]
    pages = Pages(accept=False)
    loader = direct_loader(rig, pages=pages)
    closed = open_file(loader, rig.row(PATH), refs=0, inode=3, sequential=True)
    await loader.chunk(closed, 3)  # a file nobody holds open pins nothing
    assert closed.pinned == {} and len(loader.cache.pins) == 0
    assert pages.offers == [(3, 3 * CHUNK, 1000, SIZE)] and closed.pushed == set()  # refused: not marked pushed
    other = direct_loader(rig, pages=pages)
    seeking = open_file(other, rig.row(PATH), unpinned_below=2, inode=3)  # not sequential, not played
    await other.chunk(seeking, 0)
    assert seeking.pinned == {} and len(other.cache.protection) == 0
    assert len(pages.offers) == 1  # a handle that does not stream offers nothing
    noinode = open_file(direct_loader(rig, pages=pages), rig.row(PATH), sequential=True)
    assert await direct_loader(rig, pages=pages).chunk(noinode, 1) == piece(data, 1)
    assert len(pages.offers) == 1  # no inode (a pin's read): nowhere to push


async def test_a_file_gone_at_the_origin_is_a_changed_file_and_the_daemon_is_told(rig):
    told = []
    loader = direct_loader(rig, on_file_changed=told.append)
    of = open_file(loader, rig.row(PATH))
    del rig.recording.files[PATH]
    with pytest.raises(OriginFileChanged, match="gone at the origin"):
        await loader.chunk(of, 0)
    assert told == [PATH] and loader.counts["changed_files"] == 1


async def test_a_changed_file_is_told_as_it_was(rig):
    told = []
    loader = direct_loader(rig, on_file_changed=told.append)
    of = open_file(loader, rig.row(PATH))
    rig.recording.files[PATH] = b"x" * SIZE  # same size: only the fake's strict identity check cannot see it...
    rig.recording.files[PATH] = b"x" * (SIZE + 1)  # ...so it grows
    with pytest.raises(OriginFileChanged) as info:
        await loader.chunk(of, 0)
    assert "gone at the origin" not in str(info.value) and told == [PATH]


async def test_several_ranges_without_a_stream_are_each_their_own_range(rig):
    data = rig.recording.files[PATH]
    loader = direct_loader(rig)
    of = open_file(loader, rig.row(PATH))
    datas, keep = await loader.from_origin(of, [(5, 10), (CHUNK + 1, 20)])
    assert datas == [data[5:15], data[CHUNK + 1:CHUNK + 21]] and keep
    [one], _ = await loader.from_origin(of, [(CHUNK, 7)])
    assert one == data[CHUNK:CHUNK + 7]
    assert rig.recording.reads == [(5, 10), (CHUNK + 1, 20), (CHUNK, 7)]


async def test_a_racy_version_is_served_counted_and_never_kept(tmp_path):
    data = random.Random(8).randbytes(SIZE)
    rig = memory_rig(tmp_path, MemoryOrigin(serve({PATH: data})))
    try:
        racy = MemoryOrigin(serve({PATH: data}), resolution=3600.0)  # a version seen just now is racy for an hour
        loader = direct_loader(rig, origin=racy)
        of = open_file(loader, rig.row(PATH))
        assert await loader.chunk(of, 0) == piece(data, 0)
        assert loader.counts["racy_fetches"] == 1 and of.manifest == {} and rig.manifest(PATH) == {}
        fetched = []
        await loader.prefetch(rig.row(PATH).version, [1, 2], lambda: fetched.append(1))
        assert fetched and loader.counts["origin_fetches"] == 1  # read-ahead fetches nothing racy
    finally:
        rig.close()


@pytest.mark.expected_log(r"catalog: cannot record a chunk of a/b.flac \(database is locked\)")
async def test_a_chunk_the_catalog_cannot_name_is_served_and_counted(rig, monkeypatch):
    data = rig.recording.files[PATH]
    loader = direct_loader(rig)
    of = open_file(loader, rig.row(PATH))

    def locked(*args):
        raise CatalogError("database is locked")

    monkeypatch.setattr(rig.catalog, "set_manifest_chunk", locked)
    assert await loader.chunk(of, 0) == piece(data, 0)
    assert loader.counts["manifest_failures"] == 1 and of.manifest == {} and len(loader.memory._data) == 0


async def test_read_ahead_fetches_a_run_of_missing_chunks_in_one_request_and_stores_each(rig):
    data = rig.recording.files[PATH]
    loader = direct_loader(rig)
    row = rig.row(PATH)
    of = open_file(loader, row)
    calls = []
    await loader.prefetch(row.version, [1, 2, 3, 4, 5], lambda: calls.append(1))  # 4, 5: past the end
    assert rig.recording.reads == [(CHUNK, 2 * CHUNK + 1000)] and calls
    assert of.manifest == {i: chunk_hash(piece(data, i)) for i in (1, 2, 3)} == rig.manifest(PATH)
    assert loader.counts["origin_fetches"] == 3
    assert [loader.in_memory(of, i) for i in (1, 2, 3)] == [piece(data, i) for i in (1, 2, 3)]
    await loader.prefetch(row.version, [0, 1], lambda: calls.append(2))  # 1 cached: 0 alone, chunk by chunk
    assert rig.recording.reads[1:] == [(0, CHUNK)] and calls[-1] == 2
    await loader.prefetch(row.version, [2, 3], lambda: calls.append(3))  # all cached: nothing asked
    assert len(rig.recording.reads) == 2 and calls[-1] == 3


async def test_read_ahead_of_scattered_chunks_asks_for_each_run_side_by_side(rig):
    loader = direct_loader(rig)
    row = rig.row(PATH)
    of = open_file(loader, row)
    calls = []
    await loader._fetch_missing(of, [0, 2], lambda: calls.append(1))
    assert sorted(rig.recording.reads) == [(0, CHUNK), (2 * CHUNK, CHUNK)] and calls == [1]
    assert sorted(of.manifest) == [0, 2]


async def test_runs_of_a_scattered_batch_are_each_one_request_and_each_chunk_gets_its_own_bytes(rig):
    # chunk 1 is cached: 0 alone, then 2..3 in one request whose bytes are cut for 2 and 3
    data = rig.recording.files[PATH]
    loader = direct_loader(rig)
    of = open_file(loader, rig.row(PATH))
    await loader._fetch_missing(of, [0, 2, 3], lambda: None)
    assert sorted(rig.recording.reads) == [(0, CHUNK), (2 * CHUNK, SIZE - 2 * CHUNK)]
    assert of.manifest == {i: chunk_hash(piece(data, i)) for i in (0, 2, 3)}


async def test_a_batch_says_its_bytes_are_in_hand_before_they_are_stored(tmp_path):
    data = random.Random(14).randbytes(SIZE)
    rig = memory_rig(tmp_path, MemoryOrigin(serve({PATH: data})), faulty_cas=True)
    try:
        rig.cas.hang = Hang()  # the disk hangs: the fetched chunks wait to be stored
        loader = direct_loader(rig)
        of = open_file(loader, rig.row(PATH))
        calls = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader._fetch_missing, of, [0, 2], lambda: calls.append(1))
            await rig.cas.hang.wait_blocked()  # a store is under way (and hangs)
            # both runs answered: the lane may go on while they are stored
            await eventually_async(lambda: calls == [1], 10, "fetched() while the stores hang")
            rig.cas.hang.set()
        assert calls == [1] and sorted(of.manifest) == [0, 2]
    finally:
        rig.cas.hang.set()
        rig.close()


async def test_a_chunk_the_reader_loads_already_leaves_the_rest_of_the_batch_one_request(tmp_path):
    # the reader's own read of chunk 1 got to the origin first: read-ahead's batch 1..3 waits for that load and
    # asks for 2..3 in one request, not chunk by chunk (one round trip each)
    with gated(tmp_path, 12) as (data, gate, loader, of):
        got, calls = [], []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _append(got, loader.chunk(of, 1)))
            await gate.wait_arrived()
            nursery.start_soon(loader._fetch_missing, of, [1, 2, 3], lambda: calls.append(1))
            await trio.testing.wait_all_tasks_blocked()
            gate.open.set()
        assert got == [piece(data, 1)] and calls == [1]
        assert sorted(gate.reads) == [(CHUNK, CHUNK), (2 * CHUNK, SIZE - 2 * CHUNK)]
        assert sorted(of.manifest) == [1, 2, 3] and loader.counts["origin_fetches"] == 3
        assert loader._inflight == {} and loader._fresh == {}


async def test_runs_that_never_went_are_no_longer_claimed_when_one_fails(rig, monkeypatch):
    # on a stream read in order, the runs go one after the other: when the first fails, the second's chunks must
    # not stay claimed (a reader of them would wait for a load that never comes)
    loader = direct_loader(rig)
    of = open_file(loader, rig.row(PATH))
    loader.stream_origin(of)
    monkeypatch.setattr(type(of.origin), "ordered", property(lambda self: True))

    async def refused(*args, **kwargs):
        raise OriginTransient("origin down")

    monkeypatch.setattr(of.origin, "fetch_ranges", refused)
    calls = []
    with pytest.raises(OriginTransient):
        await loader._fetch_missing(of, [0, 2], lambda: calls.append(1))
    assert loader._inflight == {} and loader._fresh == {} and calls == [1]  # no origin request left: told once


async def test_read_ahead_of_a_closed_file_does_nothing(rig):
    loader = direct_loader(rig)
    calls = []
    await loader.prefetch(rig.row(PATH).version, [0, 1], lambda: calls.append(1))
    assert rig.recording.reads == [] and calls == []


async def test_a_reader_takes_a_fetched_chunk_while_it_is_being_stored(tmp_path):
    data = random.Random(9).randbytes(SIZE)
    rig = memory_rig(tmp_path, MemoryOrigin(serve({PATH: data})), faulty_cas=True)
    try:
        rig.cas.hang = Hang()  # the disk hangs: fetched chunks wait to be stored
        loader = direct_loader(rig)
        row = rig.row(PATH)
        of = open_file(loader, row)
        got = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader.prefetch, row.version, [0, 1, 2], lambda: None)
            await rig.cas.hang.wait_blocked()  # the span is in hand, its stores are under way
            for idx in (2, 0, 1):
                got.append(await loader.chunk(of, idx))
            assert loader.counts["memory_hits"] == 3 and loader.counts["origin_fetches"] == 3
            rig.cas.hang.set()
        assert got == [piece(data, 2), piece(data, 0), piece(data, 1)]
        assert of.manifest == {i: chunk_hash(piece(data, i)) for i in (0, 1, 2)}
    finally:
        rig.cas.hang.set()
        rig.close()


async def test_the_head_of_a_next_track_is_loaded_and_protected(rig):
    data = rig.recording.files[PATH]
    loader = direct_loader(rig)
    row = rig.row(PATH)
    calls = []
    await loader.prefetch(NextHead(row), [0, 1], lambda: calls.append(1))
    digests = [chunk_hash(piece(data, i)) for i in (0, 1)]
    assert rig.manifest(PATH) == dict(enumerate(digests)) and calls == [1]
    assert sorted(loader.cache.protection.held()) == sorted(digests) and len(loader.cache.pins) == 0
    of = open_file(loader, row)  # opened meanwhile: the head is the open file's (as the reader's open says)
    loader.protection.opened(row.version)
    await loader.prefetch(NextHead(row), [2], lambda: None)
    assert loader.protection._digests[row.version] == {*digests, of.manifest[2]}
    assert row.version not in loader.protection._waiting


async def test_read_ahead_frees_its_lane_before_the_origin_answers_when_streams_need_no_order(tmp_path):
    """An origin whose streams read in any order (here, as SFTP's): `fetched()` comes before the origin answers,
    so the file's next batch may go beside this one."""
    with gated(tmp_path, 6) as (_data, gate, loader, of):
        calls = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader.prefetch, of.row.version, [0, 1], lambda: calls.append(1))
            await gate.wait_arrived()
            assert calls and not of.manifest  # freed while the origin still holds the batch
            gate.open.set()
        assert sorted(of.manifest) == [0, 1] and of.origin is not None  # read through the file's stream


async def test_a_run_of_two_missing_chunks_is_one_request_counted_as_two_fetches(rig):
    loader = direct_loader(rig)
    of = open_file(loader, rig.row(PATH))
    await loader.prefetch(of.row.version, [1, 2], lambda: None)
    assert rig.recording.reads == [(CHUNK, 2 * CHUNK)] and loader.counts["origin_fetches"] == 2
    assert sorted(of.manifest) == [1, 2]


async def test_read_ahead_stops_at_the_end_of_a_file_of_whole_chunks(tmp_path):
    data = random.Random(10).randbytes(2 * CHUNK)  # chunk 2 would start exactly at the end
    recording = Recording({PATH: data})
    rig = memory_rig(tmp_path, MemoryOrigin(recording))
    try:
        loader = direct_loader(rig)
        of = open_file(loader, rig.row(PATH))
        await loader.prefetch(of.row.version, [0, 1, 2], lambda: None)
        assert recording.reads == [(0, 2 * CHUNK)] and loader.counts["origin_fetches"] == 2
        assert rig.manifest(PATH) == {0: chunk_hash(piece(data, 0)), 1: chunk_hash(piece(data, 1))}
    finally:
        rig.close()


class Short:
    """An origin handler that answers every READ one byte short (a server that lies about a range)."""

    def __init__(self, files):
        self.files = files
        self.ops: list[str] = []

    def __call__(self, request):
        self.ops.append(request.op)
        got = serve(self.files)(request)
        return got[:-1] if request.op == READ and got else got


@pytest.mark.parametrize("how", ["stream", "one range", "ranges"])
async def test_a_short_answer_is_never_served_whichever_way_the_origin_is_asked(tmp_path, how):
    data = random.Random(11).randbytes(SIZE)
    short = Short({PATH: data})
    rig = memory_rig(tmp_path, MemoryOrigin(short))
    try:
        loader = direct_loader(rig)
        of = open_file(loader, rig.row(PATH))
        if how == "stream":
            loader.stream_origin(of)
        ranges = [(0, 10)] if how == "one range" else [(0, 10), (CHUNK, 10)]
        with pytest.raises(ShortRead):
            await loader.from_origin(of, ranges)
        assert READ in short.ops
    finally:
        rig.close()


async def test_one_range_is_one_read_not_a_batch(tmp_path):
    data = random.Random(12).randbytes(SIZE)
    ops = []

    def handler(request):
        ops.append(request.op)
        return serve({PATH: data})(request)

    origin = MemoryOrigin(handler, whole_ranges=True)  # answers a batch of ranges as one request
    rig = memory_rig(tmp_path, origin)
    try:
        loader = direct_loader(rig, origin=origin)
        of = open_file(loader, rig.row(PATH))
        ops.clear()
        [got], _ = await loader.from_origin(of, [(CHUNK, 10)])
        assert got == data[CHUNK:CHUNK + 10] and ops == [READ]
        got2, _ = await loader.from_origin(of, [(0, 5), (CHUNK, 5)])
        assert got2 == [data[:5], data[CHUNK:CHUNK + 5]] and ops == [READ, READ_RANGES]
    finally:
        rig.close()


async def test_a_chunk_beyond_where_the_reader_unpinned_is_pinned(rig):
    loader = direct_loader(rig)
    of = open_file(loader, rig.row(PATH), unpinned_below=1)
    await loader.chunk(of, 2)
    assert of.pinned == {of.manifest[2]: 2}


async def test_a_failed_read_ahead_run_lets_the_readers_waiting_for_it_fetch_their_own(tmp_path):
    data = random.Random(13).randbytes(SIZE)
    gate = Gate({PATH: data})
    failed = []

    def handler(request):
        if request.op == READ and not failed:
            failed.append(request.offset)
            gate(request)  # held at the gate, then refused
            raise OriginTransient("connection reset", origin="m", path=request.path)
        return serve({PATH: data})(request)

    rig = memory_rig(tmp_path, MemoryOrigin(handler))
    try:
        loader = direct_loader(rig, origin=MemoryOrigin(handler))
        loader.origins.retries = 0
        of = open_file(loader, rig.row(PATH))
        got = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _quiet(loader.prefetch(of.row.version, [0, 1], lambda: None)))
                await gate.wait_arrived()
                nursery.start_soon(lambda: _append(got, loader.chunk(of, 1)))  # waits for the run
                await trio.testing.wait_all_tasks_blocked()
                gate.open.set()
        assert got == [piece(data, 1)] and failed == [0]
    finally:
        rig.close()


async def _quiet(awaitable) -> None:
    try:
        await awaitable
    except* OriginTransient:  # the run failed (read-ahead is best effort)
        pass


async def _load_in(scope: trio.CancelScope, loader, of, idx: int) -> None:
    with scope:
        await loader.chunk(of, idx)


async def test_a_load_cancelled_while_it_is_stored_finishes_storing_what_was_fetched(tmp_path):
    data = random.Random(14).randbytes(SIZE)
    rig = memory_rig(tmp_path, MemoryOrigin(serve({PATH: data})), faulty_cas=True)
    rig.cas.hang = Hang()
    try:
        loader = direct_loader(rig, op_timeout=10 * KEEP_GRACE)
        of = open_file(loader, rig.row(PATH))
        scope = trio.CancelScope()
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_load_in, scope, loader, of, 0)
                await rig.cas.hang.wait_blocked()
                scope.cancel()  # a clean stop
                await trio.testing.wait_all_tasks_blocked()
                rig.cas.hang.set()  # the disk answers: what was fetched is still stored and named
        assert rig.manifest(PATH) == {0: chunk_hash(piece(data, 0))}
    finally:
        rig.cas.hang.set()
        rig.close()


async def test_a_load_cancelled_while_the_disk_hangs_gives_up_after_its_grace(tmp_path, mock_clock):
    data = random.Random(15).randbytes(SIZE)
    rig = memory_rig(tmp_path, MemoryOrigin(serve({PATH: data})), faulty_cas=True)
    rig.cas.hang = Hang()
    try:
        loader = direct_loader(rig, op_timeout=10 * KEEP_GRACE)  # the cache's own deadline comes later
        of = open_file(loader, rig.row(PATH))
        scope = trio.CancelScope()
        done = trio.Event()

        async def load() -> None:
            await _load_in(scope, loader, of, 0)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            await rig.cas.hang.wait_blocked()
            scope.cancel()
            mock_clock.jump(KEEP_GRACE - 0.01)  # the test's clock: trio's deadlines only
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # still storing, shielded
            mock_clock.jump(0.02)
            await done.wait()
        assert rig.manifest(PATH) == {}
    finally:
        rig.cas.hang.set()
        rig.close()


async def test_a_thread_call_cancelled_is_abandoned_not_waited_for(rig):
    loader = direct_loader(rig)
    stuck = threading.Event()
    entered = threading.Event()
    ended = threading.Event()

    def hung():
        entered.set()
        stuck.wait(10)
        ended.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader.thread, hung)
            assert await trio.to_thread.run_sync(entered.wait, 10)
            nursery.cancel_scope.cancel()
        assert not ended.is_set()  # back while the call still hangs
    finally:
        stuck.set()
