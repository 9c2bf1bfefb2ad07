"""A clean start opens the CAS without comparing it with the chunk files; the cache task reconciles after READY.

The scenarios of the start-up check (test_cas.py: rows without files, orphans good and bad, strays;
test_integrity.py: an index that lies about a size) found and fixed by the background reconciliation
instead, a put racing it never lost, and an unclean stop still checking everything before READY.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

from musicfs.cache import cas as cas_module
from musicfs.cache import repair as repair_module
from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.library.storage import Library
from musicfs.shared.config import Config
from musicfs.shared.damage import RunMarker
from musicfs_test_utils.cas_damage import (
    SIZE,
    blob,
    chunk_file,
    damage_orphan_and_stray,
    drop_index_row,
    quarantined,
)
from musicfs_test_utils.fixtures import setup_test_cas

WAIT = 10.0  # a deadline for thread hand-offs, never a timing assertion
BAD_ORPHAN = r"musicfs.cache.cas: cache: removed orphan chunk \w+ whose bytes do not match"
UNCLEAN = r"musicfs\.library\.storage: the previous run \(pid \d+\) did not stop cleanly: running full integrity checks"


def later(root) -> CasStore:
    return setup_test_cas(root, reconcile_later=True)


def index_rows(root) -> dict[str, int]:
    db = sqlite3.connect(os.path.join(root, "index.db"))
    try:
        return dict(db.execute("SELECT hash, size FROM chunks"))
    finally:
        db.close()


@pytest.fixture
def chunk_listings(monkeypatch):
    """Paths under a chunks/ folder that os.listdir / os.scandir were asked for (through the cas module)."""
    seen: list[str] = []
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(path="."):
        if "chunks" in str(path):
            seen.append(str(path))
        return real_listdir(path)

    def scandir(path="."):
        if "chunks" in str(path):
            seen.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(cas_module.os, "listdir", listdir)
    monkeypatch.setattr(cas_module.os, "scandir", scandir)
    return seen


def test_a_clean_start_opens_from_the_index_without_listing_the_chunk_files(tmp_path, chunk_listings):
    cas = setup_test_cas(tmp_path)
    digests = [cas.put(blob(i)) for i in range(20)]
    cas.close()
    chunk_listings.clear()
    again = later(tmp_path)
    try:
        assert chunk_listings == []  # not one chunk folder listed
        assert again.reconcile_pending and again.reconciliations == 0
        again.load_lru()  # the cache task's first step (test_cas_lazy_lru.py: before it)
        assert again.usage() == (20 * SIZE, 20) and all(again.has(d) for d in digests)
        assert again.get(digests[3]) == blob(3)
        report = again.reconcile()
        assert chunk_listings  # the reconciliation is what lists them
        assert not again.reconcile_pending and again.reconciliations == 1
        assert (report.indexed, report.files, report.dropped, report.adopted, report.removed) == (20, 20, 0, 0, 0)
    finally:
        again.close()


def test_the_default_and_an_unclean_start_still_reconcile_in_the_constructor(tmp_path, chunk_listings):
    cas = setup_test_cas(tmp_path)
    cas.put(blob(1))
    cas.close()
    for kwargs in ({}, {"reconcile_later": True, "full_check": True}):
        chunk_listings.clear()
        again = setup_test_cas(tmp_path, **kwargs)
        assert chunk_listings and not again.reconcile_pending
        again.close()


def test_background_reconciliation_drops_rows_whose_files_are_gone(tmp_path):
    cas = setup_test_cas(tmp_path)
    a, b = cas.put(blob(1)), cas.put(blob(2))
    cas.close()
    os.unlink(chunk_file(cas, a))
    again = later(tmp_path)
    try:
        again.load_lru()
        assert again.usage() == (2 * SIZE, 2)  # approximate until reconciled
        report = again.reconcile()
        assert report.dropped == 1
        assert not again.has(a) and again.has(b) and again.usage() == (SIZE, 1)
        assert index_rows(tmp_path) == {b: SIZE}
    finally:
        again.close()


def test_background_reconciliation_adopts_a_valid_orphan(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(5))
    cas.close()
    drop_index_row(tmp_path, digest)  # a crash between rename and index insert
    again = later(tmp_path)
    try:
        assert not again.has(digest) and again.usage() == (0, 0)
        assert again.reconcile().adopted == 1
        assert again.has(digest) and again.usage() == (SIZE, 1)
        assert again.get(digest) == blob(5)
        assert index_rows(tmp_path) == {digest: SIZE}
    finally:
        again.close()


@pytest.mark.expected_log(BAD_ORPHAN)
def test_background_reconciliation_quarantines_orphans_with_wrong_bytes(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(6))
    keep = cas.put(blob(7))
    cas.close()
    stray = damage_orphan_and_stray(cas, digest)
    again = later(tmp_path)
    try:
        assert os.path.exists(chunk_file(cas, stray))  # not looked at before the reconciliation
        assert again.reconcile().removed == 2
        assert not again.has(digest) and not again.has(stray)
        assert not os.path.exists(chunk_file(cas, digest)) and not os.path.exists(chunk_file(cas, stray))
        assert len(quarantined(again)) == 2  # moved aside, not deleted
        assert again.has(keep) and again.usage() == (SIZE, 1)
    finally:
        again.close()


def test_background_reconciliation_fixes_an_index_that_lies_about_a_size(tmp_path):
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(1))
    cas.close()
    db = sqlite3.connect(os.path.join(tmp_path, "index.db"))
    with db:
        db.execute("UPDATE chunks SET size = 3 WHERE hash = ?", (digest,))
    db.close()
    again = later(tmp_path)
    try:
        again.load_lru()
        assert again.usage() == (3, 1)
        assert again.reconcile().resized == 1
        assert again.usage() == (SIZE, 1) and index_rows(tmp_path) == {digest: SIZE}
        assert again.get(digest) == blob(1)
    finally:
        again.close()


@pytest.mark.expected_log(BAD_ORPHAN)
def test_a_put_racing_the_reconciliation_is_never_taken_for_an_orphan(tmp_path, monkeypatch):
    """Puts land between the reconciliation's index snapshot and its decisions: a new chunk (its file
    written, its row not yet) and the good bytes of a digest whose orphan file on disk was garbage. Both
    stay, indexed and counted once; the unrelated bad orphan is still quarantined."""
    cas = setup_test_cas(tmp_path)
    bad = cas.put(blob(6))
    cas.close()
    drop_index_row(tmp_path, bad)
    with open(chunk_file(cas, bad), "r+b") as fh:
        fh.write(b"garbage")
    fresh, overwrite = blob(40), blob(41)
    fresh_d, over_d = chunk_hash(fresh), chunk_hash(overwrite)
    os.makedirs(os.path.dirname(chunk_file(cas, over_d)), exist_ok=True)
    with open(chunk_file(cas, over_d), "wb") as fh:
        fh.write(b"a damaged orphan of the chunk about to be put")

    store = later(tmp_path)
    written = threading.Barrier(3, timeout=WAIT)  # both puts wrote their file, the reconciler listed them
    go_on = threading.Event()
    real_index = store._index_new_chunk

    def index_new_chunk(digest, size):  # put: file written and renamed, row not yet
        written.wait()
        assert go_on.wait(WAIT)
        real_index(digest, size)

    monkeypatch.setattr(store, "_index_new_chunk", index_new_chunk)
    real_scan = repair_module.scan_chunk_sizes

    def scan(root):  # the reconciler: index snapshot taken; list the disk once both files are there
        written.wait()
        return list(real_scan(root))

    monkeypatch.setattr(repair_module, "scan_chunk_sizes", scan)
    errors = []

    def put(data):
        try:
            store.put(data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(d,)) for d in (fresh, overwrite)]
    for t in threads:
        t.start()
    report = store.reconcile()  # decides while both puts are between their file and their row
    go_on.set()
    for t in threads:
        t.join(WAIT)
    try:
        assert not any(t.is_alive() for t in threads) and errors == []
        assert report.skipped == 2 and report.removed == 1 and report.adopted == 0
        assert store.get(fresh_d) == fresh and store.get(over_d) == overwrite
        assert not store.has(bad) and store.usage() == (2 * SIZE, 2)
        assert index_rows(tmp_path) == {fresh_d: SIZE, over_d: SIZE}
    finally:
        store.close()


def test_a_put_waits_while_the_reconciliation_holds_its_digest(tmp_path, monkeypatch):
    """The reconciliation claims an orphan; a put of the same digest meanwhile waits for the claim, then
    finds it adopted or writes it again: either way it ends indexed once, with the right bytes."""
    cas = setup_test_cas(tmp_path)
    digest = cas.put(blob(9))
    cas.close()
    drop_index_row(tmp_path, digest)
    store = later(tmp_path)
    real_adopt = store._reconcile_orphan
    outcome = []

    def adopt(d, report):  # called with the claim held
        putter = threading.Thread(target=lambda: outcome.append(store.put(blob(9))))
        putter.start()
        with store._lock:  # whenever the put gets here, it cannot mark its digest while the claim is held
            assert digest in store._claimed and not store._putting[digest]
        real_adopt(d, report)
        outcome.append(putter)

    monkeypatch.setattr(store, "_reconcile_orphan", adopt)
    try:
        report = store.reconcile()
        putter = outcome.pop()
        putter.join(WAIT)
        assert not putter.is_alive() and outcome == [digest]
        assert report.adopted == 1 and store.usage() == (SIZE, 1) and store.get(digest) == blob(9)
        assert index_rows(tmp_path) == {digest: SIZE}
    finally:
        store.close()


# -- through Library.open and the cache task ---------------------------------------------------------------
@pytest.fixture
def cfg(tmp_path) -> Config:
    (tmp_path / "src").mkdir()
    return Config(sources=(str(tmp_path / "src"),), mountpoint=str(tmp_path / "mnt"), state_dir=str(tmp_path / "state"),
                  cache_dir=str(tmp_path / "cache"))


def _orphan_after_a_run(cfg: Config) -> str:
    lib = Library.open(cfg)
    digest = lib.cas.put(blob(3))
    lib.close()
    drop_index_row(cfg.cache_dir, digest)
    return digest


async def test_a_clean_start_reconciles_in_the_cache_task_after_open(cfg):
    digest = _orphan_after_a_run(cfg)
    lib = Library.open(cfg)
    try:
        assert not lib.unclean and lib.cas.reconcile_pending and not lib.cas.has(digest)
        cache = ChunkCache(lib.cas)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run)
            with trio.fail_after(WAIT):
                await cache.health.reconciled.wait()
            nursery.cancel_scope.cancel()
        assert not lib.cas.reconcile_pending and cache.health.last_reconcile.adopted == 1
        assert lib.cas.has(digest) and await cache.get(digest) == blob(3)
    finally:
        lib.close()


@pytest.mark.expected_log(UNCLEAN)
def test_an_unclean_start_still_reconciles_before_ready(cfg):
    digest = _orphan_after_a_run(cfg)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (Path(cfg.state_dir) / RunMarker.NAME).write_text(json.dumps({"pid": dead.pid}))
    lib = Library.open(cfg)
    try:
        assert lib.unclean and lib.cas.full_check and not lib.cas.reconcile_pending
        assert lib.cas.has(digest) and lib.cas.usage() == (SIZE, 1)  # adopted in the constructor
    finally:
        lib.close()
