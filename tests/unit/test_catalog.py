"""Catalog: round trips, manifests keyed by identity, atomic transactions, inodes, corruption, WAL."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from musicfs.library.catalog import Catalog, FileRow, FileVersion
from musicfs.library.tree import FIRST_INO
from musicfs.shared.errors import CatalogCorrupt, CatalogError
from musicfs_test_utils.fixtures import make_audio_meta, make_file_meta, open_catalog


def _rows(n: int, prefix: str = "Artist/Album") -> list[FileRow]:
    return [
        make_file_meta(0, f"{prefix}/{i:04d} Song.flac", 1000 + i, mtime_ns=1_700_000_000_000_000_000 + i,
                       **make_audio_meta("Artist", "Album", f"Song {i}", track_no=i + 1))
        for i in range(n)
    ]


def _strip_id(row: FileRow) -> FileRow:
    return dataclasses.replace(row, id=0)


@pytest.fixture
def cat(tmp_path):
    c = open_catalog(str(tmp_path / "state"))
    yield c
    c.close()


def test_upsert_and_read_back(cat):
    rows = _rows(3) + [
        make_file_meta(0, "Artist/Album/cover.jpg", 55, kind="cover"),
        make_file_meta(0, "misc/broken.mp3", 8217, kind="junk", etag="e1"),
    ]
    rows[0] = dataclasses.replace(rows[0], year="2019", genre="Ambient", duration=2.5, disc_no=1,
                                  albumartist="AA")
    cat.upsert_files(rows)
    got = cat.files()
    assert sorted(map(_strip_id, got), key=lambda r: r.path) == sorted(rows, key=lambda r: r.path)
    assert len({r.id for r in got}) == len(rows) and all(r.id > 0 for r in got)
    assert {r.path for r in cat.files("cover")} == {"Artist/Album/cover.jpg"}
    assert cat.count("track") == 3 and cat.count("junk") == 1 and cat.count("cover") == 1
    assert cat.identities() == {r.path: r.identity for r in rows}
    one = next(r for r in got if r.path == rows[0].path)
    assert cat.file(one.id) == one
    assert cat.file(10**9) is None


def test_upsert_updates_in_place_and_keeps_the_id(cat):
    cat.upsert_files(_rows(2))
    before = {r.path: r.id for r in cat.files()}
    changed = dataclasses.replace(_rows(2)[1], title="Renamed", size=4242)
    cat.upsert_files([changed], checkpoint={"last_path": changed.path})
    after = {r.path: r for r in cat.files()}
    assert {p: r.id for p, r in after.items()} == before
    assert after[changed.path].title == "Renamed" and after[changed.path].size == 4242
    assert cat.scan_state()["last_path"] == changed.path


def test_delete_paths(cat):
    rows = _rows(3)
    cat.upsert_files(rows)
    fid = {r.path: r.id for r in cat.files()}[rows[0].path]
    cat.set_manifest_chunk(FileVersion(fid, rows[0].ident), 0, "a" * 64)
    cat.add_inodes([f"f:{rows[0].path}", f"f:{rows[1].path}"], FIRST_INO)
    cat.delete_paths([rows[0].path, "never/was/there.flac"])
    assert set(cat.identities()) == {rows[1].path, rows[2].path}
    assert cat.manifest_hashes() == set()
    assert set(cat.inode_map()) == {f"f:{rows[1].path}"}


# -- manifests keyed by identity ---------------------------------------------------
def test_manifest_round_trip(cat):
    row = _rows(1)[0]
    cat.upsert_files([row])
    fid = cat.files()[0].id
    for i in range(3):
        cat.set_manifest_chunk(FileVersion(fid, row.ident), i, f"{i:064x}")
    assert cat.manifest(FileVersion(fid, row.ident)) == {i: f"{i:064x}" for i in range(3)}
    assert cat.manifest_hashes() == {f"{i:064x}" for i in range(3)}
    assert sorted(cat.manifest_rows()) == [(fid, row.ident, i, f"{i:064x}") for i in range(3)]
    cat.drop_manifest_chunk(f"{1:064x}")
    assert cat.manifest(FileVersion(fid, row.ident)) == {0: f"{0:064x}", 2: f"{2:064x}"}


def test_identity_change_drops_the_old_manifest(cat):
    row, other = _rows(2)
    cat.upsert_files([row, other])
    ids = {r.path: r.id for r in cat.files()}
    cat.set_manifest_chunk(FileVersion(ids[row.path], row.ident), 0, "a" * 64)
    cat.set_manifest_chunk(FileVersion(ids[other.path], other.ident), 0, "b" * 64)
    # same identity again (e.g. a retag that kept size+mtime): the manifest stays
    cat.upsert_files([dataclasses.replace(row, title="x")])
    assert cat.manifest(FileVersion(ids[row.path], row.ident)) == {0: "a" * 64}
    # new mtime: the old manifest is gone, in the same upsert
    newer = dataclasses.replace(row, mtime_ns=row.mtime_ns + 1)
    assert newer.ident != row.ident
    cat.upsert_files([newer])
    assert cat.manifest(FileVersion(ids[row.path], row.ident)) == {}
    assert cat.manifest(FileVersion(ids[row.path], newer.ident)) == {}
    assert [r for r in cat.manifest_rows() if r[0] == ids[row.path]] == []
    assert cat.manifest(FileVersion(ids[other.path], other.ident)) == {0: "b" * 64}  # neighbours untouched
    # an etag change counts too
    cat.set_manifest_chunk(FileVersion(ids[other.path], other.ident), 1, "c" * 64)
    cat.upsert_files([dataclasses.replace(other, etag="v2")])
    assert cat.manifest_hashes() == set()


def test_stale_manifest_chunk_is_ignored(cat):
    row = _rows(1)[0]
    cat.upsert_files([row])
    fid = cat.files()[0].id
    old_ident = row.ident
    newer = dataclasses.replace(row, size=row.size + 1)
    cat.upsert_files([newer])
    # a reader that started before the rescan finishes its fetch and records the chunk late
    cat.set_manifest_chunk(FileVersion(fid, old_ident), 0, "d" * 64)
    assert cat.manifest(FileVersion(fid, old_ident)) == {}
    assert cat.manifest_hashes() == set()
    cat.set_manifest_chunk(FileVersion(fid, newer.ident), 0, "e" * 64)
    assert cat.manifest(FileVersion(fid, newer.ident)) == {0: "e" * 64}
    cat.set_manifest_chunk(FileVersion(fid + 99, newer.ident), 0, "f" * 64)  # unknown file: ignored too
    assert cat.manifest_hashes() == {"e" * 64}


# -- transactions ----------------------------------------------------------------------
def test_failed_batch_leaves_nothing_behind_and_releases_the_lock(cat, monkeypatch):
    first = _rows(3, "Old")
    cat.upsert_files(first, checkpoint={"last_path": first[-1].path})
    fid = {r.path: r.id for r in cat.files()}[first[0].path]
    cat.set_manifest_chunk(FileVersion(fid, first[0].ident), 0, "a" * 64)
    before = (sorted(cat.files(), key=lambda r: r.path), cat.scan_state(), cat.manifest_hashes())

    calls = {"n": 0}
    real_ident = FileRow.ident

    def exploding_ident(self):
        calls["n"] += 1
        if calls["n"] == 3:  # rows 1 and 2 of the batch are already written when this fires
            raise RuntimeError("disk on fire")
        return real_ident.fget(self)

    monkeypatch.setattr(FileRow, "ident", property(exploding_ident))
    batch = _rows(4, "New") + [dataclasses.replace(first[0], mtime_ns=1)]  # would drop the manifest
    with pytest.raises(RuntimeError, match="disk on fire"):
        cat.upsert_files(batch, checkpoint={"last_path": batch[-1].path})
    assert calls["n"] == 3
    monkeypatch.undo()

    assert (sorted(cat.files(), key=lambda r: r.path), cat.scan_state(), cat.manifest_hashes()) == before
    # the connection is usable again: no open transaction, no lock left held
    assert not cat._db.in_transaction
    cat.upsert_files(batch[:2])
    assert set(cat.identities()) == {r.path for r in first + batch[:2]}
    # and a second connection can write too (no writer lock held by the failed BEGIN IMMEDIATE)
    other = Catalog(cat.path)
    try:
        other.set_scan_state(probe="1")
        assert cat.scan_state()["probe"] == "1"
    finally:
        other.close()


def test_failed_inode_allocation_is_rolled_back(cat):
    cat.add_inodes(["d:A"], FIRST_INO)
    with pytest.raises(CatalogError):
        cat.add_inodes(["d:B", "d:A"], FIRST_INO)  # d:A exists: the INSERT fails after d:B
    assert cat.inode_map() == {"d:A": FIRST_INO}
    assert cat.add_inodes(["d:B"], FIRST_INO) == {"d:B": FIRST_INO + 1}


# -- inodes ----------------------------------------------------------------------------
def test_inode_allocation_is_stable(tmp_path):
    cat = open_catalog(str(tmp_path))
    keys = [f"f:track{i}" for i in range(5)]
    first = cat.add_inodes(keys, FIRST_INO)
    assert sorted(first.values()) == list(range(FIRST_INO, FIRST_INO + 5))
    assert cat.inode_map() == first
    assert cat.add_inodes([], FIRST_INO) == {}
    more = cat.add_inodes(["d:Artist"], FIRST_INO)
    assert more == {"d:Artist": FIRST_INO + 5}  # next free number, earlier ones untouched
    assert cat.inode_map() == {**first, **more}
    cat.delete_paths(["track0"])  # file keys are 'f:' + path
    assert "f:track0" not in cat.inode_map()
    again = cat.add_inodes(["f:track0"], FIRST_INO)
    assert again["f:track0"] == max({**first, **more}.values()) + 1  # a deleted file's number is not reused
    cat.close()
    reopened = open_catalog(str(tmp_path))
    assert reopened.inode_map() == {**first, **more, **again}
    assert reopened.add_inodes(["x"], 1000) == {"x": 1000}  # `first` is a floor
    reopened.close()


# -- integrity -------------------------------------------------------------------------
def test_quick_check_on_a_healthy_db(cat):
    cat.upsert_files(_rows(50))
    assert cat.quick_check() == []
    assert cat.quick_check(full=True) == []


def test_corruption_on_disk_is_detected(tmp_path):
    path = str(tmp_path / "catalog.db")
    cat = Catalog(path)
    long_tags = {"genre": "g" * 1000}
    rows = [dataclasses.replace(r, **long_tags) for r in _rows(600)]
    cat.upsert_files(rows)
    for i, r in enumerate(cat.files()[:50]):
        cat.set_manifest_chunk(r.version, 0, f"{i:064x}")
    assert cat.quick_check() == []
    cat.close()
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0
    size = os.path.getsize(path)
    assert size > 100 * 4096, "the test needs a db that spans many pages"
    with open(path, "r+b") as fh:  # scribble over pages in the middle, leave the header alone
        for start in (size // 3, size // 2, 2 * size // 3):
            fh.seek(start)
            fh.write(b"\xa5\x5a" * 8192)

    # SQLite opens it (header and schema pages are intact); the damage shows in quick_check,
    # and any statement that reaches a bad page fails as CatalogError, never as a raw sqlite3 error.
    damaged = Catalog(path)
    try:
        problems = damaged.quick_check()
        assert problems, "quick_check did not notice 48 KiB of garbage in the middle of the db"
        assert all(isinstance(p, str) and p != "ok" for p in problems)
        assert damaged.quick_check(full=True)
        with pytest.raises(CatalogError):
            damaged.files()
        with pytest.raises(CatalogError):  # a write that touches the damaged pages
            damaged.upsert_files([dataclasses.replace(r, title="changed") for r in rows])
    finally:
        damaged.close()


def test_not_a_database_fails_at_open(tmp_path):
    path = tmp_path / "catalog.db"
    path.write_bytes(b"this is not sqlite at all " * 400)
    with pytest.raises(CatalogCorrupt):
        Catalog(str(path))


# -- WAL durability ------------------------------------------------------------------
def test_committed_wal_data_survive_without_a_checkpoint(tmp_path):
    """A copy of db + WAL taken while the writer is still open (as after kill -9) has every commit."""
    src = tmp_path / "live"
    cat = open_catalog(str(src))
    rows = _rows(20)
    cat.upsert_files(rows, checkpoint={"last_path": rows[-1].path})
    cat.add_inodes(["d:Artist"], FIRST_INO)
    wal = src / "catalog.db-wal"
    assert wal.exists() and wal.stat().st_size > 0, "expected the commits to sit in the WAL"
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(src / "catalog.db", crashed / "catalog.db")
    shutil.copy(wal, crashed / "catalog.db-wal")
    cat.close()

    survivor = open_catalog(str(crashed))
    try:
        assert set(survivor.identities()) == {r.path for r in rows}
        assert survivor.scan_state() == {"last_path": rows[-1].path}
        assert survivor.inode_map() == {"d:Artist": FIRST_INO}
        assert survivor.quick_check() == []
    finally:
        survivor.close()


def test_reopen_sees_everything(tmp_path):
    cat = open_catalog(str(tmp_path))
    cat.upsert_files(_rows(5))
    cat.set_scan_state(completed_at="123")
    cat.close()
    again = open_catalog(str(tmp_path))
    assert again.count() == 5 and again.scan_state() == {"completed_at": "123"}
    again.close()
