"""The cache's SQLite index (hash, size, atime): opened checked, written with retries, checkpointed; derived data."""

from __future__ import annotations

import logging
import os
import sqlite3

from ..failpoints import fail_point
from ..shared import (
    SQLITE_BUSY,
    SQLITE_CANTOPEN,
    SQLITE_FULL,
    SQLITE_IOERR,
    SQLITE_LOCKED,
    SQLITE_READONLY,
    CacheFull,
    CacheUnavailable,
    CasError,
    CasIndexError,
    move_aside,
    points,
    sqlite_code,
    sqlite_corruption,
)

log = logging.getLogger(__package__ + ".cas")  # one component, one logger: CasStore's

INDEX_NAME = "index.db"
_DISK_CODES = {SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN}



def _close_quietly(db: sqlite3.Connection | None) -> None:
    if db is not None:
        try:
            db.close()
        except sqlite3.Error:
            pass


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


class ChunkIndex:
    """CasStore's part for this module's concern (see its docstring); state lives in CasStore."""

    # -- opening ------------------------------------------------------------------
    @property
    def index_path(self) -> str:
        return os.path.join(self.root, INDEX_NAME)

    def _open_checked_index(self, path: str) -> tuple[sqlite3.Connection | None, str]:
        """Connect to an existing index and check it: (connection, ''), or (None, what is wrong) after
        moving a damaged file aside."""
        db, damage = None, ""
        try:
            db = self._connect(path)
            damage = self._check_index(db)
        except sqlite3.DatabaseError as exc:
            if not sqlite_corruption(exc):
                _close_quietly(db)
                raise
            damage = str(exc)
        if not damage:
            return db, ""
        _close_quietly(db)
        dest = move_aside(path, ("-wal", "-shm"))
        log.warning("cache: index %s is damaged (%s): moved to %s; rebuilding it from the chunk files",
                    path, damage, dest)
        return None, damage

    def _connect(self, path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # a small WAL: the cache disk may be nearly full (or tiny), and the index is small
            db.execute("PRAGMA wal_autocheckpoint=64")
            db.execute("PRAGMA journal_size_limit=1048576")
            db.execute("CREATE TABLE IF NOT EXISTS chunks(hash TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                       "atime REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS probe(id INTEGER PRIMARY KEY, at REAL NOT NULL)")
        except BaseException:
            db.close()
            raise
        return db

    def _check_index(self, db: sqlite3.Connection) -> str:
        """'' when the index is sound, else what is wrong with it."""
        rows = db.execute("PRAGMA integrity_check" if self.full_check else "PRAGMA quick_check").fetchall()
        problems = [r[0] for r in rows if r[0] != "ok"]
        if problems:
            return "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        try:
            db.execute("SELECT hash, size, atime FROM chunks LIMIT 1").fetchall()
        except sqlite3.OperationalError as exc:
            return f"unexpected schema: {exc}"
        return ""

    def _write_index(self, sql: str, args, many: bool = False) -> None:
        """One index write. SQLITE_FULL -> CacheFull, a disk error -> CasError, anything else (corruption,
        a dead connection) -> CasIndexError: the index is then rebuilt."""
        with self._db_lock:
            if self._db is None:
                raise CacheUnavailable(f"cache: {self.root} is unavailable ({self.open_error or 'closed'})")
            try:
                if fail_point(points.CAS_INDEX_WRITE) is not None:
                    raise sqlite3.DatabaseError("database disk image is malformed (injected by failpoint)")
                if many:
                    self._db.executemany(sql, args)
                else:
                    self._db.execute(sql, args)
            except sqlite3.Error as exc:
                code = sqlite_code(exc)
                if code == SQLITE_FULL:
                    raise CacheFull(f"cache: index store is full: {exc}") from exc
                if code in _DISK_CODES:
                    raise CasError(f"cache: index store {self.index_path} cannot be written: {exc}") from exc
                raise CasIndexError(f"cache: index store {self.index_path} failed: {exc}") from exc

    def _checkpoint(self) -> None:
        """Fold the WAL back into the index and truncate it (gives its disk space back)."""
        with self._db_lock:
            try:
                if self._db is not None:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass

    def flush_atimes(self) -> None:
        with self._lock:
            touched, self._touched = self._touched, {}
        if touched:
            self._write_index("UPDATE chunks SET atime = ? WHERE hash = ?", [(t, h) for h, t in touched.items()],
                              many=True)

    def _index_file_damage(self, path: str) -> str:
        """'' when the index file is sound, else what is wrong with it (checked on a connection of its own)."""
        db = None
        try:
            db = self._connect(path)
            return self._check_index(db)
        except sqlite3.DatabaseError as exc:
            if not sqlite_corruption(exc):
                raise
            return str(exc)
        finally:
            _close_quietly(db)

    def _close_db(self) -> None:
        with self._db_lock:
            _close_quietly(self._db)
            self._db = None
