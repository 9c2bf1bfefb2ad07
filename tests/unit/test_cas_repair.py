"""The chunk store's repairs (cache/repair.py) by exact outcomes: what a rebuild and a reconciliation report, an
unclean start checking sizes, work interrupted by a stop, a probe's failures, a rebuild that fails, and a
reconciliation that cannot read its index or list its files."""

from __future__ import annotations

import os
import sqlite3

import pytest

from musicfs.cache import repair as repair_module
from musicfs.cache.cas import chunk_hash
from musicfs.cache.repair import RebuildReport, ReconcileReport
from musicfs.shared import points
from musicfs.shared.errors import (
    CacheUnavailable,
    CasError,
    CasIndexError,
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


def refuse_open(monkeypatch, error: OSError, digest: str | None = None) -> None:
    """repair.py's open() raises `error` for the chunk file of `digest` (for every file when None)."""
    real_open = open

    def fake(path, *args, **kwargs):
        if digest is None or str(path).endswith(digest):
            raise error
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(repair_module, "open", fake, raising=False)


def lying_disk(monkeypatch, back: bytes) -> None:
    """A disk whose probe file reads back `back`, whatever was written."""
    real_open = open

    def fake(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        if "probe." in str(path) and "r" in mode:
            fh.read = lambda *a: back
        return fh

    monkeypatch.setattr(repair_module, "open", fake, raising=False)


def test_what_a_rebuild_and_a_reconciliation_say():
    assert RebuildReport(chunks=3, bytes=3000).summary() == "3 chunk files (3000 bytes) verified and indexed"
    assert RebuildReport(chunks=2, bytes=20, quarantined=["a"]).summary() == (
        "2 chunk files (20 bytes) verified and indexed; 1 failed verification and were quarantined")
    assert RebuildReport(chunks=4, bytes=40, reused=True).summary() == (
        "4 chunks (40 bytes) indexed, reconciled with the chunk files")
    assert ReconcileReport(indexed=5, files=6, dropped=1, adopted=2, removed=3, resized=4).summary() == (
        "5 index rows and 6 chunk files compared: 1 rows without a file dropped, 2 orphans adopted, 3 bad orphans "
        "quarantined, 4 sizes fixed")


def _lie_about_the_size(root, digest: str, size: int) -> None:
    db = sqlite3.connect(os.path.join(root, "index.db"))
    with db:
        db.execute("UPDATE chunks SET size = ? WHERE hash = ?", (size, digest))
    db.close()


def test_an_unclean_start_checks_every_size_and_a_clean_one_does_not(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(1))
    store.close()
    _lie_about_the_size(tmp_path, digest, 5)
    clean = setup_test_cas(tmp_path)
    assert clean.usage() == (5, 1)  # a clean start trusts the index's sizes
    clean.close()
    unclean = setup_test_cas(tmp_path, full_check=True)
    assert unclean.usage() == (SIZE, 1) and unclean.get(digest) == blob(1)
    unclean.close()


@pytest.mark.expected_log(r"cache: chunk \w{12} failed verification; moved to", r"cache: index .* (rebuilt|is missing)")
def test_a_rebuild_verifies_every_chunk_file_and_reports_the_bad_ones(tmp_path):
    store = setup_test_cas(tmp_path)
    good, bad = store.put(blob(2)), store.put(blob(3))
    store.close()
    corrupt(store, bad)
    os.unlink(tmp_path / "index.db")
    again = setup_test_cas(tmp_path)
    report = again.last_rebuild
    assert (report.chunks, report.bytes, report.quarantined, report.reused) == (1, SIZE, [bad], False)
    assert again.has(good) and not again.has(bad) and again.quarantine_usage() == (SIZE, 1)
    again.close()


def test_a_reconciliation_stops_when_asked(tmp_path):
    store = setup_test_cas(tmp_path)
    store.put(blob(4))
    store.close()
    os.unlink(chunk_file(store, chunk_hash(blob(4))))  # one row without a file: work to do
    again = setup_test_cas(tmp_path, reconcile_later=True)
    with pytest.raises(CasError, match="reconciliation interrupted"):
        again.reconcile(should_stop=lambda: True)
    assert again.reconcile_pending and again.reconciliations == 0
    report = again.reconcile(should_stop=lambda: False)
    assert report.dropped == 1 and not again.reconcile_pending and again.reconciliations == 1
    again.close()


@pytest.mark.expected_log(r"cache: index .*index\.db failed")
def test_a_rebuild_stops_when_asked_and_the_store_stays_unavailable(tmp_path):
    store = setup_test_cas(tmp_path)
    store.put(blob(5))
    (tmp_path / "index.db").unlink()
    with pytest.raises(CasError, match="cannot rebuild the index .*index rebuild interrupted"):
        store.rebuild_index(should_stop=lambda: True)
    assert not store.available and store.open_error == "index rebuild failed: cache: index rebuild interrupted"
    with pytest.raises(CacheUnavailable):
        store.get(chunk_hash(blob(5)))
    store.close()


def test_a_reconciliation_of_a_closed_or_broken_index_is_an_error(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path, reconcile_later=True)
    store.load_lru()

    class Broken:
        def execute(self, *args):
            raise sqlite3.DatabaseError("database disk image is malformed")

    real = store._db
    store._db = Broken()
    with pytest.raises(CasIndexError, match="failed: database disk image is malformed"):
        store.reconcile()
    store._db = None
    with pytest.raises(CacheUnavailable, match=r"unavailable \(closed\)"):
        store.open_error = ""
        store.reconcile()
    store._db = real

    def unlistable(root):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(repair_module, "scan_chunk_sizes", unlistable)
    with pytest.raises(CasError, match="cannot list the chunk files: Permission denied"):
        store.reconcile()
    store.close()


def test_a_probe_fails_on_its_failpoint_and_on_a_disk_that_fails(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    store.probe()  # a healthy disk
    monkeypatch.setattr(repair_module, "fail_point", lambda name: "x" if name == points.CAS_PROBE else None)
    with pytest.raises(CasError, match=r"probe failed \(injected by failpoint\)"):
        store.probe()
    monkeypatch.undo()
    refuse_open(monkeypatch, OSError(5, "Input/output error"))
    with pytest.raises(CasError, match=f"probe of {tmp_path} failed: Input/output error"):
        store.probe()
    monkeypatch.undo()
    assert not [n for n in os.listdir(tmp_path / "tmp") if n.startswith("probe.")]  # nothing left behind
    store.close()


@pytest.mark.expected_log(UNOPENED)
def test_a_probe_that_cannot_open_the_store_says_why(tmp_path):
    root = tmp_path / "cache"
    store = store_over_a_file(root)
    with pytest.raises(CasError) as info:
        store.probe()
    assert str(info.value) == f"cache: cannot open {root}: {store.open_error}" and not store.available
    root.unlink()
    with assert_logs(rf"cache: {root} opened \(0 chunks, 0 bytes\)", count=1, level=20):
        store.probe()
    store.close()


def test_an_unclean_start_fixes_a_row_that_says_more_than_the_file_holds(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(6))
    store.close()
    _lie_about_the_size(tmp_path, digest, 5000)
    again = setup_test_cas(tmp_path, full_check=True)
    assert again.usage() == (SIZE, 1) and again.get(digest) == blob(6)
    again.close()


def test_an_unclean_start_goes_on_past_a_chunk_file_gone_while_it_checks_sizes(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    gone, kept = store.put(blob(7)), store.put(blob(8))
    store.close()
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith(gone):  # listed, then gone before its size was read
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(repair_module.os, "stat", stat)
    again = setup_test_cas(tmp_path, full_check=True)
    monkeypatch.undo()
    assert again.has(kept) and again.usage()[1] == 2
    again.close()


def test_a_reconciliation_leaves_to_the_live_store_what_changed_since_its_listing(tmp_path, monkeypatch):
    """Its listing of the disk is older than the store: a chunk put and indexed since (an orphan no longer), a row
    whose file was not listed but is there (not gone), a listed file gone since (no orphan): each skipped."""
    store = setup_test_cas(tmp_path, reconcile_later=True)
    store.load_lru()
    indexed_since, not_listed = store.put(blob(9)), store.put(blob(10))
    drop_index_row(tmp_path, indexed_since)  # the reconciliation's index snapshot lacks it; memory has it
    vanished = chunk_hash(b"listed, then removed")
    listing = {indexed_since: SIZE, vanished: 20}  # `not_listed` is missing from the listing

    monkeypatch.setattr(repair_module, "scan_chunk_sizes", lambda root: iter(listing.items()))
    report = store.reconcile()
    assert (report.skipped, report.dropped, report.adopted, report.removed) == (3, 0, 0, 0)
    assert store.has(indexed_since) and store.has(not_listed) and store.usage() == (2 * SIZE, 2)
    store.close()


def test_a_chunk_the_reconciliation_cannot_read_is_an_error_naming_it(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(11))
    store.close()
    drop_index_row(tmp_path, digest)  # an orphan that cannot be read
    again = setup_test_cas(tmp_path, reconcile_later=True)
    refuse_open(monkeypatch, PermissionError(13, "Permission denied"), digest)
    with pytest.raises(CasError) as info:
        again.reconcile()
    assert str(info.value) == f"cache: cannot reconcile chunk {digest[:12]}: Permission denied"
    monkeypatch.undo()
    again.close()


@pytest.mark.expected_log(r"cache: chunk \w{12} failed verification; moved to")
def test_a_background_reconciliation_reports_exactly_what_it_fixed(tmp_path):
    store = setup_test_cas(tmp_path)
    sound, small, big, bad, orphan = (store.put(blob(i)) for i in range(20, 25))
    store.close()
    _lie_about_the_size(tmp_path, small, 10)  # rows that say less, and more, than the file holds
    _lie_about_the_size(tmp_path, big, 5000)
    _lie_about_the_size(tmp_path, bad, 10)  # ... and one whose file is damaged besides
    corrupt(store, bad)
    drop_index_row(tmp_path, orphan)
    again = setup_test_cas(tmp_path, reconcile_later=True)
    with assert_logs(rf"cache: fixed the indexed size of chunk ({small[:12]}|{big[:12]})$", count=2, level=20), \
            assert_logs(rf"cache: adopted chunk {orphan[:12]} found on disk but not in the index", count=1, level=20):
        report = again.reconcile()
    assert (report.indexed, report.files, report.dropped, report.adopted, report.removed, report.resized,
            report.skipped) == (4, 5, 0, 1, 0, 3, 0)
    assert [again.has(d) for d in (sound, small, big, bad, orphan)] == [True, True, True, False, True]
    assert again.usage() == (4 * SIZE, 4)
    assert again.reconcile().summary() == ("4 index rows and 4 chunk files compared: 0 rows without a file dropped, "
                                           "0 orphans adopted, 0 bad orphans quarantined, 0 sizes fixed")
    again.close()


@pytest.mark.expected_log(r"cache: index .*index\.db is missing; rebuilding it")
def test_a_rebuild_that_loses_a_chunk_file_on_the_way_indexes_the_rest(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digests = [store.put(blob(i)) for i in range(30, 40)]
    store.close()
    os.unlink(tmp_path / "index.db")
    gone = digests[3]
    refuse_open(monkeypatch, FileNotFoundError(2, "No such file or directory"), gone)
    with assert_logs(r"cache: index .*index\.db rebuilt: 9 chunk files \(9000 bytes\) verified and indexed", count=1):
        again = setup_test_cas(tmp_path)
    monkeypatch.undo()
    assert [again.has(d) for d in digests].count(True) == 9 and not again.has(gone)
    again.close()


def test_an_unclean_start_checks_every_size_past_a_file_gone(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digests = [store.put(blob(i)) for i in range(40, 50)]
    store.close()
    for d in digests:
        _lie_about_the_size(tmp_path, d, 7)
    gone = digests[0]
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).endswith(gone):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(repair_module.os, "stat", stat)
    again = setup_test_cas(tmp_path, full_check=True)
    monkeypatch.undo()
    assert again.usage() == (9 * SIZE + 7, 10)  # every size fixed but the one it could not read
    again.close()


@pytest.mark.expected_log(r"cache: index .*index\.db reopened \(its file is sound\)")
def test_a_runtime_rebuild_over_a_sound_file_reopens_and_reconciles_it(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(50))
    store._close_db()  # the connection failed, not the file
    with assert_logs(r"cache: index .*index\.db reopened \(its file is sound\): 1 chunks \(1000 bytes\) indexed, "
                     r"reconciled with the chunk files", count=1, level=20):
        report = store.rebuild_index()
    assert report.reused and (report.chunks, report.bytes) == (1, SIZE) and store.has(digest)
    store.close()


def test_running_out_of_descriptors_while_reconciling_names_the_chunk(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(51))
    store.close()
    drop_index_row(tmp_path, digest)
    again = setup_test_cas(tmp_path, reconcile_later=True)
    refuse_open(monkeypatch, OSError(24, "Too many open files"))
    with pytest.raises(TooManyOpenFiles, match=rf"\(EMFILE\) reconciling chunk {digest[:12]};"):
        again.reconcile()
    monkeypatch.undo()
    again.close()


@pytest.mark.expected_log(r"cache: removed orphan chunk \w{12} whose bytes do not match")
def test_orphans_are_logged_by_their_short_names_at_a_start_and_in_the_background(tmp_path):
    store = setup_test_cas(tmp_path)
    good, bad = store.put(blob(60)), store.put(blob(61))
    store.close()
    for d in (good, bad):
        drop_index_row(tmp_path, d)
    corrupt(store, bad)
    with assert_logs(rf"cache: adopted chunk {good[:12]} found on disk but not in the index$", count=1, level=20), \
            assert_logs(rf"cache: removed orphan chunk {bad[:12]} whose bytes do not match its name", count=1):
        again = setup_test_cas(tmp_path)  # the default start reconciles in the constructor
    again.close()
    store = setup_test_cas(tmp_path)
    later_bad = store.put(blob(62))
    store.close()
    drop_index_row(tmp_path, later_bad)
    corrupt(store, later_bad)
    again = setup_test_cas(tmp_path, reconcile_later=True)
    with assert_logs(rf"cache: removed orphan chunk {later_bad[:12]} whose bytes do not match its name", count=1):
        assert again.reconcile().removed == 1
    again.close()


def test_a_resized_row_whose_file_went_is_dropped_and_said_once(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    digest, other = store.put(blob(63)), store.put(blob(64))
    store.close()
    _lie_about_the_size(tmp_path, digest, 10)
    again = setup_test_cas(tmp_path, reconcile_later=True)
    refuse_open(monkeypatch, FileNotFoundError(2, "No such file or directory"), digest)
    with assert_logs(r"cache: dropped 1 index rows whose chunk files are gone", count=1, level=20):
        report = again.reconcile()
    monkeypatch.undo()
    assert (report.dropped, report.resized) == (1, 0) and not again.has(digest) and again.has(other)
    with assert_logs(r"cache: dropped", count=0, level=20):
        assert again.reconcile().dropped == 0
    again.close()


@pytest.mark.parametrize("lie", [b"\x00" * 4096, b"\xff" * 4096])
def test_a_probe_catches_a_disk_that_reads_back_other_bytes_either_way(tmp_path, monkeypatch, lie):
    store = setup_test_cas(tmp_path)
    lying_disk(monkeypatch, lie)
    with pytest.raises(CasError, match="read back different bytes"):
        store.probe()
    monkeypatch.undo()
    store.close()
