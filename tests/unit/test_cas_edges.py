"""CasStore at its edges: a store that cannot open (and a probe that opens it), a lost or fresh index, a clean start
reopened after a reconciliation, a chunk file that cannot be read or removed, the index full on a put, a put that
waits for the reconciliation's claim (and gives up), a quarantine that cannot move a chunk, close. Every error names
the chunk by the first 12 hex digits of its hash, and a store forgets nothing it should remember."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
from time import time as wall_time

import pytest

from musicfs.cache import cas as cas_module
from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.shared import points
from musicfs.shared.errors import (
    CacheFull,
    CacheUnavailable,
    CasError,
    TooManyOpenFiles,
)
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.cas_damage import (
    SIZE,
    UNOPENED,
    blob,
    chunk_file,
    corrupt,
    drop_index_row,
    store_over_a_file,
)
from musicfs_test_utils.fixtures import setup_test_cas

REBUILT = r"cache: index .*index\.db rebuilt: 1 chunk files \(1000 bytes\) verified and indexed"
WAIT = 10.0  # a deadline for thread hand-offs, never a timing assertion


def thread(target) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)  # daemon: a put stuck by a bug must not hold pytest open
    t.start()
    return t


# -- opening -----------------------------------------------------------------------------------------------------
@pytest.mark.expected_log(UNOPENED)
def test_a_store_that_cannot_open_is_unavailable_until_a_probe_opens_it(tmp_path):
    root = tmp_path / "cache"
    store = store_over_a_file(root)
    assert not store.available and store.open_error
    assert store.usage() == (0, 0) and store.quarantine_usage() == (0, 0) and store.lru_loads == 0
    assert not store.reconcile_pending
    with pytest.raises(CacheUnavailable) as info:
        store.get(chunk_hash(b"x"))
    assert str(info.value) == f"cache: {root} is unavailable ({store.open_error})"
    with pytest.raises(CacheUnavailable):
        store.put(b"x")
    root.unlink()
    store.probe()  # the disk is back: the probe opens it
    assert store.available and store.open_error == "" and store.lru_loads == 1
    digest = store.put(b"x")
    assert store.get(digest) == b"x" and store.usage() == (1, 1)
    store.close()


@pytest.mark.expected_log(r"cache: cannot open .*\(injected\)\); reads go straight to the origins")
def test_an_error_of_ours_while_opening_leaves_the_store_unavailable_too(tmp_path, monkeypatch):
    def refuse(self):
        raise CasError("cache: the disk said no (injected)")

    monkeypatch.setattr(CasStore, "_prepare_folders", refuse)
    store = CasStore(str(tmp_path / "cache"), 1 << 20)
    assert not store.available and store.open_error == "cache: the disk said no (injected)"


def test_a_new_store_has_nothing_to_rebuild(tmp_path):
    store = setup_test_cas(tmp_path / "cache")
    assert store.last_rebuild is None and store.lru_loads == 1 and store.usage() == (0, 0)
    store.close()


@pytest.mark.expected_log(REBUILT)
def test_a_lost_index_is_rebuilt_and_loaded_at_once_even_on_a_clean_start(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(1))
    store.close()
    os.unlink(tmp_path / "index.db")
    with assert_logs(r"cache: index .*index\.db is missing; rebuilding it from the chunk files", count=1):
        again = setup_test_cas(tmp_path, reconcile_later=True)
    assert again.last_rebuild is not None and not again.reconcile_pending
    assert again.loaded and again.has(digest) and again.usage() == (SIZE, 1)
    again.close()


@pytest.mark.expected_log(REBUILT)
def test_a_damaged_index_is_not_called_missing(tmp_path, caplog):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(2))
    store.close()
    (tmp_path / "index.db").write_bytes(b"this is not a database" * 100)
    with assert_logs(r"cache: index .*index\.db is damaged", count=1):
        again = setup_test_cas(tmp_path)
    assert "is missing" not in caplog.text and again.has(digest)
    again.close()


def test_a_clean_start_reopened_after_its_reconciliation_reconciles_at_once(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(3))
    store.close()
    again = setup_test_cas(tmp_path, reconcile_later=True)
    assert again.reconcile_pending and not again.loaded and again.lru_loads == 0
    again.reconcile()
    assert again.reconciliations == 1 and not again.reconcile_pending
    again.close()  # unavailable; a probe reopens it: the deferral was for the first open only
    again.probe()
    assert again.available and not again.reconcile_pending and again.loaded and again.has(digest)
    again.close()


# -- reading, removing, quarantining ------------------------------------------------------------------------------
def _a_folder_in_place_of(store: CasStore, digest: str) -> None:
    path = chunk_file(store, digest)
    os.unlink(path)
    os.mkdir(path)
    with open(os.path.join(path, "inside"), "wb") as fh:
        fh.write(b"x")


def test_a_chunk_file_that_cannot_be_read_is_a_disk_error_naming_the_chunk(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(4))
    _a_folder_in_place_of(store, digest)
    with pytest.raises(CasError) as info:
        store.get(digest)
    assert str(info.value) == f"cache: cannot read chunk {digest[:12]}: Is a directory"
    store.close()


def test_the_failpoint_fails_a_get_but_never_a_lookup(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(5))
    store.close()
    store = setup_test_cas(tmp_path, reconcile_later=True)  # not loaded: lookup reads the file itself
    monkeypatch.setattr(cas_module, "fail_point", lambda name: "fail" if name == points.CAS_GET else None)
    assert store.lookup(digest) == blob(5)
    with pytest.raises(CasError, match=r"Input/output error \(injected by failpoint\)"):
        store.get(digest)
    store.close()


def test_running_out_of_descriptors_names_the_chunk(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(6))
    path = chunk_file(store, digest)
    real_unlink = os.unlink

    def exhausted(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    def unlink(p, *args, **kwargs):
        if p == path:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_unlink(p, *args, **kwargs)

    monkeypatch.setattr(cas_module, "open", exhausted, raising=False)
    with pytest.raises(TooManyOpenFiles, match=rf"\(EMFILE\) reading chunk {digest[:12]} from the cache;"):
        store.get(digest)
    monkeypatch.undo()
    monkeypatch.setattr(cas_module.os, "unlink", unlink)
    with pytest.raises(TooManyOpenFiles, match=rf"\(EMFILE\) evicting chunk {digest[:12]};"):
        store.evict_to(0)
    monkeypatch.undo()
    store.close()


def test_eviction_of_a_chunk_whose_file_went_away_just_forgets_it_and_a_stuck_one_is_an_error(tmp_path):
    store = setup_test_cas(tmp_path)
    gone, stuck = store.put(blob(7)), store.put(blob(8))
    os.unlink(chunk_file(store, gone))
    _a_folder_in_place_of(store, stuck)
    with pytest.raises(CasError) as info:
        store.evict_to(0)
    assert str(info.value) == f"cache: cannot evict chunk {stuck[:12]}: Is a directory"
    assert not store.has(gone) and store.has(stuck) and store.usage() == (SIZE, 1)
    store.close()


def test_a_bad_chunk_is_logged_by_its_short_name(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(9))
    corrupt(store, digest)
    with assert_logs(rf"cache: chunk {digest[:12]} failed verification; moved to .*quarantine", count=1):
        store.quarantine(digest)
    assert not store.has(digest)
    store.close()


def test_a_bad_chunk_that_cannot_be_moved_aside_is_forgotten_all_the_same(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(10))
    os.rmdir(tmp_path / "quarantine")
    (tmp_path / "quarantine").write_text("a file where the quarantine folder should be")
    with pytest.raises(CasError) as info:
        store.quarantine(digest)
    assert str(info.value) == (f"cache: chunk {digest[:12]} failed verification and cannot be moved to quarantine: "
                               "Not a directory")
    assert not store.has(digest) and store.usage() == (0, 0)
    store.close()


# -- putting ------------------------------------------------------------------------------------------------------
def test_a_full_index_evicts_and_retries_once_then_gives_the_chunk_file_back(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    old = store.put(blob(11))
    real_write = store._write_index
    refusals = []

    def full(times):
        def write(sql, args, many=False):
            if sql.startswith("INSERT") and len(refusals) < times:
                refusals.append(args[0])
                raise CacheFull("cache: index store is full: database or disk is full")
            return real_write(sql, args, many)
        return write

    monkeypatch.setattr(store, "_write_index", full(1))
    digest = store.put(blob(12))
    assert refusals == [digest] and store.has(digest) and not store.has(old)  # room made, then indexed
    refusals.clear()
    monkeypatch.setattr(store, "_write_index", full(2))
    with pytest.raises(CacheFull):
        store.put(blob(13))
    assert refusals == [chunk_hash(blob(13))] * 2 and not os.path.exists(chunk_file(store, chunk_hash(blob(13))))
    store.close()


def test_a_finished_put_leaves_no_mark_and_a_second_put_of_the_digest_keeps_it(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(14))
    assert digest not in store._putting  # nothing kept per chunk ever put
    data = blob(15)
    twin = chunk_hash(data)
    both_in = threading.Barrier(2, timeout=WAIT)
    first_done = threading.Event()
    real_index = store._index_new_chunk
    order = itertools.count(1)
    claims = []

    def index_new_chunk(d, size):
        n = next(order)
        both_in.wait()  # both puts are between their file and their row
        if n == 2:  # the other put has finished: this one is still under way
            assert first_done.wait(WAIT)
            with store._claim(twin) as held:
                claims.append(held)  # the reconciliation may not decide about it yet
        real_index(d, size)

    monkeypatch.setattr(store, "_index_new_chunk", index_new_chunk)
    errors = []

    def put():
        try:
            store.put(data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            first_done.set()

    threads = [thread(put), thread(put)]
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads) and errors == []
    assert claims == [False] and twin not in store._putting and store.get(twin) == data
    store.close()


class Clock:
    """cas.py's `time` with a monotonic clock that reads the given values in turn (then the last one forever)."""

    def __init__(self, *readings: float):
        self.readings = list(readings)

    def monotonic(self) -> float:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]

    time = staticmethod(wall_time)


def test_a_put_gives_up_once_the_claim_outlasts_its_wait(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    data = blob(16)
    digest = chunk_hash(data)
    store._claimed.add(digest)  # the reconciliation holds it and never lets go
    # past the deadline at the first look (small readings: a deadline mixed up with the clock shows)
    monkeypatch.setattr(cas_module, "time", Clock(10.0, 11.0 + cas_module.CLAIM_WAIT))
    outcome = []
    t = thread(lambda: outcome.append(_attempt(store.put, data)))
    t.join(WAIT)
    assert not t.is_alive(), "the put never gave up"
    [error] = outcome
    assert isinstance(error, CasError)
    assert str(error) == f"cache: chunk {digest[:12]} held by the index reconciliation for {cas_module.CLAIM_WAIT:g}s"
    store._claimed.discard(digest)
    store.close()


def test_a_put_near_its_deadline_still_waits_for_the_claim_to_go(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    data = blob(17)
    digest = chunk_hash(data)
    store._claimed.add(digest)
    waiting = threading.Event()

    class Released(threading.Condition):
        def wait(self, timeout=None):
            waiting.set()
            return super().wait(timeout)

    store._released = Released(store._lock)
    # half a second left at the first look: it waits, and the clock does not move on
    monkeypatch.setattr(cas_module, "time", Clock(1000.0, 1000.0 + cas_module.CLAIM_WAIT - 0.5))
    outcome = []
    t = thread(lambda: outcome.append(_attempt(store.put, data)))
    assert waiting.wait(WAIT), "the put did not wait for the claim"
    with store._lock:
        store._claimed.discard(digest)
        store._released.notify_all()
    t.join(WAIT)
    assert not t.is_alive() and outcome == [digest] and store.get(digest) == data
    store.close()


def _attempt(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc


# -- closing ------------------------------------------------------------------------------------------------------
def test_close_survives_access_times_it_cannot_save_and_leaves_the_store_closed(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(18))

    def fail():
        raise CasError("cache: index store cannot be written: disk I/O error")

    monkeypatch.setattr(store, "flush_atimes", fail)
    with assert_logs(r"cache: access times not saved at close: cache: index store cannot be written",
                     count=1, level=logging.WARNING):
        store.close()
    assert not store.available and store.open_error == "closed"
    with pytest.raises(CacheUnavailable, match=r"unavailable \(closed\)"):
        store.get(digest)


# -- lookups around the LRU's load ------------------------------------------------------------------------------
def test_once_loaded_a_lookup_answers_from_the_index_alone(tmp_path):
    store = setup_test_cas(tmp_path)
    known, orphan = store.put(blob(20)), store.put(blob(21))
    store.close()
    drop_index_row(tmp_path, orphan)  # its file stays: the reconciliation's business, not a lookup's
    again = setup_test_cas(tmp_path, reconcile_later=True)
    again.load_lru()
    assert again.lookup(known) == blob(20)
    assert again.lookup(orphan) is None and again.lookup(chunk_hash(b"never")) is None
    assert again.usage() == (SIZE, 1)
    again.close()


def test_a_lookup_before_the_load_is_remembered_with_its_access_time(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(22))
    store.close()
    again = setup_test_cas(tmp_path, reconcile_later=True)
    assert again.lookup(digest) == blob(22)
    assert again.has(digest) and digest in again._touched and again.usage() == (SIZE, 1)
    again.close()


def test_a_chunk_evicted_while_its_lookup_read_it_is_not_brought_back(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(23))
    store.close()
    again = setup_test_cas(tmp_path, reconcile_later=True)
    real_read = again._read_verified

    def read_then_load_and_evict(d, injectable=False):
        data = real_read(d, injectable)
        again.load_lru()  # the cache task loads the LRU meanwhile, and the chunk is evicted
        again.evict_to(0)
        return data

    monkeypatch.setattr(again, "_read_verified", read_then_load_and_evict)
    assert again.lookup(digest) == blob(23)  # served: it was verified
    assert not again.has(digest) and again.usage() == (0, 0) and digest not in again._touched
    again.close()
