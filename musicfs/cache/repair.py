"""The cache compared with its chunk files and mended: reconciliation, index rebuilds, the probe of a failed store."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..failpoints import fail_point
from ..shared import (
    CacheUnavailable,
    CasError,
    CasIndexError,
    MusicFSError,
    move_aside,
    points,
)
from .files import (
    TMP,
    chunk_hash,
    raise_if_fd_exhausted,
    scan_chunk_sizes,
    unlink_quietly,
)
from .index import describe_error

log = logging.getLogger(__package__ + ".cas")  # one component, one logger: CasStore's

# a put of a digest the background reconciliation holds waits at most this long (the claim covers one file)
CLAIM_WAIT = 30.0



@dataclass
class RebuildReport:
    chunks: int = 0
    bytes: int = 0
    quarantined: list[str] = field(default_factory=list)
    reused: bool = False  # the index file was sound: reopened and reconciled, not rebuilt

    def summary(self) -> str:
        bad = f"; {len(self.quarantined)} failed verification and were quarantined" if self.quarantined else ""
        if self.reused:
            return f"{self.chunks} chunks ({self.bytes} bytes) indexed, reconciled with the chunk files{bad}"
        return f"{self.chunks} chunk files ({self.bytes} bytes) verified and indexed{bad}"


@dataclass
class ReconcileReport:
    """What CasStore.reconcile() found and fixed."""
    indexed: int = 0  # index rows compared
    files: int = 0  # chunk files compared
    dropped: int = 0  # index rows whose file was gone
    adopted: int = 0  # chunk files without a row, verified and indexed
    removed: int = 0  # chunk files without a row whose bytes were wrong (quarantined)
    resized: int = 0  # rows whose size differed from the file's (fixed or quarantined)
    skipped: int = 0  # candidates a concurrent put, eviction or read settled first

    def summary(self) -> str:
        return (f"{self.indexed} index rows and {self.files} chunk files compared: {self.dropped} rows without a file "
                f"dropped, {self.adopted} orphans adopted, {self.removed} bad orphans quarantined, {self.resized} sizes "
                f"fixed")


class Repair:
    """CasStore's part for this module's concern (see its docstring); state lives in CasStore."""

    def _reconcile(self) -> None:
        """Index rows without a file are dropped; chunk files without a row are verified and adopted."""
        indexed = {h: s for h, s in self._db.execute("SELECT hash, size FROM chunks")}
        on_disk = {digest for digest, _ in self._walk_chunk_files()}
        gone = [(d,) for d in indexed if d not in on_disk]
        if gone:
            self._db.executemany("DELETE FROM chunks WHERE hash = ?", gone)
            log.info("cache: dropped %d index rows whose chunk files are gone", len(gone))
        for digest in sorted(on_disk - indexed.keys()):
            self._adopt_orphan(digest)
        if self.full_check:  # after an unclean stop: sizes too (cheap: one stat each)
            for digest in on_disk & indexed.keys():
                try:
                    size = os.stat(self._path(digest)).st_size
                except FileNotFoundError:
                    continue
                if size != indexed[digest]:
                    self._db.execute("DELETE FROM chunks WHERE hash = ?", (digest,))
                    self._adopt_orphan(digest)

    # -- the background reconciliation (a clean start) ----------------------------------------
    @contextlib.contextmanager
    def _claim(self, digest: str) -> Iterator[bool]:
        """Hold `digest` against puts while the reconciliation decides about it: True when held, False when a
        put of it is under way (the put settles it: its file is written before its row)."""
        with self._lock:
            if self._putting[digest]:
                held = False
            else:
                held = True
                self._claimed.add(digest)
        try:
            yield held
        finally:
            if held:
                with self._lock:
                    self._claimed.discard(digest)
                    self._released.notify_all()

    def reconcile(self, should_stop: Callable[[], bool] | None = None) -> ReconcileReport:
        """The disk-versus-index reconciliation a clean start defers until after READY (blocking; the cache
        task runs it in a cache thread while the store serves reads and puts).

        Index rows whose file is gone are dropped, chunk files without a row are verified and adopted (wrong
        bytes: quarantined), rows whose size differs from the file are verified and fixed. Safe beside live
        traffic: each candidate is decided on its own, claimed against a put of the same digest and checked
        again on disk, and a put wins (its file is written before its row, so a chunk being put is never taken
        for an orphan and never dropped); usage and the LRU change with each fix, under the memory lock, so the
        quota and eviction see exact figures once it is done and consistent ones meanwhile.
        Raises CasError (CasIndexError for a failing index) like any cache call; pending stays set then."""
        self._require()
        self.load_lru()  # has() and usage must know every indexed chunk
        report = ReconcileReport()
        with self._db_lock:
            if self._db is None:
                raise CacheUnavailable(f"cache: {self.root} is unavailable ({self.open_error or 'closed'})")
            try:
                indexed = dict(self._db.execute("SELECT hash, size FROM chunks"))
            except sqlite3.Error as exc:
                raise CasIndexError(f"cache: index store {self.index_path} failed: {exc}") from exc
        try:
            on_disk = dict(scan_chunk_sizes(self.root))
        except OSError as exc:
            raise_if_fd_exhausted(exc, "listing the chunk files")
            raise CasError(f"cache: cannot list the chunk files: {exc.strerror or exc}") from exc
        report.indexed, report.files = len(indexed), len(on_disk)
        gone = [d for d in indexed if d not in on_disk]
        orphans = sorted(d for d in on_disk if d not in indexed)
        resized = [d for d, size in on_disk.items() if d in indexed and indexed[d] != size]
        for work, digests in ((self._reconcile_gone, gone), (self._reconcile_orphan, orphans),
                              (self._reconcile_size, resized)):
            for digest in digests:
                if should_stop is not None and should_stop():
                    raise CasError("cache: index reconciliation interrupted")
                with self._claim(digest) as held:
                    if not held:
                        report.skipped += 1
                        continue
                    try:
                        work(digest, report)
                    except OSError as exc:
                        raise_if_fd_exhausted(exc, f"reconciling chunk {digest[:12]}")
                        raise CasError(f"cache: cannot reconcile chunk {digest[:12]}: {exc.strerror or exc}") from exc
        if report.dropped:
            log.info("cache: dropped %d index rows whose chunk files are gone", report.dropped)
        self.reconcile_pending = False
        self.reconciliations += 1
        return report

    def _reconcile_gone(self, digest: str, report: ReconcileReport) -> None:
        if os.path.exists(self._path(digest)):  # put again (or never gone): it stays
            report.skipped += 1
            return
        self._forget(digest)
        report.dropped += 1

    def _reconcile_orphan(self, digest: str, report: ReconcileReport) -> None:
        if self.has(digest):  # a put indexed it since the listing
            report.skipped += 1
            return
        path = self._path(digest)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            report.skipped += 1
            return
        if chunk_hash(data) != digest:
            dest = self._quarantine_file(digest)
            log.warning("cache: removed orphan chunk %s whose bytes do not match its name; moved to %s",
                        digest[:12], dest)
            report.removed += 1
            return
        self._write_index("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", (digest, len(data), time.time()))
        with self._lock:
            if digest not in self._lru:
                self._lru[digest] = len(data)
                self._used += len(data)
        log.info("cache: adopted chunk %s found on disk but not in the index", digest[:12])
        report.adopted += 1

    def _reconcile_size(self, digest: str, report: ReconcileReport) -> None:
        try:
            with open(self._path(digest), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            self._forget(digest)
            report.dropped += 1
            return
        report.resized += 1
        if chunk_hash(data) != digest:
            self.quarantine(digest)  # moved aside and forgotten: a later read fetches it again
            return
        self._write_index("UPDATE chunks SET size = ? WHERE hash = ?", (len(data), digest))
        with self._lock:
            if digest in self._lru:
                self._used += len(data) - self._lru[digest]
                self._lru[digest] = len(data)
        log.info("cache: fixed the indexed size of chunk %s", digest[:12])

    def _adopt_orphan(self, digest: str) -> None:
        """A chunk file that never made it into the index: keep it if its bytes are right."""
        path = self._path(digest)
        with open(path, "rb") as fh:
            data = fh.read()
        if chunk_hash(data) == digest:
            self._db.execute("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", (digest, len(data), time.time()))
            log.info("cache: adopted chunk %s found on disk but not in the index", digest[:12])
        else:
            dest = self._quarantine_file(digest)
            log.warning("cache: removed orphan chunk %s whose bytes do not match its name; moved to %s",
                        digest[:12], dest)

    def _rebuild_from_files(self, should_stop: Callable[[], bool] | None = None) -> RebuildReport:
        """Fill the (empty) index from the chunk files: the name is the hash, each one is verified."""
        report = RebuildReport()
        rows = []
        for digest, path in self._walk_chunk_files():
            if should_stop is not None and should_stop():
                raise CasError("cache: index rebuild interrupted")
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if chunk_hash(data) != digest:
                dest = self._quarantine_file(digest)
                log.warning("cache: chunk %s failed verification; moved to %s", digest[:12], dest)
                report.quarantined.append(digest)
                continue
            rows.append((digest, len(data), max(st.st_atime, st.st_mtime)))
            report.chunks += 1
            report.bytes += len(data)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return report

    # -- health -----------------------------------------------------------------------
    def probe(self) -> None:
        """One health check of the cache disk and its index (blocking). Reopens an unavailable store.

        Raises CasError (or CasIndexError, TooManyOpenFiles) when the cache cannot be used right now.
        """
        if fail_point(points.CAS_PROBE) is not None:
            raise CasError("cache: probe failed (injected by failpoint)")
        if not self.available:
            with self._db_lock:
                if not self.available:
                    try:
                        self._open()
                    except (OSError, sqlite3.Error, MusicFSError) as exc:
                        self._close_db()
                        self.open_error = describe_error(exc)
                        raise CasError(f"cache: cannot open {self.root}: {self.open_error}") from exc
                    log.info("cache: %s opened (%d chunks, %d bytes)", self.root, len(self._lru), self._used)
        path = os.path.join(self.root, TMP, f"probe.{os.getpid()}.{threading.get_ident()}")
        payload = os.urandom(4096)
        try:
            with open(path, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            with open(path, "rb") as fh:
                back = fh.read()
            os.unlink(path)
        except OSError as exc:
            unlink_quietly(path)
            raise_if_fd_exhausted(exc, "probing the cache disk")
            raise CasError(f"cache: probe of {self.root} failed: {exc.strerror or exc}") from exc
        if back != payload:
            raise CasError(f"cache: probe of {self.root} read back different bytes")
        self._write_index("INSERT OR REPLACE INTO probe VALUES(1, ?)", (time.time(),))

    def rebuild_index(self, should_stop: Callable[[], bool] | None = None) -> RebuildReport:
        """Recover the index store after it failed at runtime (blocking; row 6.3).

        A damaged (or lost) index file is moved aside and rebuilt from the chunk files, each verified; a
        sound one (the failure was its connection) is reopened and reconciled with the chunk files. Either
        way a test write must pass before the store is available again; else CasError, and the caller
        retries later. Until it returns the store is unavailable; pins survive.
        """
        with self._db_lock:
            self.available = False
            self.open_error = "the index is being rebuilt"
            self._close_db()
            path = self.index_path
            try:
                report = self._recover_index(path, should_stop)
            except (OSError, sqlite3.Error, CasError) as exc:
                self._close_db()
                self.open_error = f"index rebuild failed: {describe_error(exc)}"
                raise CasError(f"cache: cannot rebuild the index of {self.root}: {describe_error(exc)}") from exc
            except BaseException:
                self._close_db()
                raise
            report.chunks, report.bytes = len(self._lru), self._used
            self.last_rebuild = report
            self.available = True
            self.open_error = ""
        log.info("cache: index %s %s: %s", path, "reopened (its file is sound)" if report.reused else "rebuilt",
                 report.summary())
        return report

    def _recover_index(self, path: str, should_stop: Callable[[], bool] | None) -> RebuildReport:
        """rebuild_index's work: reopen and reconcile a sound index file, else move it aside and rebuild;
        then reload the LRU and pass a test write. Caller holds _db_lock and cleans up on failure."""
        damage = self._index_file_damage(path) if os.path.exists(path) else "the file is gone"
        self._reset_memory()
        if damage:
            if os.path.exists(path):
                dest = move_aside(path, ("-wal", "-shm"))
                log.warning("cache: index %s failed (%s); moved to %s; rebuilding it from the chunk files",
                            path, damage, dest)
            self._db = self._connect(path)
            report = self._rebuild_from_files(should_stop)
        else:
            self._db = self._connect(path)
            self._reconcile()
            report = RebuildReport(reused=True)
        self._load_lru()
        self._write_index("INSERT OR REPLACE INTO probe VALUES(1, ?)", (time.time(),))
        self.reconcile_pending = False  # reconciled (or rebuilt) just now
        return report
