"""A clean start opens the CAS without loading its LRU: the work before READY does not grow with the number of
cached chunks (issue 11). The cache task loads it after READY; until then the store is still right: chunks of
earlier runs are found (by their files), a put loads it first (quota exact, LRU order kept), eviction never
takes a pinned chunk, and what this run forgot is not brought back by the load.

Rows read are counted with a spy on the index connection, never timed.
"""

from __future__ import annotations

import collections
import os
import random
import sqlite3

import pytest
import trio
import trio.testing

from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.library.pins import PinSet
from musicfs.library.storage import Library
from musicfs.origins.memory import READ, MemoryOrigin, serve
from musicfs.shared.config import Config
from musicfs_test_utils.cas_damage import SIZE, blob, chunk_file
from musicfs_test_utils.fixtures import setup_test_cas
from musicfs_test_utils.reader_rig import ReaderRig

WAIT = 10.0  # a deadline for hand-offs, never a timing assertion
BAD_CHUNK = (r"musicfs.cache.cas: cache: chunk \w+ failed verification; moved to",
             r"musicfs.cache.chunk_cache: cache: chunk \w+ failed verification and was quarantined; fetching it again")


class _CountingCursor:
    def __init__(self, cursor: sqlite3.Cursor, sql: str, rows: collections.Counter):
        self._cursor, self._sql, self._rows = cursor, sql, rows

    def __iter__(self):
        for row in self._cursor:
            self._rows[self._sql] += 1
            yield row

    def fetchall(self):
        got = self._cursor.fetchall()
        self._rows[self._sql] += len(got)
        return got

    def fetchone(self):
        got = self._cursor.fetchone()
        self._rows[self._sql] += got is not None
        return got

    def __getattr__(self, name):
        return getattr(self._cursor, name)


class _CountingConnection:
    """The index connection with every row a statement returns counted (by its SQL)."""

    def __init__(self, db: sqlite3.Connection, rows: collections.Counter):
        self._db, self._rows = db, rows

    def execute(self, sql, *args):
        return _CountingCursor(self._db.execute(sql, *args), sql, self._rows)

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.fixture
def rows_read(monkeypatch) -> collections.Counter:
    """Rows read from every CasStore index connection opened from now on, by statement."""
    rows: collections.Counter = collections.Counter()
    real_connect = CasStore._connect

    def connect(self, path):
        return _CountingConnection(real_connect(self, path), rows)

    monkeypatch.setattr(CasStore, "_connect", connect)
    return rows


def _cached(root, n: int, quota: int = 1 << 30) -> list[str]:
    """A store holding n chunks, closed cleanly; their digests, oldest access first."""
    store = setup_test_cas(root, quota)
    digests = [store.put(blob(i)) for i in range(n)]
    store.close()
    db = sqlite3.connect(os.path.join(root, "index.db"))
    with db:  # distinct access times, in put order
        db.executemany("UPDATE chunks SET atime = ? WHERE hash = ?", [(1000.0 + i, d) for i, d in enumerate(digests)])
    db.close()
    return digests


def _clean_start(root, quota: int = 1 << 30) -> CasStore:
    return setup_test_cas(root, quota, reconcile_later=True)


def test_a_clean_start_reads_as_many_index_rows_for_few_and_many_chunks(tmp_path, rows_read):
    read = []
    for n in (5, 200):
        _cached(tmp_path / str(n), n)
        rows_read.clear()
        _clean_start(tmp_path / str(n)).close()
        read.append(sum(rows_read.values()))
    assert read[0] == read[1] <= 5, read  # the integrity check's rows, not one row per chunk
    rows_read.clear()
    store = _clean_start(tmp_path / "200")
    try:
        store.load_lru()  # what the cache task does after READY reads them all
        assert sum(rows_read.values()) >= 200 and store.usage() == (200 * SIZE, 200)
    finally:
        store.close()


def test_library_open_and_pins_before_ready_do_not_read_the_chunk_rows(tmp_path, rows_read):
    (tmp_path / "src").mkdir()
    cfg = Config(sources=(str(tmp_path / "src"),), mountpoint=str(tmp_path / "mnt"), state_dir=str(tmp_path / "state"),
                 cache_dir=str(tmp_path / "cache"))
    lib = Library.open(cfg)
    for i in range(100):
        lib.cas.put(blob(i))
    lib.close()
    rows_read.clear()
    lib = Library.open(cfg)
    try:
        cache = ChunkCache(lib.cas)
        pins = PinSet(lib.catalog, cache, chunk_size=cfg.chunk_size, quota=cfg.cache_size, tree=lib.build_tree,
                      reader=None, origins=lib.registry)
        trio.run(pins.load)
        assert sum(rows_read.values()) <= 5 and not lib.cas.loaded
    finally:
        lib.close()


async def test_before_the_load_a_chunk_of_an_earlier_run_is_found_and_a_miss_is_a_miss(tmp_path):
    digests = _cached(tmp_path, 10)
    store = _clean_start(tmp_path)
    cache = ChunkCache(store)
    try:
        assert not store.has(digests[4])  # not known to memory yet...
        assert await cache.get(digests[4]) == blob(4)  # ...but found: its file, verified
        assert await cache.get(chunk_hash(b"never cached")) is None
        assert not store.loaded and store.has(digests[4])  # known from now on, without loading the rest
        assert cache.statistics().bad_chunks == 0 and not cache.statistics().loaded
        store.load_lru()
        assert store.usage() == (10 * SIZE, 10)  # counted once
        assert list(store._lru)[-1] == digests[4]  # read this run: the young end, after every stored one
    finally:
        store.close()


@pytest.mark.expected_log(*BAD_CHUNK)
async def test_before_the_load_a_corrupt_chunk_file_is_quarantined_not_served(tmp_path):
    digests = _cached(tmp_path, 3)
    with open(os.path.join(tmp_path, "chunks", digests[1][:2], digests[1]), "r+b") as fh:
        fh.write(b"rot")
    store = _clean_start(tmp_path)
    cache = ChunkCache(store)
    try:
        assert await cache.get(digests[1]) is None and cache.statistics().bad_chunks == 1
        store.load_lru()
        assert not store.has(digests[1]) and store.usage() == (2 * SIZE, 2)  # the load does not bring it back
    finally:
        store.close()


def test_a_put_before_the_load_loads_first_keeps_the_quota_and_lru_order(tmp_path):
    quota = 10 * SIZE  # high watermark 9.5 chunks, low 8.5
    digests = _cached(tmp_path, 9, quota)
    store = _clean_start(tmp_path, quota)
    try:
        assert store.usage() == (0, 0)  # nothing known yet: a put must not trust this
        new = store.put(blob(100))
        assert store.loaded
        used, count = store.usage()
        assert used <= quota * store.high and count == 8  # 9 + 1 over the high watermark: down to the low one
        assert not store.has(digests[0]) and not store.has(digests[1])  # the least recently used went
        assert all(store.has(d) for d in digests[2:]) and store.has(new)
        assert used == sum(os.path.getsize(chunk_file(store, d)) for d in digests[2:] + [new])
    finally:
        store.close()


def test_eviction_before_the_load_never_takes_a_pinned_chunk(tmp_path):
    quota = 10 * SIZE
    digests = _cached(tmp_path, 9, quota)
    store = _clean_start(tmp_path, quota)
    try:
        store.pins.hold(digests[0])  # as PinSet.load does before READY, the oldest chunk
        store.evict_to(0)
        assert store.loaded and store.has(digests[0]) and os.path.exists(chunk_file(store, digests[0]))
        assert store.usage() == (SIZE, 1)
    finally:
        store.close()


def test_a_chunk_forgotten_while_the_lru_loads_stays_forgotten(tmp_path, monkeypatch):
    digests = _cached(tmp_path, 4)
    store = _clean_start(tmp_path)
    real_select = store._select_lru

    def select():  # the index rows are read; before they reach memory, a read finds a chunk's file gone
        rows = real_select()
        os.unlink(chunk_file(store, digests[2]))
        store._forget(digests[2])
        return rows

    monkeypatch.setattr(store, "_select_lru", select)
    try:
        store.load_lru()
        assert not store.has(digests[2]) and store.usage() == (3 * SIZE, 3)
    finally:
        store.close()


async def test_the_cache_task_loads_the_lru_only_after_ready(tmp_path):
    _cached(tmp_path, 20)
    store = _clean_start(tmp_path)
    cache = ChunkCache(store)
    ready = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run, ready)
            await trio.testing.wait_all_tasks_blocked()
            assert not store.loaded and not store.reconciliations  # waiting for READY
            ready.set()
            with trio.fail_after(WAIT):
                await cache.health.reconciled.wait()
            nursery.cancel_scope.cancel()
        assert store.loaded and store.lru_loads == 1 and store.usage() == (20 * SIZE, 20)
        assert cache.statistics().loaded
    finally:
        store.close()


# -- through the reader ------------------------------------------------------------------------------------------------
CHUNK = 1 << 20
BIG = "album/big.flac"


async def _read(reader, row, offset: int, size: int) -> bytes:
    fh = await reader.open(row)
    try:
        return await reader.read(fh, offset, size)
    finally:
        reader.release(fh)


async def test_small_reads_before_the_load_come_from_cached_chunks_and_blocks_not_the_origin(tmp_path):
    """A probe read (tag readers, media scanners) right after a clean start: the reader decides between chunk
    and blocks with may_have(), so what earlier runs cached is served, not fetched again (offline too)."""
    data = random.Random(7).randbytes(2 * CHUNK + 100)
    reads = []

    def handler(request):
        if request.op == READ:
            reads.append((request.path, request.offset, request.length))
        return serve({BIG: data}, mtime_ns=1)(request)

    rig = ReaderRig.build(tmp_path, root=tmp_path / "unused", inner=MemoryOrigin(handler), chunk_size=CHUNK,
                          memory_cache=16 * CHUNK, read_timeout=10.0, cas_kwargs={"reconcile_later": True})
    try:
        row = rig.row(BIG)
        assert await _read(rig.reader, row, 0, CHUNK) == data[:CHUNK]  # kept as a chunk
        assert await _read(rig.reader, row, len(data) - 10, 10) == data[-10:]  # kept as a block
        rig.restart_cache()  # a clean restart: the LRU is not loaded
        reads.clear()
        assert not rig.cas.loaded
        assert await _read(rig.reader, row, 777, 4096) == data[777:777 + 4096]
        assert await _read(rig.reader, row, len(data) - 10, 10) == data[-10:]
        assert reads == [] and not rig.cas.loaded
        assert await _read(rig.reader, row, CHUNK + 5, 10) == data[CHUNK + 5:CHUNK + 15]  # never cached: fetched
        assert reads and rig.cas.loaded  # keeping what it fetched loaded the LRU first (a put)
    finally:
        rig.close()
