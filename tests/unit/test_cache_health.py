"""Cache health and passthrough (rows 6.6, 6.3), disk full (2.8) and quota (6.1) through the FileReader.

A real catalog, a real CasStore (wrapped by FaultyCasStore for disk faults), a real local origin; the
health state machine (normal / unstable / down) is driven by its own probes, never by sleeps.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from musicfs.cache.cas import CasStore
from musicfs.cache.health import DOWN, NORMAL, UNSTABLE, CacheHealth
from musicfs.library.catalog import FileRow
from musicfs.origins.local import LocalOrigin
from musicfs.read.reader import FileReader
from musicfs_test_utils import disks
from musicfs_test_utils.eventually import eventually_async
from musicfs_test_utils.reader_rig import ReaderRig, pattern_bytes, read_range

CHUNK = 16 * 1024
TO_UNSTABLE = r"musicfs\.cache\.health: cache: normal -> unstable \(.*\): reads go straight to the origins"
TO_DOWN = r"musicfs\.cache\.health: cache: unstable -> down \(2 probes failed in a row"


pattern = functools.partial(pattern_bytes, step=7, salt=31, period=251)


async def read_all(reader: FileReader, row: FileRow) -> bytes:
    return await read_range(reader, row, 0, row.size + 10)  # a little past EOF, as a player may


def make_rig(tmp_path: Path, cache_dir: Path, quota: int = 1 << 30, **store_kw) -> ReaderRig:
    """rig.cas is a FaultyCasStore over rig.store; memory_cache=0: every read reaches the disk cache."""
    files = {"a.flac": pattern(1, 3 * CHUNK + 100), "b.flac": pattern(2, 2 * CHUNK), "c.flac": pattern(3, CHUNK // 2)}
    return ReaderRig.build(tmp_path, files, cache_dir=cache_dir, cas_quota=quota, cas_kwargs=store_kw, faulty_cas=True,
                           chunk_size=CHUNK, memory_cache=0, read_timeout=20.0,
                           health=dict(op_timeout=0.5, probe_timeout=0.5, retry_interval=0.05, down_interval=0.05,
                                       probe_interval=0.05, down_after=2))


@pytest.fixture
def rig(tmp_path):
    made = make_rig(tmp_path, tmp_path / "cache")
    yield made
    made.close()


# -- a failing cache disk: passthrough, probes, recovery (6.6) ---------------------------------------------
@pytest.mark.resilience("6.6")
@pytest.mark.expected_log(TO_UNSTABLE, TO_DOWN)
async def test_a_failing_cache_disk_is_bypassed_and_re_enabled_by_a_probe(rig):
    reader = rig.reader
    assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]
    cached = rig.store.usage()
    assert cached[1] == len(rig.chunks("a.flac"))
    fetched = rig.origin.calls["read"]

    rig.cas.inject_eio = True  # every read, write and probe of the cache disk now fails with EIO
    assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]
    assert reader.cache.health.state == UNSTABLE and "EIO" in reader.cache.health.reason
    assert rig.origin.calls["read"] == fetched + 4  # every chunk came from the origin
    assert reader.cache.statistics().passthrough_reads == 4
    assert await read_all(reader, rig.rows["b.flac"]) == rig.files["b.flac"]  # uncached: passthrough too
    assert rig.store.usage() == cached  # nothing was stored while the cache is bypassed

    assert not await reader.cache.health.probe_once()
    assert reader.cache.health.state == UNSTABLE
    assert not await reader.cache.health.probe_once()
    assert reader.cache.health.state == DOWN  # two failed probes in a row
    assert await read_all(reader, rig.rows["c.flac"]) == rig.files["c.flac"]

    rig.cas.inject_eio = False  # the disk is healthy again
    assert await reader.cache.health.probe_once()
    assert reader.cache.health.state == NORMAL
    hits = reader.statistics().cache_hits
    assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]
    assert reader.statistics().cache_hits == hits + 4  # served from the cache again
    assert await read_all(reader, rig.rows["b.flac"]) == rig.files["b.flac"]
    assert all(rig.store.has(d) for d in rig.chunks("b.flac"))  # and it stores again


@pytest.mark.resilience("6.6")
@pytest.mark.expected_log(TO_UNSTABLE, TO_DOWN)
async def test_a_read_only_cache_disk_is_bypassed_until_the_health_task_sees_it_writable(rig):
    reader = rig.reader
    rig.cas.inject_readonly = True
    assert await read_all(reader, rig.rows["b.flac"]) == rig.files["b.flac"]
    assert reader.cache.health.state == UNSTABLE and "Read-only file system" in reader.cache.health.reason
    assert rig.store.usage() == (0, 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.cache.run)  # what the daemon runs: probes every retry_interval
        await eventually_async(lambda: reader.cache.health.probes >= 3, 10, "three probes")
        assert reader.cache.health.state != NORMAL  # still read-only: never re-enabled
        rig.cas.inject_readonly = False
        with trio.fail_after(5):
            await reader.cache.health.wait_for(NORMAL)
        nursery.cancel_scope.cancel()
    assert await read_all(reader, rig.rows["b.flac"]) == rig.files["b.flac"]
    assert rig.store.usage()[1] == len(rig.chunks("b.flac"))


@pytest.mark.resilience("6.6")
@pytest.mark.expected_log(r"musicfs\.cache\.health: cache: normal -> unstable \(cache: get did not finish within 0.5s\)",
                          TO_DOWN)
async def test_a_hung_cache_disk_costs_one_timeout_then_reads_bypass_it(rig):
    reader = rig.reader
    assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]
    rig.cas.hang = gate = threading.Event()
    try:
        assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]
        assert rig.cas.hung == 1  # one chunk waited for op_timeout; the others never touched the cache
        assert reader.cache.health.state == UNSTABLE
        assert not await reader.cache.health.probe_once()  # the probe hangs too: bounded by probe_timeout
        assert "did not finish within" in reader.cache.health.reason
        assert not await reader.cache.health.probe_once()  # never a second probe thread on a hung disk
        assert reader.cache.health.reason.endswith("the previous probe is still hanging") and rig.cas.hung == 2
        assert reader.cache.health.state == DOWN
    finally:
        gate.set()
    rig.cas.hang = None
    await eventually_async(lambda: not reader.cache.health._probe_busy, 10, "the hung probe to return")
    assert await reader.cache.health.probe_once() and reader.cache.health.state == NORMAL


# -- the cache index dies at runtime (6.3) ---------------------------------------------------------------
@pytest.mark.resilience("6.3")
@pytest.mark.expected_log(r"musicfs\.cache\.health: cache: normal -> down \(the cache index failed",
                          r"musicfs\.cache\.cas: cache: index .*index\.db failed \(.*\); moved to .*index\.db\.damaged-")
async def test_a_cache_index_that_dies_at_runtime_means_passthrough_and_a_background_rebuild(rig):
    reader = rig.reader
    assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]
    rig.cas.corrupt_index()  # its connection is gone and its file is garbage
    garbage = Path(rig.store.index_path).read_bytes()

    assert await read_all(reader, rig.rows["b.flac"]) == rig.files["b.flac"]  # the index insert fails
    assert reader.cache.health.state == DOWN and "cache index failed" in reader.cache.health.reason
    fetched = rig.origin.calls["read"]
    assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]  # cached, but the cache is down
    assert rig.origin.calls["read"] == fetched + 4

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.cache.run)  # the daemon's cache task: rebuilds at once
        with trio.fail_after(10):
            await reader.cache.health.wait_for(NORMAL)
        nursery.cancel_scope.cancel()
    moved = [p for p in Path(rig.store.root).iterdir() if p.name.startswith("index.db.damaged-")]
    assert len(moved) == 1 and moved[0].read_bytes()[:len(garbage)] == garbage  # kept, never deleted
    report = rig.store.last_rebuild
    # every chunk file came back, verified: a.flac's four and the first chunk of b.flac, whose file was
    # written before its index insert failed
    assert report.chunks == 5 and report.quarantined == []
    assert all(rig.store.has(d) for d in rig.chunks("a.flac"))
    fetched, hits = rig.origin.calls["read"], reader.statistics().cache_hits
    assert await read_all(reader, rig.rows["a.flac"]) == rig.files["a.flac"]
    assert rig.origin.calls["read"] == fetched and reader.statistics().cache_hits == hits + 4


# -- disk full (2.8) and quota (6.1) -------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    if not disks.can_mount():
        pytest.skip("needs root and mount(8)")
    with disks.tmpfs(tmp_path / "disk", "160k") as path:
        yield path


async def test_a_locked_catalog_delays_the_manifest_write_but_never_marks_the_cache_disk_unstable(rig, monkeypatch):
    # The chunk goes to the cache within op_timeout; its manifest entry is the catalog's business, outside it.
    reader, row = rig.reader, rig.rows["b.flac"]
    writes, waited = threading.Event(), []
    original = rig.catalog.set_manifest_chunk

    def set_manifest_chunk(*args):
        writes.set()
        original(*args)  # blocks on the other connection's write lock
        waited.append(True)

    monkeypatch.setattr(rig.catalog, "set_manifest_chunk", set_manifest_chunk)
    locker = sqlite3.connect(rig.base / "catalog.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another writer holds the catalog
    try:
        async with trio.open_nursery() as nursery:
            got = []

            async def read():
                got.append(await read_all(reader, row))

            nursery.start_soon(read)
            with trio.fail_after(5):
                await trio.to_thread.run_sync(writes.wait)
            await trio.sleep(3 * rig.health.op_timeout)  # the lock is held well past the cache's timeout
            still_waiting = not waited  # the manifest write is blocked on the lock right now
            locker.execute("ROLLBACK")
    finally:
        locker.close()
    assert got == [rig.files["b.flac"]]
    assert still_waiting and waited  # it waited out the lock, past the cache's timeout, then wrote
    assert reader.cache.statistics().state == NORMAL and rig.health.transitions == 0
    assert len(rig.manifest(row)) == len(rig.chunks("b.flac"))  # recorded once the lock was gone


@pytest.mark.resilience("2.8")
@pytest.mark.expected_log(r"musicfs\.cache\.chunk_cache: cache: cannot store a chunk of .* \(cache: (disk full|index store is full)"
                          r".*\); serving it uncached")
async def test_a_real_full_disk_evicts_and_retries_else_serves_uncached(tmp_path, tiny_disk):
    # a 160 KiB tmpfs under a 1 GiB quota: the disk fills long before the quota does
    rig = make_rig(tmp_path, tiny_disk / "cache")
    try:
        reader = rig.reader
        names = ["a.flac", "b.flac", "c.flac"]
        for _ in range(3):  # more than the disk holds, again and again: ENOSPC evicts and retries
            for name in names:
                assert await read_all(reader, rig.rows[name]) == rig.files[name]
        used, total = disks.usage(tiny_disk)
        assert used <= total
        assert rig.store.usage()[0] <= total
        assert reader.cache.health.state == NORMAL  # a full disk is not a broken one
        assert os.listdir(tiny_disk / "cache" / "tmp") == []  # no half-written chunk left behind

        # with every cached chunk pinned by open files nothing can be evicted: reads still succeed
        handles = [await reader.open(rig.rows[n]) for n in names]
        big = FileRow(path="big.flac", kind="track", size=12 * CHUNK, mtime_ns=0)
        data = pattern(9, big.size)
        (rig.root / "big.flac").write_bytes(data)
        st = LocalOrigin(rig.root).stat("big.flac")
        rig.catalog.upsert_files([FileRow(path="big.flac", kind="track", size=st.size, mtime_ns=st.mtime_ns,
                                          etag=st.etag)])
        big = next(r for r in rig.catalog.files() if r.path == "big.flac")
        for fh, name in zip(handles, names):
            assert await reader.read(fh, 0, rig.rows[name].size) == rig.files[name]
        uncached = reader.cache.statistics().uncached_reads
        fh = await reader.open(big)
        assert await reader.read(fh, 0, big.size) == data
        reader.release(fh)
        assert reader.cache.statistics().uncached_reads > uncached  # the disk could not take them all: served uncached
        for h in handles:
            reader.release(h)
        # and once files close, the space is usable again
        assert await read_all(reader, big) == data
    finally:
        rig.close()


@pytest.mark.resilience("6.1")
async def test_reads_keep_the_cache_under_its_quota_and_never_evict_open_files(tmp_path):
    quota = 5 * CHUNK
    rig = make_rig(tmp_path, tmp_path / "cache", quota=quota, high=0.9, low=0.5)
    try:
        reader = rig.reader
        fh_a = await reader.open(rig.rows["a.flac"])  # stays open: its 4 chunks are pinned
        assert await reader.read(fh_a, 0, rig.rows["a.flac"].size) == rig.files["a.flac"]
        for _ in range(2):
            for name in ("b.flac", "c.flac"):
                assert await read_all(reader, rig.rows[name]) == rig.files[name]
                assert all(rig.store.has(d) for d in rig.chunks("a.flac")), "an open file's chunk was evicted"
        reader.release(fh_a)
        for name in ("b.flac", "c.flac", "b.flac"):
            assert await read_all(reader, rig.rows[name]) == rig.files[name]
            assert rig.store.usage()[0] <= quota * 0.9
        assert not all(rig.store.has(d) for d in rig.chunks("a.flac"))  # closed: evictable, least recent first
    finally:
        rig.close()


@pytest.mark.expected_log(r"musicfs\.cache\.cas: cache: cannot open .*cache \(.*\); reads go straight to the origins")
def test_a_cache_that_cannot_be_opened_starts_down_and_a_probe_opens_it(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_bytes(b"a file where the cache folder should be")
    store = CasStore(str(blocker), 1 << 20)
    assert not store.available and store.open_error
    health = CacheHealth(store)
    assert health.state == DOWN and "cannot open the cache" in health.reason
    blocker.unlink()
    store.probe()  # the next probe opens it
    assert store.available
    digest = store.put(b"x" * 100)
    assert store.get(digest) == b"x" * 100
    store.close()
