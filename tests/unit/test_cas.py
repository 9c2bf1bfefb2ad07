"""CasStore: verified round trips, quarantine, quota eviction (LRU, protected chunks last, pins), restart, orphans,
ENOSPC."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3

import pytest

from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.shared.errors import CacheFull, ChunkCorrupt, ChunkMissing
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.cas_damage import (
    SIZE,
    blob,
    chunk_file,
    damage_orphan_and_stray,
    drop_index_row,
    quarantined,
)
from musicfs_test_utils.faulty_cas import FaultyCasStore
from musicfs_test_utils.fixtures import setup_test_cas


def test_put_get_round_trip(tmp_path):
    cas = setup_test_cas(tmp_path)
    data = blob(1)
    digest = cas.put(data)
    assert digest == hashlib.sha256(data).hexdigest() == chunk_hash(data)
    assert cas.has(digest)
    assert cas.get(digest) == data
    with open(chunk_file(cas, digest), "rb") as fh:
        assert fh.read() == data
    assert cas.usage() == (len(data), 1)
    assert cas.put(data) == digest  # idempotent: stored and counted once
    assert cas.usage() == (len(data), 1)
    assert os.listdir(os.path.join(cas.root, "tmp")) == []
    cas.close()


def test_empty_chunk(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(b"")
    assert cas.get(digest) == b""
    cas.close()


@pytest.mark.expected_log(r"musicfs.cache.cas: cache: chunk \w+ failed verification; moved to .*quarantine")
def test_corrupt_chunk_is_quarantined_not_deleted(tmp_path):
    cas = setup_test_cas(tmp_path)
    good, other = blob(1), blob(2)
    digest, other_digest = cas.put(good), cas.put(other)
    path = chunk_file(cas, digest)
    bad = bytearray(good)
    bad[SIZE // 2] ^= 0x01  # one flipped bit
    with open(path, "wb") as fh:
        fh.write(bad)
    with pytest.raises(ChunkCorrupt):
        cas.get(digest)
    assert not os.path.exists(path)
    moved = quarantined(cas)
    assert len(moved) == 1 and moved[0].startswith(digest)
    with open(os.path.join(cas.root, "quarantine", moved[0]), "rb") as fh:
        assert fh.read() == bytes(bad)  # kept for inspection, byte for byte
    assert not cas.has(digest)
    assert cas.usage() == (len(other), 1)
    with pytest.raises(ChunkMissing):  # never served again
        cas.get(digest)
    assert cas.get(other_digest) == other
    # fetching it again from the origin stores it afresh
    assert cas.put(good) == digest and cas.get(digest) == good
    cas.close()


@pytest.mark.expected_log(r"musicfs.cache.cas: cache: chunk \w+ failed verification")
def test_truncated_chunk_is_corrupt(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(3))
    os.truncate(chunk_file(cas, digest), 10)
    with pytest.raises(ChunkCorrupt):
        cas.get(digest)
    cas.close()


def test_missing_chunk(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(4))
    os.unlink(chunk_file(cas, digest))
    with pytest.raises(ChunkMissing):
        cas.get(digest)
    assert not cas.has(digest) and cas.usage() == (0, 0)
    with pytest.raises(ChunkMissing):
        cas.get(chunk_hash(b"never stored"))
    cas.close()


# -- quota ------------------------------------------------------------------------
@pytest.mark.resilience("6.1")
def test_eviction_is_lru_from_high_to_low_watermark(tmp_path):
    quota, high, low = 10 * SIZE, 0.95, 0.85
    cas = setup_test_cas(tmp_path, quota=quota, high=high, low=low)
    digests = [cas.put(blob(i)) for i in range(9)]  # 9000 bytes: below the high mark (9500)
    assert cas.usage() == (9 * SIZE, 9)
    cas.get(digests[0])  # the oldest put becomes the most recently read
    newest = cas.put(blob(100))  # 10000 > high: evict down to low, making room for the newcomer
    used, count = cas.usage()
    assert used <= quota * low
    assert used == count * SIZE
    survivors = {d for d in digests if cas.has(d)}
    gone = [d for d in digests if not cas.has(d)]
    assert digests[0] in survivors and cas.has(newest)
    # exactly the least recently used ones went, in order, and no more than needed
    lru_order = digests[1:] + digests[:1]
    assert gone == lru_order[: len(gone)]
    assert (9 - len(gone) + 1) * SIZE <= quota * low < (9 - len(gone) + 2) * SIZE
    for d in gone:
        assert not os.path.exists(chunk_file(cas, d))
    for d in survivors:
        assert os.path.exists(chunk_file(cas, d))
    cas.close()


@pytest.mark.resilience("6.1")
def test_pinned_chunks_are_never_evicted(tmp_path):
    quota = 10 * SIZE
    cas = setup_test_cas(tmp_path, quota=quota)
    pinned = [cas.put(blob(i)) for i in range(3)]  # the three oldest
    for d in pinned:
        cas.pins.hold(d)
    cas.pins.hold(pinned[0])  # pinned twice: one unpin is not enough
    for i in range(3, 16):  # more than the quota's worth of new chunks
        cas.put(blob(i))
    assert all(cas.has(d) for d in pinned)
    assert cas.usage()[0] <= quota
    assert cas.evict_to(0) > 0
    assert {d for d in pinned if cas.has(d)} == set(pinned)
    assert cas.usage() == (3 * SIZE, 3)
    cas.pins.release(pinned[0])
    cas.pins.release(pinned[1])
    cas.evict_to(0)
    assert [cas.has(d) for d in pinned] == [True, False, True]
    cas.close()


@pytest.mark.resilience("6.1")
def test_protected_chunks_go_after_every_unprotected_one_in_lru_order_and_pinned_never(tmp_path):
    cas = setup_test_cas(tmp_path, quota=100 * SIZE)
    d = [cas.put(blob(i)) for i in range(8)]  # LRU order: d0 oldest .. d7 newest
    for i in (0, 2, 5):
        cas.protection.hold(d[i])
    cas.protection.hold(d[0])  # counted: one unprotect is not enough
    cas.pins.hold(d[1])
    cas.protection.hold(d[1])  # pinned and protected: pinned wins
    cas.get(d[0])  # read: now the most recently used protected chunk
    assert cas.protected == 4 and cas.pinned == 1
    # unprotected, unpinned: d3, d4, d6, d7 (LRU order) go before any protected one, however old
    assert cas.evict_to(6 * SIZE) == 2 * SIZE
    assert [cas.has(x) for x in d] == [True, True, True, False, False, True, True, True]
    assert cas.evict_to(4 * SIZE) == 2 * SIZE
    assert [cas.has(x) for x in d] == [True, True, True, False, False, True, False, False]
    # then the protected ones, least recently used first: d2, d5, then d0 (read last); d1 never (pinned)
    assert cas.evict_to(3 * SIZE) == SIZE and not cas.has(d[2]) and cas.has(d[5]) and cas.has(d[0])
    assert cas.protected == 3  # an evicted protected chunk is not counted
    assert cas.evict_to(0) == 2 * SIZE
    assert [cas.has(x) for x in d] == [False, True, False, False, False, False, False, False]
    assert cas.protected == 1 and cas.usage() == (SIZE, 1)
    cas.close()


def test_a_put_past_the_high_watermark_keeps_protected_chunks_while_others_can_go(tmp_path):
    quota = 10 * SIZE
    cas = setup_test_cas(tmp_path, quota=quota)
    d = [cas.put(blob(i)) for i in range(9)]
    cas.protection.hold(d[0])
    cas.protection.hold(d[1])  # the two oldest: plain LRU would evict them first
    cas.put(blob(100))  # past the high mark: down to the low one
    assert cas.has(d[0]) and cas.has(d[1])
    assert not cas.has(d[2]) and not cas.has(d[3])
    cas.protection.release(d[0])
    cas.protection.release(d[1])
    assert cas.protected == 0
    for i in range(101, 103):
        cas.put(blob(i))  # ordinary again: the oldest go first
    assert not cas.has(d[0]) and not cas.has(d[1])
    cas.close()


def test_nothing_fits_when_everything_is_pinned(tmp_path):
    cas = setup_test_cas(tmp_path, quota=4 * SIZE)
    for i in range(3):
        cas.pins.hold(cas.put(blob(i)))
    digest = cas.put(blob(99))  # over the high mark, nothing evictable: still stored (quota is soft)
    assert cas.get(digest) == blob(99)
    cas.close()


def test_chunk_larger_than_the_quota_is_refused_without_flushing_the_cache(tmp_path):
    cas = setup_test_cas(tmp_path, quota=10 * SIZE)
    kept = [cas.put(blob(i)) for i in range(5)]
    with pytest.raises(CacheFull):
        cas.put(blob(7, 11 * SIZE))
    assert all(cas.has(d) for d in kept), "a chunk that can never fit must not evict the cache"
    assert cas.usage() == (5 * SIZE, 5)
    cas.close()


# -- restart, orphans, leftovers -----------------------------------------------------
def test_restart_keeps_chunks_and_lru_order(tmp_path):
    quota = 10 * SIZE
    cas = setup_test_cas(tmp_path, quota=quota)
    digests = [cas.put(blob(i)) for i in range(9)]
    cas.get(digests[0])
    cas.close()  # flushes access times
    again = setup_test_cas(tmp_path, quota=quota)
    assert again.usage() == (9 * SIZE, 9)
    assert all(again.has(d) for d in digests)
    assert again.get(digests[4]) == blob(4)
    again.put(blob(100))  # triggers eviction: the read before the restart still counts
    assert again.has(digests[0]) and not again.has(digests[1])
    again.close()


def test_index_rows_without_files_are_dropped_at_open(tmp_path):
    cas = setup_test_cas(tmp_path)
    a, b = cas.put(blob(1)), cas.put(blob(2))
    cas.close()
    os.unlink(chunk_file(cas, a))
    again = setup_test_cas(tmp_path)
    assert not again.has(a) and again.has(b)
    assert again.usage() == (SIZE, 1)
    again.close()


def test_valid_orphan_chunk_is_adopted(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(5))
    cas.close()
    drop_index_row(tmp_path, digest)  # a crash between rename and index insert
    again = setup_test_cas(tmp_path)
    assert again.has(digest)
    assert again.usage() == (SIZE, 1)
    assert again.get(digest) == blob(5)
    again.close()
    db = sqlite3.connect(os.path.join(tmp_path, "index.db"))
    assert db.execute("SELECT size FROM chunks WHERE hash = ?", (digest,)).fetchall() == [(SIZE,)]
    db.close()


@pytest.mark.expected_log(r"musicfs.cache.cas: cache: removed orphan chunk \w+ whose bytes do not match")
def test_orphan_with_wrong_bytes_is_removed(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(6))
    keep = cas.put(blob(7))
    cas.close()
    stray = damage_orphan_and_stray(cas, digest)  # and one stray file that never was in any index
    again = setup_test_cas(tmp_path)
    assert not again.has(digest) and not again.has(stray)
    assert not os.path.exists(chunk_file(cas, digest)) and not os.path.exists(chunk_file(cas, stray))
    assert again.has(keep) and again.usage() == (SIZE, 1)
    again.close()


def test_tmp_leftovers_are_removed_at_open(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(8))
    cas.close()
    tmp = os.path.join(tmp_path, "tmp")
    for name in (f"{chunk_hash(b'half')}.1234", "junk"):
        with open(os.path.join(tmp, name), "wb") as fh:
            fh.write(b"half written")
    again = setup_test_cas(tmp_path)
    assert os.listdir(tmp) == []
    assert again.usage() == (SIZE, 1) and again.get(digest) == blob(8)
    again.close()


# -- disk full ------------------------------------------------------------------------
def test_faulty_cas_enospc_raises_cache_full(tmp_path):
    cas = FaultyCasStore(setup_test_cas(tmp_path))
    kept = cas.put(blob(1))
    cas.inject_enospc = True
    with pytest.raises(CacheFull) as err:
        cas.put(blob(2))
    assert err.value.errno == errno.ENOSPC
    assert cas.usage() == (SIZE, 1) and cas.get(kept) == blob(1)
    cas.inject_enospc = False
    assert cas.get(cas.put(blob(2))) == blob(2)
    cas.close()


def _enospc_writes(monkeypatch, cas: CasStore, failures: int) -> list[int]:
    real = cas._write_file
    attempts = []

    def write(digest, data):
        attempts.append(len(data))
        if len(attempts) <= failures:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(digest, data)

    monkeypatch.setattr(cas, "_write_file", write)
    return attempts


@pytest.mark.resilience("2.8")
def test_real_enospc_evicts_and_retries_once(tmp_path, monkeypatch):
    quota, low = 10 * SIZE, 0.85
    cas = setup_test_cas(tmp_path, quota=quota, low=low)
    old = [cas.put(blob(i)) for i in range(8)]  # 8000 + 1000 incoming: under the high mark, no eviction yet
    attempts = _enospc_writes(monkeypatch, cas, failures=1)
    digest = cas.put(blob(50))
    assert len(attempts) == 2  # failed once, evicted, retried
    assert cas.get(digest) == blob(50)
    gone = [d for d in old if not cas.has(d)]
    assert gone and gone == old[: len(gone)]  # room was made on disk, oldest first
    assert cas.usage()[0] <= quota * low
    cas.close()


@pytest.mark.resilience("2.8")
def test_real_enospc_twice_is_cache_full(tmp_path, monkeypatch):
    cas = setup_test_cas(tmp_path, quota=10 * SIZE)
    _enospc_writes(monkeypatch, cas, failures=2)
    with pytest.raises(CacheFull):
        cas.put(blob(51))
    assert not cas.has(chunk_hash(blob(51)))
    assert os.listdir(os.path.join(tmp_path, "tmp")) == []
    cas.close()


# -- quarantine bounds ----------------------------------------------------------------------------
def _corrupt_and_read(cas: CasStore, i: int) -> str:
    """Store blob(i), damage its file, read it: the store quarantines it. Returns its digest."""
    digest = cas.put(blob(i))
    with open(chunk_file(cas, digest), "r+b") as fh:
        fh.write(b"\0")
    with pytest.raises(ChunkCorrupt):
        cas.get(digest)
    return digest


PRUNED = r"musicfs.cache.cas: cache: quarantine .*: deleted the \d+ oldest files"


@pytest.mark.expected_log(r"failed verification; moved to .*quarantine")
def test_quarantine_keeps_only_the_newest_files(tmp_path):
    cas = setup_test_cas(tmp_path, quarantine_files=3)
    with assert_logs(PRUNED, count=4, level=logging.INFO) as lines:  # one line per prune, each naming what went
        digests = [_corrupt_and_read(cas, i) for i in range(7)]
    kept = sorted(name.split(".")[0] for name in quarantined(cas))
    assert kept == sorted(digests[-3:])
    assert cas.quarantine_usage() == (3 * SIZE, 3)
    assert all("deleted the 1 oldest files (1000 bytes); keeping the newest 3 (3000 bytes)" in line for line in lines)
    cas.close()


@pytest.mark.expected_log(r"failed verification; moved to .*quarantine")
def test_quarantine_keeps_at_most_a_tenth_of_the_quota(tmp_path):
    cas = setup_test_cas(tmp_path, quota=25 * SIZE)  # a tenth: 2500 bytes, room for two damaged chunks
    with assert_logs(PRUNED, count=3, level=logging.INFO):
        digests = [_corrupt_and_read(cas, i) for i in range(5)]
    assert sorted(name.split(".")[0] for name in quarantined(cas)) == sorted(digests[-2:])
    assert cas.quarantine_usage() == (2 * SIZE, 2)
    cas.close()


@pytest.mark.expected_log(r"failed verification; moved to .*quarantine")
def test_quarantined_bytes_count_against_the_quota(tmp_path):
    quota = 20 * SIZE
    cas = setup_test_cas(tmp_path, quota=quota)
    _corrupt_and_read(cas, 1000)
    _corrupt_and_read(cas, 1001)
    kept, files = cas.quarantine_usage()
    assert (kept, files) == (2 * SIZE, 2)
    for i in range(40):
        cas.put(blob(i))
        used, _ = cas.usage()
        assert used + kept <= quota * cas.high  # the chunks alone may only fill what quarantine leaves
    assert cas.usage()[0] + kept <= quota
    cas.close()


def test_an_overgrown_quarantine_is_pruned_when_the_store_opens(tmp_path):
    """What a soak left (far more than the bound) is cut back at the next start, newest kept, in one line."""
    root = tmp_path / "cache"
    (root / "quarantine").mkdir(parents=True)
    for i in range(100):
        path = root / "quarantine" / f"{chunk_hash(blob(i))}.{1_700_000_000 + i}"
        path.write_bytes(blob(i))
        os.utime(path, ns=(i * 10**9, (1_700_000_000 + i) * 10**9))
    with assert_logs(PRUNED, count=1, level=logging.INFO) as lines:
        cas = setup_test_cas(root, quota=1 << 20)
    left = sorted(quarantined(cas))
    assert len(left) == 64
    assert left == sorted(f"{chunk_hash(blob(i))}.{1_700_000_000 + i}" for i in range(36, 100))
    assert cas.quarantine_usage() == (64 * SIZE, 64)
    assert lines == [
        f"musicfs.cache.cas: cache: quarantine {root / 'quarantine'}: deleted the 36 oldest files (36000 bytes); keeping the newest 64 "
        f"(64000 bytes) for inspection (at most 64 files, {(1 << 20) // 10} bytes)"]
    cas.close()


@pytest.mark.expected_log(r"failed verification; moved to .*quarantine")
def test_the_cache_snapshot_in_status_shows_the_quarantine(tmp_path):
    from musicfs.cache.chunk_cache import ChunkCache

    cas = setup_test_cas(tmp_path)
    _corrupt_and_read(cas, 1)
    stats = ChunkCache(cas).statistics()
    assert (stats.quarantine_bytes, stats.quarantine_files) == (SIZE, 1)
    cas.close()
