"""The chunk store's SQLite index (cache/index.py): which check a start runs, what a damaged index is said to have,
how each SQLite failure of a write is classed (full, the disk, the index itself), checkpoints of a closed or
failing index, and a runtime rebuild over a file that is no database."""

from __future__ import annotations

import os
import sqlite3

import pytest

from musicfs.cache import index as index_module
from musicfs.cache.cas import CasStore
from musicfs.shared.damage import (
    SQLITE_CANTOPEN,
    SQLITE_CORRUPT,
    SQLITE_FULL,
    SQLITE_IOERR,
    SQLITE_NOTADB,
)
from musicfs.shared.errors import CacheFull, CacheUnavailable, CasError, CasIndexError
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.cas_damage import SIZE, UNOPENED, blob, store_over_a_file
from musicfs_test_utils.fixtures import setup_test_cas

REBUILT = r"cache: index .*index\.db rebuilt: 1 chunk files \(1000 bytes\) verified and indexed"


class Rows:
    """A connection whose PRAGMA check answers `rows` (and whose chunk table reads fine)."""

    def __init__(self, rows):
        self.rows = rows
        self.sql: list[str] = []

    def execute(self, sql, *args):
        self.sql.append(sql)
        return self

    def fetchall(self):
        return self.rows if self.sql[-1].startswith("PRAGMA") else []


@pytest.fixture
def store(tmp_path):
    s = setup_test_cas(tmp_path / "cache")
    yield s
    s.close()


@pytest.mark.parametrize("full_check, pragma", [(False, "PRAGMA quick_check"), (True, "PRAGMA integrity_check")])
def test_a_start_runs_the_quick_check_and_after_an_unclean_stop_the_full_one(store, full_check, pragma):
    store.full_check = full_check
    db = Rows([("ok",)])
    assert store._check_index(db) == "" and db.sql[0] == pragma


ROW = "row 12 missing from index sqlite_autoindex_chunks_1"  # what SQLite says, in its own words
PAGE = "Page 7 is never used"
TREE = "*** in database main ***"


@pytest.mark.parametrize("problems, said", [
    ([ROW], ROW),
    ([TREE, PAGE, ROW], f"{TREE}; {PAGE}; {ROW}"),
    ([ROW, PAGE, TREE, ROW], f"{ROW}; {PAGE}; {TREE} (+1 more)"),
    ([PAGE, ROW, ROW, TREE, ROW, PAGE], f"{PAGE}; {ROW}; {ROW} (+3 more)"),
])
def test_a_damaged_index_is_said_to_have_its_first_three_problems(store, problems, said):
    assert store._check_index(Rows([("ok",)] + [(p,) for p in problems])) == said


def test_an_index_with_another_schema_is_damaged_and_rebuilt(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(1))
    store.close()
    os.unlink(tmp_path / "index.db")
    db = sqlite3.connect(tmp_path / "index.db")
    db.execute("CREATE TABLE chunks(name TEXT)")
    db.commit()
    db.close()
    with assert_logs(r"index .*index\.db is damaged \(unexpected schema: no such column: hash\)", count=1), \
            assert_logs(REBUILT, count=1):
        again = setup_test_cas(tmp_path)
    assert again.has(digest) and again.usage() == (SIZE, 1)
    again.close()


@pytest.mark.expected_log(UNOPENED)
def test_an_open_error_names_the_file(tmp_path):
    root = tmp_path / "cache"
    store = store_over_a_file(root)
    assert store.open_error == f"Not a directory: {root / 'chunks'}"
    with pytest.raises(CacheUnavailable) as info:
        store._write_index("INSERT INTO probe VALUES(1, 0)", ())
    assert str(info.value) == f"cache: {root} is unavailable ({store.open_error})"


class Failing:
    """A connection whose every statement fails with SQLite's `code`."""

    def __init__(self, code: int):
        self.code = code
        self.close_calls = 0

    def execute(self, *args):
        exc = sqlite3.OperationalError(f"error {self.code}")
        exc.sqlite_errorcode = self.code
        raise exc

    executemany = execute

    def close(self):
        self.close_calls += 1
        exc = sqlite3.OperationalError("cannot close")
        exc.sqlite_errorcode = self.code
        raise exc


@pytest.mark.parametrize("code, error, said", [
    (SQLITE_FULL, CacheFull, "index store is full"),
    (SQLITE_IOERR | (3 << 8), CasError, "cannot be written"),  # SQLITE_IOERR_WRITE: extended codes count by their low byte
    (SQLITE_CANTOPEN, CasError, "cannot be written"),
    (SQLITE_CORRUPT, CasIndexError, "failed"),
    (SQLITE_NOTADB, CasIndexError, "failed"),
])
def test_each_failure_of_an_index_write_is_classed(store, code, error, said):
    real = store._db
    store._db = Failing(code)
    try:
        with pytest.raises(error, match=said) as info:
            store._write_index("INSERT INTO probe VALUES(1, 0)", ())
        assert type(info.value) is error  # (CacheFull and CasIndexError are CasErrors too)
        with pytest.raises(error):
            store._write_index("UPDATE chunks SET atime = ? WHERE hash = ?", [(1.0, "x")], many=True)
        store._checkpoint()  # a failing checkpoint is no error: the WAL is folded back later
    finally:
        store._db = real


def test_a_closed_index_is_neither_checkpointed_nor_closed_twice(store):
    store.close()
    store._checkpoint()  # no connection: nothing to fold back, and no error
    store._close_db()
    assert store._db is None and not store.available
    failing = Failing(SQLITE_IOERR)
    index_module._close_quietly(failing)  # a connection that fails to close is let go
    assert failing.close_calls == 1


def test_a_checkpoint_gives_the_wal_back(store):
    for i in range(50):
        store.put(blob(i))
    wal = store.index_path + "-wal"
    assert os.path.getsize(wal) > 0
    store._checkpoint()
    assert os.path.getsize(wal) == 0


@pytest.mark.expected_log(r"cache: index .*index\.db failed \(file is not a database\); moved to",
                          r"cache: index .*index\.db rebuilt: 1 chunk files")
def test_a_runtime_rebuild_over_a_file_that_is_no_database_moves_it_aside(tmp_path):
    store = setup_test_cas(tmp_path)
    digest = store.put(blob(2))
    store._close_db()
    (tmp_path / "index.db").write_bytes(b"no database here" * 512)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(store.index_path + suffix):
            os.unlink(store.index_path + suffix)
    report = store.rebuild_index()
    assert not report.reused and store.available and store.has(digest)
    assert [n for n in os.listdir(tmp_path) if n.startswith("index.db.damaged-")]
    store.close()


def test_a_runtime_rebuild_that_cannot_read_the_file_is_a_failed_rebuild(tmp_path, monkeypatch):
    store = setup_test_cas(tmp_path)
    store.put(blob(3))

    def unreadable(self, path):
        exc = sqlite3.OperationalError("disk I/O error")
        exc.sqlite_errorcode = SQLITE_IOERR
        raise exc

    monkeypatch.setattr(CasStore, "_connect", unreadable)
    with pytest.raises(CasError, match="cannot rebuild the index .*disk I/O error"):
        store.rebuild_index()
    assert not store.available
    assert not [n for n in os.listdir(tmp_path) if n.startswith("index.db.damaged-")]  # not taken for damage
