"""SQLite catalog: files and their tags, origin identity, chunk manifests, scan state, inodes.

`open_checked` is how a library opens it: quick_check on every start (integrity_check after an unclean
stop); a damaged catalog is moved aside with a timestamp (never deleted) and a fresh one is created, which
the daemon fills by rescanning the origins (row 2.4).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from typing import Iterable, Iterator

from ..failpoints import fail_point
from ..origins import FileStat, Identity
from ..shared import (
    SQLITE_CANTOPEN,
    SQLITE_READONLY,
    CatalogCorrupt,
    CatalogError,
    not_writable,
    points,
    ro_uri,
    sqlite_code,
    sqlite_corruption,
    wal_before_open,
    wal_dropped,
)
from .tags import TrackTags

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, etag TEXT NOT NULL DEFAULT '',
    artist TEXT, albumartist TEXT, album TEXT, title TEXT,
    track_no INTEGER, disc_no INTEGER, year TEXT, genre TEXT, duration REAL
);
CREATE TABLE IF NOT EXISTS manifests(
    file_id INTEGER NOT NULL, ident TEXT NOT NULL, chunk INTEGER NOT NULL, hash TEXT NOT NULL,
    PRIMARY KEY(file_id, ident, chunk)
);
CREATE INDEX IF NOT EXISTS manifests_hash ON manifests(hash);
CREATE TABLE IF NOT EXISTS blocks(
    file_id INTEGER NOT NULL, ident TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY(file_id, ident, offset)
);
CREATE TABLE IF NOT EXISTS inodes(key TEXT PRIMARY KEY, ino INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS scan_state(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS pins(path TEXT PRIMARY KEY, added INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES('generation', lower(hex(randomblob(8))));
""" + "".join(
    # Every change to what the tree is built from (files, inodes) gives the catalog a new random generation,
    # whoever writes it (this code, an older version, fsck): a persisted tree snapshot keyed by the generation
    # can never be served for another catalog content, nor for a catalog that was replaced or rolled back.
    f"CREATE TRIGGER IF NOT EXISTS generation_{table}_{op.lower()} AFTER {op} ON {table} BEGIN "
    "UPDATE meta SET value = lower(hex(randomblob(8))) WHERE key = 'generation'; END;\n"
    for table in ("files", "inodes") for op in ("INSERT", "UPDATE", "DELETE"))

VERSION_SEP = "\0"  # never in a path: ends a file's inode key, before the content identity it stands for


@dataclass(frozen=True, slots=True)
class FileVersion:
    """One version of one catalog file: its row id and its identity key (`Identity.key`). It keys manifests,
    blocks, open files, loads in flight and protection: a changed file is another version, never mixed."""

    file_id: int
    ident: str


@dataclass(frozen=True)
class FileRow(TrackTags):
    """One origin file as the catalog knows it, with its tags. kind: track | cover | junk (unreadable)."""

    path: str
    kind: str
    size: int
    mtime_ns: int
    etag: str = ""
    id: int = 0

    @property
    def identity(self) -> Identity:
        return Identity(self.size, self.mtime_ns, self.etag)

    @property
    def ident(self) -> str:
        """The origin identity that keys this file's manifest (`Identity.key`, spelled out: the tree
        computes it for every file at start)."""
        return f"{self.size}:{self.mtime_ns}:{self.etag}"

    @property
    def version(self) -> FileVersion:
        return FileVersion(self.id, self.ident)

    def stat(self) -> FileStat:
        """The catalog's identity of this file, as the `expect` of an origin read."""
        return FileStat.of(self.path, self.identity)


_COLS = ["path", "kind", "size", "mtime_ns", "etag", *(f.name for f in fields(TrackTags))]
assert {*_COLS, "id"} == {f.name for f in fields(FileRow)}
#: a FileRow as a tuple, in this order (SQL rows, the tree snapshot)
ROW_FIELDS = (*_COLS, "id")


def rows_to_files(rows: Iterable[tuple]) -> list[FileRow]:
    """Tuples in ROW_FIELDS order -> FileRows. 100k rows at start: filled in directly, without the frozen
    dataclass's __init__ (a setattr each)."""
    new, names = object.__new__, ROW_FIELDS
    out = []
    for r in rows:
        row = new(FileRow)
        row.__dict__.update(zip(names, r))
        out.append(row)
    return out
#: `Identity.key` of files row `f`, in SQL: which manifests belong to the file's current version.
_FILE_KEY_SQL = "f.size || ':' || f.mtime_ns || ':' || f.etag"


class Catalog:
    """Thread-safe wrapper over one SQLite connection (WAL, synchronous=NORMAL)."""

    def __init__(self, path: str, readonly: bool = False):
        """readonly: look without writing anything (fsck without --repair); the file must exist."""
        self.path = path
        self._lock = threading.RLock()
        if fail_point(points.DB_OPEN_CORRUPT) is not None:
            raise CatalogCorrupt(f"{path}: corruption injected by failpoint")
        self._db = None
        try:
            if readonly:
                if not os.path.exists(path):
                    raise CatalogError(f"{path}: no catalog there")
                self._db = sqlite3.connect(ro_uri(path), uri=True, check_same_thread=False, isolation_level=None,
                                           timeout=10)
                self._db.execute("SELECT count(*) FROM sqlite_master").fetchall()
            else:
                wal = wal_before_open(path)
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
                self._db.execute("PRAGMA journal_mode=WAL")
                if dropped := wal_dropped(self._db, path, wal):
                    log.warning("catalog %s: its write-ahead log %s-wal was damaged (%s); changes not yet in the "
                                "catalog file are lost, a rescan brings them back", path, path, dropped)
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                if "seen" not in {r[1] for r in self._db.execute("PRAGMA table_info(files)")}:
                    # When each file's version was first recorded (wall time): racy versions (origins/base.py,
                    # settled). Rows of older catalogs say 0: recorded before this daemon ever ran.
                    self._db.execute("ALTER TABLE files ADD COLUMN seen REAL NOT NULL DEFAULT 0")
                self._db.execute("INSERT OR IGNORE INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            if self._db is not None:
                self._db.close()
            if sqlite_corruption(exc):
                raise CatalogCorrupt(f"{path}: {exc}") from exc
            folder = os.path.dirname(path) or "."
            if sqlite_code(exc) in (SQLITE_CANTOPEN, SQLITE_READONLY) and (why := not_writable(folder)):
                raise CatalogError(f"the state folder {folder} is {why}: cannot open the catalog {path} "
                                   f"(SQLite: {exc})") from exc
            raise CatalogError(f"{path}: cannot open the catalog: {exc}") from exc

    # -- plumbing -----------------------------------------------------------
    def _run(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise CatalogError(f"{self.path}: {exc}") from exc

    def _transaction(self, work) -> None:
        """Run work(cursor) in one transaction: all of it lands, or none of it."""
        with self._lock:
            try:
                cur = self._db.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    work(cur)
                    cur.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may already have rolled back (e.g. SQLITE_FULL)
                        cur.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise CatalogError(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def quick_check(self, full: bool = False) -> list[str]:
        """[] when healthy, else SQLite's complaints. An error that is not damage (I/O, permission) raises."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            rows = self._run(f"PRAGMA {pragma}")
        except CatalogError as exc:
            if exc.__cause__ is not None and not sqlite_corruption(exc.__cause__):
                raise
            return [str(exc)]
        problems = [r[0] for r in rows if r[0] != "ok"]
        return problems

    # -- settings that give manifests their meaning --------------------------------------
    def meta(self, key: str) -> str | None:
        rows = self._run("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_chunk_size(self, chunk_size: int) -> bool:
        """Record the chunk size manifests are cut with. A different one drops every manifest (their chunk
        numbers mean other byte ranges now). Returns True when manifests were dropped."""
        dropped = []

        def work(cur):
            row = cur.execute("SELECT value FROM meta WHERE key = 'chunk_size'").fetchone()
            if row is not None and int(row[0]) != chunk_size:
                dropped.append(cur.execute("DELETE FROM manifests").rowcount)
            if row is None or int(row[0]) != chunk_size:
                cur.execute("INSERT OR REPLACE INTO meta VALUES('chunk_size', ?)", (str(chunk_size),))

        self._transaction(work)
        return bool(dropped)

    def generation(self) -> str:
        """A random token that changes with every write to files or inodes (triggers): what the tree is
        built from. Equal tokens mean the same files and inode numbers."""
        return self.meta("generation") or ""

    def tree_inputs(self) -> tuple[str, list[FileRow], dict[str, int]]:
        """(generation, files, inode map), read in one transaction: consistent with each other."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    generation = self.generation()
                    files, inodes = self.files(), self.inode_map()
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise CatalogError(f"{self.path}: {exc}") from exc
        return generation, files, inodes

    # -- files ----------------------------------------------------------------
    def files(self, kind: str | None = None) -> list[FileRow]:
        sql = f"SELECT {', '.join(_COLS)}, id FROM files"
        rows = self._run(sql + " WHERE kind = ?", (kind,)) if kind else self._run(sql)
        return rows_to_files(rows)

    def file(self, file_id: int) -> FileRow | None:
        rows = self._run(f"SELECT {', '.join(_COLS)}, id FROM files WHERE id = ?", (file_id,))
        return rows_to_files(rows)[0] if rows else None

    def identities(self) -> dict[str, Identity]:
        """path -> Identity for every known file: what a rescan compares against."""
        return {p: Identity(s, m, e) for p, s, m, e in self._run("SELECT path, size, mtime_ns, etag FROM files")}

    def count(self, kind: str = "track") -> int:
        return self._run("SELECT count(*) FROM files WHERE kind = ?", (kind,))[0][0]

    def upsert_files(self, rows: list[FileRow], checkpoint: dict[str, str] | None = None,
                     seen: float | None = None) -> None:
        """Insert or update files (and the scan checkpoint) in one transaction.

        A file whose identity changed loses its manifest in the same transaction,
        so chunks of the old content can never be served for the new one; its version is recorded as seen at
        `seen` (when the scan's listing had seen them all; now by default), kept for an unchanged version
        (`version_seen`).
        """
        placeholders = ", ".join("?" for _ in _COLS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLS if c != "path")
        same = " AND ".join(f"files.{c} = excluded.{c}" for c in ("size", "mtime_ns", "etag"))

        when = time.time() if seen is None else seen

        def work(cur):
            for row in rows:
                cur.execute(
                    f"INSERT INTO files({', '.join(_COLS)}, seen) VALUES({placeholders}, ?) "
                    f"ON CONFLICT(path) DO UPDATE SET {updates}, "
                    f"seen = CASE WHEN {same} THEN files.seen ELSE excluded.seen END",
                    [*(getattr(row, c) for c in _COLS), when],
                )
                cur.execute(
                    "DELETE FROM manifests WHERE file_id = (SELECT id FROM files WHERE path = ?) AND ident != ?",
                    (row.path, row.ident),
                )
                cur.execute(
                    "DELETE FROM blocks WHERE file_id = (SELECT id FROM files WHERE path = ?) AND ident != ?",
                    (row.path, row.ident),
                )
            for key, value in (checkpoint or {}).items():
                cur.execute("INSERT OR REPLACE INTO scan_state VALUES(?, ?)", (key, value))

        self._transaction(work)

    def delete_paths(self, paths: list[str]) -> None:
        def work(cur):
            for path in paths:
                cur.execute("DELETE FROM manifests WHERE file_id = (SELECT id FROM files WHERE path = ?)", (path,))
                cur.execute("DELETE FROM blocks WHERE file_id = (SELECT id FROM files WHERE path = ?)", (path,))
                _forget_inode_versions(cur, "f:" + path)
                cur.execute("DELETE FROM files WHERE path = ?", (path,))

        self._transaction(work)

    def version_seen(self, version: FileVersion) -> float:
        """When the catalog first recorded `version` of its file (wall time); now if it holds another."""
        rows = self._run("SELECT seen FROM files f WHERE id = ? AND " + _FILE_KEY_SQL + " = ?",
                         (version.file_id, version.ident))
        return rows[0][0] if rows else time.time()

    # -- manifests --------------------------------------------------------------
    def manifest(self, version: FileVersion) -> dict[int, str]:
        """chunk index -> hash of the chunks recorded for `version`."""
        return dict(self._run("SELECT chunk, hash FROM manifests WHERE file_id = ? AND ident = ?",
                              (version.file_id, version.ident)))

    def set_manifest_chunk(self, version: FileVersion, chunk: int, digest: str) -> None:
        """Record one chunk; ignored if the file's identity moved on meanwhile."""
        points.hit(points.MANIFEST_WRITE, CatalogError)
        self._run(
            "INSERT OR REPLACE INTO manifests SELECT id, ?, ?, ? FROM files "
            "WHERE id = ? AND size || ':' || mtime_ns || ':' || etag = ?",
            (version.ident, chunk, digest, version.file_id, version.ident),
        )

    def manifest_hashes(self) -> set[str]:
        return {r[0] for r in self._run("SELECT DISTINCT hash FROM manifests")}

    def manifest_rows(self) -> Iterator[tuple[int, str, int, str]]:
        yield from self._run("SELECT file_id, ident, chunk, hash FROM manifests")

    def drop_manifest_chunk(self, digest: str) -> None:
        self._run("DELETE FROM manifests WHERE hash = ?", (digest,))

    def orphan_manifest_rows(self) -> list[tuple[int, str, int, str]]:
        """Manifest rows of files the catalog no longer has."""
        return self._run("SELECT file_id, ident, chunk, hash FROM manifests "
                         "WHERE file_id NOT IN (SELECT id FROM files)")

    def stale_manifest_rows(self) -> list[tuple[int, str, int, str]]:
        """Manifest rows keyed by an identity their file no longer has (old content)."""
        return self._run("SELECT m.file_id, m.ident, m.chunk, m.hash FROM manifests m JOIN files f ON f.id = m.file_id "
                         "WHERE m.ident != " + _FILE_KEY_SQL)

    def manifest_rows_with_sizes(self) -> list[tuple[int, str, int, str, int]]:
        """(file_id, ident, chunk, hash, file size) of every current manifest row."""
        return self._run("SELECT m.file_id, m.ident, m.chunk, m.hash, f.size FROM manifests m "
                         "JOIN files f ON f.id = m.file_id "
                         "WHERE m.ident = " + _FILE_KEY_SQL)

    def delete_manifest_rows(self, rows: list[tuple]) -> None:
        self._transaction(lambda cur: cur.executemany(
            "DELETE FROM manifests WHERE file_id = ? AND ident = ? AND chunk = ?", [r[:3] for r in rows]))

    # -- blocks (blocks.py): small verified ranges of a file's version, by exact offset -----------------
    def _has_blocks(self) -> bool:
        """Whether the catalog has a blocks table (a read-only open of an older catalog has none)."""
        return bool(self._run("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blocks'"))

    def blocks(self, version: FileVersion) -> list[tuple[int, int, str]]:
        """(offset, length, hash) of the blocks recorded for `version`, by offset."""
        return self._run("SELECT offset, length, hash FROM blocks WHERE file_id = ? AND ident = ? ORDER BY offset",
                         (version.file_id, version.ident))

    def add_blocks(self, version: FileVersion, blocks: list[tuple[int, int, str]]) -> None:
        """Record blocks (offset, length, hash) of `version`; ignored if the file's identity moved on."""
        self._transaction(lambda cur: cur.executemany(
            "INSERT OR REPLACE INTO blocks SELECT id, ?, ?, ?, ? FROM files "
            "WHERE id = ? AND size || ':' || mtime_ns || ':' || etag = ?",
            [(version.ident, off, n, digest, version.file_id, version.ident) for off, n, digest in blocks]))

    def add_blocks_by_path(self, path: str, ident: str, blocks: list[tuple[int, int, str]]) -> None:
        """add_blocks for the file at `path` (what the scan knows of a file it just committed)."""
        self._transaction(lambda cur: cur.executemany(
            "INSERT OR REPLACE INTO blocks SELECT id, ?, ?, ?, ? FROM files "
            "WHERE path = ? AND size || ':' || mtime_ns || ':' || etag = ?",
            [(ident, off, n, digest, path, ident) for off, n, digest in blocks]))

    def block_rows_with_sizes(self) -> list[tuple[int, str, int, int, str, int]]:
        """(file_id, ident, offset, length, hash, file size) of every current block row."""
        if not self._has_blocks():
            return []
        return self._run("SELECT b.file_id, b.ident, b.offset, b.length, b.hash, f.size FROM blocks b "
                         "JOIN files f ON f.id = b.file_id WHERE b.ident = " + _FILE_KEY_SQL)

    def bad_block_rows(self) -> list[tuple[int, str, int, int, str]]:
        """Block rows of files the catalog no longer has, or keyed by an identity their file no longer has."""
        if not self._has_blocks():
            return []
        return self._run("SELECT b.file_id, b.ident, b.offset, b.length, b.hash FROM blocks b "
                         "LEFT JOIN files f ON f.id = b.file_id WHERE f.id IS NULL OR b.ident != " + _FILE_KEY_SQL)

    def delete_block_rows(self, rows: list[tuple]) -> None:
        self._transaction(lambda cur: cur.executemany(
            "DELETE FROM blocks WHERE file_id = ? AND ident = ? AND offset = ?", [r[:3] for r in rows]))

    # -- inodes -------------------------------------------------------------------
    def inode_map(self) -> dict[str, int]:
        return dict(self._run("SELECT key, ino FROM inodes"))

    def add_inodes(self, keys: list[str], first: int, generations: list[str] | None = None) -> dict[str, int]:
        """Give each new key a never-used inode number (>= first); returns the new map entries.
        `generations`, when given, receives the catalog's generation before and after, read in the
        same transaction.

        Numbers are never reused, even after their file is gone: the kernel may still hold one. A file key
        (`place` VERSION_SEP `identity`) replaces the keys of the place's other versions: a changed file
        gets a new number and the old one is never handed out again.
        """
        if not keys:
            return {}
        out: dict[str, int] = {}

        def work(cur):
            if generations is not None:
                generations.append(cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            row = cur.execute("SELECT value FROM meta WHERE key = 'next_ino'").fetchone()
            top = cur.execute("SELECT max(ino) FROM inodes").fetchone()[0] or 0
            nxt = max(int(row[0]) if row else 0, top + 1, first)
            for key in keys:
                place, sep, _ = key.partition(VERSION_SEP)
                if sep:
                    _forget_inode_versions(cur, place)
                cur.execute("INSERT INTO inodes VALUES(?, ?)", (key, nxt))
                out[key] = nxt
                nxt += 1
            cur.execute("INSERT OR REPLACE INTO meta VALUES('next_ino', ?)", (str(nxt),))
            if generations is not None:
                generations.append(cur.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

        self._transaction(work)
        return out

    # -- scan state -----------------------------------------------------------------
    def scan_state(self) -> dict[str, str]:
        return dict(self._run("SELECT key, value FROM scan_state"))

    def set_scan_state(self, **values: str) -> None:
        self._transaction(
            lambda cur: [cur.execute("INSERT OR REPLACE INTO scan_state VALUES(?, ?)", (k, v)) for k, v in values.items()]
        )

    # -- pins (musicfs.library.pins): tree paths kept whole in the cache ---------------------------------------
    def pins(self) -> list[str]:
        """Pinned tree paths, in the order they were pinned."""
        return [r[0] for r in self._run("SELECT path FROM pins ORDER BY added, path")]

    def add_pins(self, paths: list[str]) -> None:
        def work(cur):
            top = cur.execute("SELECT coalesce(max(added), 0) FROM pins").fetchone()[0]
            cur.executemany("INSERT OR IGNORE INTO pins(path, added) VALUES(?, ?)",
                            [(p, top + n) for n, p in enumerate(paths, 1)])

        self._transaction(work)

    def remove_pins(self, paths: list[str]) -> None:
        self._transaction(lambda cur: cur.executemany("DELETE FROM pins WHERE path = ?", [(p,) for p in paths]))


def _forget_inode_versions(cur, place: str) -> None:
    """Drop the inode keys of every version of one place (and its key from before versions existed)."""
    cur.execute("DELETE FROM inodes WHERE key = ? OR (key >= ? AND key < ?)",
                (place, place + VERSION_SEP, place + chr(ord(VERSION_SEP) + 1)))


