"""The chunk store's eviction (cache/eviction.py) by exact figures: where the high watermark starts an eviction
and the low one ends it, the trim after a restart with a smaller quota (the quarantine counted), a full disk's
slice, protected chunks after every other one, the LRU loaded after a clean start merged with what this run
found, and pins counted."""

from __future__ import annotations

import os
import sqlite3

import pytest

from musicfs.cache.eviction import RefCounts
from musicfs.shared.errors import (
    CacheFull,
    CacheUnavailable,
    CasIndexError,
    ChunkCorrupt,
)
from musicfs_test_utils.cas_damage import blob, corrupt, drop_index_row
from musicfs_test_utils.fixtures import setup_test_cas


def fill(store, n: int, size: int = 1000, first: int = 0) -> list[str]:
    return [store.put(blob(first + i, size)) for i in range(n)]


def restart(store, quota: int):
    """The store closed and opened again, as a restart with `quota` opens it."""
    store.close()
    return setup_test_cas(store.root, quota)


def test_the_high_watermark_starts_an_eviction_down_to_the_low_one(tmp_path):
    store = setup_test_cas(tmp_path, 10_000)  # high 9,500 bytes, low 8,500
    digests = fill(store, 13, size=700)  # 9,100 bytes
    assert store.usage() == (9_100, 13)
    newest = store.put(blob(99, 700))  # 9,800 would pass the high watermark: down to 8,500 - 700 first
    assert store.usage() == (8_400, 12) and store.has(newest)
    assert [d for d in digests if not store.has(d)] == digests[:2]  # the least recently used went


def test_a_chunk_as_big_as_the_quota_fits(tmp_path):
    store = setup_test_cas(tmp_path, 1000)
    fill(store, 1, size=400)
    digest = store.put(blob(5))
    assert store.usage() == (1000, 1) and store.has(digest)
    with pytest.raises(CacheFull):
        store.put(blob(6, 1001))


@pytest.mark.expected_log(r"cache: chunk \w{12} failed verification; moved to")
def test_a_restart_with_a_smaller_quota_trims_to_the_low_watermark_less_the_quarantine(tmp_path):
    store = setup_test_cas(tmp_path)
    digests = fill(store, 12)
    bad = digests[0]
    corrupt(store, bad)
    smaller = restart(store, 10_000)  # the bad chunk is found and quarantined at its first read
    with pytest.raises(ChunkCorrupt):
        smaller.get(bad)
    assert smaller.quarantine_usage() == (1000, 1) and smaller.usage() == (11_000, 11)
    assert smaller.trim_over_quota() == 4000  # down to 8,500 - 1,000 kept in quarantine
    assert smaller.usage() == (7000, 7)
    assert smaller.trim_over_quota() == 0
    smaller.close()


def test_no_trim_at_exactly_the_quota(tmp_path):
    store = setup_test_cas(tmp_path)
    fill(store, 10)
    same = restart(store, 10_000)
    assert same.trim_over_quota() == 0 and same.usage() == (10_000, 10)
    same.close()


def test_a_full_disk_gives_up_a_slice_of_what_is_cached(tmp_path):
    store = setup_test_cas(tmp_path, 1_000_000)
    fill(store, 10)
    assert store._evict_for_disk(1000) == 3000  # min(850,000, 8,500) - 1,000 = 7,500 kept at most
    assert store.usage() == (7000, 7)
    assert store._evict_for_disk(50_000) == 7000  # nothing to keep: everything unpinned goes
    assert store.usage() == (0, 0)


def test_protected_chunks_go_only_once_every_other_one_is_gone(tmp_path):
    store = setup_test_cas(tmp_path)
    a, c, b, d = fill(store, 4)  # LRU order: a, c, b, d
    store.protection.hold(c)
    store.protection.hold(d)
    assert store.evict_to(1000) == 3000
    assert [store.has(x) for x in (a, b, c, d)] == [False, False, False, True]


def test_the_lru_loaded_after_a_clean_start_keeps_what_this_run_found_counted_once(tmp_path):
    store = setup_test_cas(tmp_path)
    known, orphan, lying = fill(store, 3)
    store.close()
    drop_index_row(tmp_path, orphan)  # a file without a row
    db = sqlite3.connect(os.path.join(tmp_path, "index.db"))
    with db:
        db.execute("UPDATE chunks SET size = 999 WHERE hash = ?", (lying,))  # a row that lies about the size
    db.close()
    again = setup_test_cas(tmp_path, reconcile_later=True)
    for digest in (known, orphan, lying):
        assert again.lookup(digest) is not None  # found by their files before the load
    again.load_lru()
    assert again.usage() == (3000, 3)  # each once, by the size of its file
    again.close()


def test_a_release_past_the_holds_leaves_nothing_held():
    counts = RefCounts()
    counts.hold("a")
    counts.hold("a")
    counts.release("a")
    assert "a" in counts and len(counts) == 1
    counts.release("a")
    counts.release("a")  # one too many: still not held, not held forever either
    assert "a" not in counts and counts.held() == []
    counts.hold("a")
    counts.release("a")
    assert "a" not in counts


@pytest.mark.expected_log(r"cache: chunk \w{12} failed verification; moved to")
def test_the_quarantine_alone_can_put_a_restarted_cache_over_its_quota(tmp_path):
    store = setup_test_cas(tmp_path)
    small = fill(store, 19, size=500)  # 9,500 bytes
    bad = store.put(blob(50))
    corrupt(store, bad)
    again = restart(store, 10_000)
    with pytest.raises(ChunkCorrupt):
        again.get(bad)
    assert again.usage() == (9_500, 19) and again.quarantine_usage() == (1000, 1)
    assert again.trim_over_quota() == 2000  # 10,500 with the quarantine: down to 8,500 - 1,000
    assert [d for d in small if not again.has(d)] == small[:4]
    again.close()


def test_a_restart_over_its_quota_with_nothing_in_quarantine_is_trimmed(tmp_path):
    store = setup_test_cas(tmp_path)
    fill(store, 11)
    again = restart(store, 10_000)
    assert again.trim_over_quota() == 3000 and again.usage() == (8000, 8)
    again.close()


def test_a_full_disk_over_the_quota_keeps_at_most_the_low_watermark(tmp_path):
    store = setup_test_cas(tmp_path)
    fill(store, 12)
    again = restart(store, 10_000)  # over its quota after a restart, not trimmed yet
    assert again._evict_for_disk(1000) == 5000  # min(8,500, 10,200) - 1,000 = 7,500 kept at most
    assert again.usage() == (7000, 7)
    again.close()


def test_a_restart_within_its_quota_is_not_trimmed_even_above_the_low_watermark(tmp_path):
    store = setup_test_cas(tmp_path)
    fill(store, 9)
    again = restart(store, 10_000)  # 9,000 bytes: over the low watermark, within the quota
    assert again.trim_over_quota() == 0 and again.usage() == (9000, 9)
    again.close()


@pytest.mark.expected_log(r"cache: chunk \w{12} failed verification; moved to")
def test_the_quarantine_is_added_to_what_is_held_not_merged_with_it(tmp_path):
    store = setup_test_cas(tmp_path)
    kept = fill(store, 8) + [store.put(blob(60, 1008))]  # 9,008 bytes
    bad = store.put(blob(61))
    corrupt(store, bad)
    again = restart(store, 10_000)
    with pytest.raises(ChunkCorrupt):
        again.get(bad)
    assert again.usage() == (9008, 9) and again.quarantine_usage() == (1000, 1)  # 10,008 in all: over
    assert again.trim_over_quota() == 2000 and [d for d in kept if not again.has(d)] == kept[:2]
    again.close()


def test_an_index_that_cannot_be_read_when_the_lru_loads_is_an_index_failure(tmp_path):
    store = setup_test_cas(tmp_path)
    store.put(blob(70))
    store.close()
    again = setup_test_cas(tmp_path, reconcile_later=True)
    real = again._db

    class Broken:
        def execute(self, *args):
            raise sqlite3.DatabaseError("database disk image is malformed")

    again._db = Broken()
    with pytest.raises(CasIndexError, match="index store .*index.db failed: database disk image is malformed"):
        again.load_lru()
    assert not again.loaded
    again._db = None
    again.open_error = "gone"
    with pytest.raises(CacheUnavailable, match=r"unavailable \(gone\)"):
        again.load_lru()
    again._db = real
    again.load_lru()
    assert again.loaded and again.usage() == (1000, 1)
    again.close()


@pytest.mark.expected_log(r"cache: chunk \w{12} failed verification; moved to")
def test_a_restart_within_its_quota_with_a_quarantine_is_not_trimmed(tmp_path):
    store = setup_test_cas(tmp_path)
    fill(store, 8)
    bad = store.put(blob(80))
    corrupt(store, bad)
    again = restart(store, 10_000)
    with pytest.raises(ChunkCorrupt):
        again.get(bad)
    assert again.usage() == (8000, 8) and again.quarantine_usage() == (1000, 1)  # 9,000 in all: within
    assert again.trim_over_quota() == 0 and again.usage() == (8000, 8)
    again.close()
