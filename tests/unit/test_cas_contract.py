"""The chunk-store contract: one test body, run against CasStore and FaultyCasStore (no faults armed).

A store joins through a factory in CAS_FACTORIES: root folder + quota (+ watermarks) -> a store.
FaultyCasStore must be indistinguishable from the real store while no fault is injected.
"""

from __future__ import annotations

import os
import sqlite3

import pytest

from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.shared.errors import CacheFull, ChunkCorrupt, ChunkMissing
from musicfs_test_utils.faulty_cas import FaultyCasStore

KB = 1024


def real_store(root, quota, **kw):
    return CasStore(str(root), quota, **kw)


def faulty_store(root, quota, **kw):
    return FaultyCasStore(CasStore(str(root), quota, **kw))


CAS_FACTORIES = [pytest.param(real_store, id="CasStore"), pytest.param(faulty_store, id="FaultyCasStore")]


@pytest.fixture(params=CAS_FACTORIES)
def make_store(request, tmp_path):
    made = []

    def make(quota=1 << 20, name="cas", **kw):
        store = request.param(tmp_path / name, quota, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        try:
            store.close()
        except sqlite3.ProgrammingError:
            pass  # the test closed it already


def blob(i: int, size: int = 10 * KB) -> bytes:
    return bytes([i % 251]) * (size - 8) + i.to_bytes(8, "big")


def chunk_file(store, digest: str) -> str:
    return os.path.join(store.root, "chunks", digest[:2], digest)


def index_rows(store) -> set[str]:
    db = sqlite3.connect(f"file:{os.path.join(store.root, 'index.db')}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT hash FROM chunks")}
    finally:
        db.close()


def test_put_get_has_usage(make_store):
    store = make_store()
    assert store.usage() == (0, 0)
    a, b = blob(1), blob(2, 3 * KB)
    da = store.put(a)
    assert da == chunk_hash(a)
    assert store.has(da) and not store.has(chunk_hash(b))
    assert store.get(da) == a
    assert store.usage() == (len(a), 1)
    db = store.put(b)
    assert store.usage() == (len(a) + len(b), 2)
    assert store.put(a) == da  # putting the same bytes again stores nothing new
    assert store.usage() == (len(a) + len(b), 2)
    assert store.get(db) == b
    assert os.path.getsize(chunk_file(store, da)) == len(a)
    assert index_rows(store) == {da, db}
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_empty_chunk(make_store):
    store = make_store()
    d = store.put(b"")
    assert store.has(d) and store.get(d) == b"" and store.usage() == (0, 1)


def test_get_unknown_chunk_is_missing(make_store):
    store = make_store()
    with pytest.raises(ChunkMissing):
        store.get(chunk_hash(b"never stored"))


def test_missing_chunk_file_is_forgotten(make_store):
    store = make_store()
    d = store.put(blob(3))
    os.unlink(chunk_file(store, d))
    with pytest.raises(ChunkMissing):
        store.get(d)
    assert not store.has(d) and store.usage() == (0, 0) and index_rows(store) == set()


@pytest.mark.expected_log(r"musicfs\.cache\.cas: cache: chunk [0-9a-f]{12} failed verification; moved to")
def test_corrupt_chunk_is_quarantined_never_served(make_store):
    store = make_store()
    data = blob(4)
    d = store.put(data)
    with open(chunk_file(store, d), "r+b") as fh:
        fh.write(b"X")
    with pytest.raises(ChunkCorrupt):
        store.get(d)
    assert not store.has(d) and store.usage() == (0, 0)
    assert not os.path.exists(chunk_file(store, d))
    kept = os.listdir(os.path.join(store.root, "quarantine"))
    assert len(kept) == 1 and kept[0].startswith(d)
    assert store.put(data) == d and store.get(d) == data  # fetched again, stored again


@pytest.mark.expected_log(r"musicfs\.cache\.cas: cache: chunk [0-9a-f]{12} failed verification; moved to")
def test_quarantine_moves_the_chunk_aside(make_store):
    store = make_store()
    keep, bad = store.put(blob(5)), store.put(blob(6))
    store.quarantine(bad)
    assert not store.has(bad) and store.has(keep)
    assert store.usage() == (len(blob(5)), 1)
    assert index_rows(store) == {keep}
    [moved] = os.listdir(os.path.join(store.root, "quarantine"))
    with open(os.path.join(store.root, "quarantine", moved), "rb") as fh:
        assert fh.read() == blob(6)  # kept for inspection, byte for byte
    store.quarantine(bad)  # twice is harmless
    assert store.usage() == (len(blob(5)), 1)


def test_evict_to_drops_least_recently_used_first(make_store):
    store = make_store()
    digests = [store.put(blob(i)) for i in range(6)]
    store.get(digests[0])  # touch the oldest: it becomes the most recently used
    freed = store.evict_to(3 * 10 * KB)
    assert freed == 3 * 10 * KB
    assert store.usage() == (3 * 10 * KB, 3)
    assert [store.has(d) for d in digests] == [True, False, False, False, True, True]
    for d in digests[1:4]:
        assert not os.path.exists(chunk_file(store, d))
    assert index_rows(store) == {digests[0], digests[4], digests[5]}
    assert store.evict_to(10**9) == 0  # already below: nothing to do


def test_pinned_chunks_survive_eviction(make_store):
    store = make_store()
    digests = [store.put(blob(i)) for i in range(4)]
    store.pins.hold(digests[0])
    store.pins.hold(digests[0])  # pins count
    store.pins.hold(digests[1])
    store.evict_to(0)
    assert [store.has(d) for d in digests] == [True, True, False, False]
    store.pins.release(digests[0])
    store.pins.release(digests[1])
    store.evict_to(0)
    assert [store.has(d) for d in digests] == [True, False, False, False]  # one pin left on 0
    store.pins.release(digests[0])
    store.evict_to(0)
    assert store.usage() == (0, 0)


def test_protected_chunks_go_after_the_unprotected_ones(make_store):
    store = make_store()
    digests = [store.put(blob(i)) for i in range(5)]
    store.protection.hold(digests[0])
    store.protection.hold(digests[1])
    store.pins.hold(digests[1])
    assert store.protected == 2
    store.evict_to(2 * 10 * KB)
    assert [store.has(d) for d in digests] == [True, True, False, False, False]
    store.protection.release(digests[0])
    store.put(blob(9))
    store.evict_to(2 * 10 * KB)
    assert [store.has(d) for d in digests] == [False, True, False, False, False]  # ordinary again: oldest goes
    store.pins.release(digests[1])
    store.evict_to(0)
    assert store.usage() == (0, 0) and store.protected == 0  # protection is no pin


def test_put_past_the_high_watermark_evicts_to_the_low_one(make_store):
    store = make_store(quota=100 * KB, high=0.9, low=0.5)
    digests = [store.put(blob(i)) for i in range(9)]  # 90 KB: at the high watermark, not past it
    assert store.usage() == (90 * KB, 9)
    new = store.put(blob(99))
    used, count = store.usage()
    assert used <= 50 * KB and store.has(new)
    assert store.has(digests[-1]) and not store.has(digests[0])  # oldest went first
    assert used == sum(10 * KB for d in digests + [new] if store.has(d))


def test_chunk_larger_than_the_quota_is_refused(make_store):
    store = make_store(quota=8 * KB)
    with pytest.raises(CacheFull):
        store.put(blob(7, 9 * KB))
    assert store.usage() == (0, 0)
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_reopen_keeps_chunks_and_lru_order(make_store):
    store = make_store()
    digests = [store.put(blob(i)) for i in range(3)]
    store.get(digests[0])
    store.close()
    again = make_store()
    assert again.usage() == (3 * 10 * KB, 3)
    again.evict_to(2 * 10 * KB)  # the atime of digests[0] was flushed at close: digests[1] is now oldest
    assert [again.has(d) for d in digests] == [True, False, True]
    assert again.get(digests[0]) == blob(0) and again.get(digests[2]) == blob(2)
