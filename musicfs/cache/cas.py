"""CasStore: chunk files named by their SHA-256, written atomically, verified on every read.

Layout under the cache dir: chunks/ab/<hash>, tmp/, quarantine/, index.db (hash, size, atime).
The index is derived data:
- at open it gets SQLite's quick_check (integrity_check with `full_check`, after an unclean stop); a
  damaged index is moved aside (`index.db.damaged-<time>`, never deleted) and rebuilt from the chunk
  files, each verified against its name; a lost index is rebuilt the same way (rows 2.4, 3.5);
- chunk files missing from it (a crash between rename and insert) are verified and adopted; index rows
  without a file are dropped; half-written temp files are removed (row 5.7). After a clean stop
  (`reconcile_later`) the constructor only checks the index: the cache task loads the LRU (`load_lru`) and
  runs `reconcile()` after READY, beside live reads and puts (every read is verified, a missing file is a
  miss), so the work before READY does not grow with the number of chunks; after an unclean stop both are
  done in the constructor, sizes included;
- until the LRU is loaded, has() knows only what this run put or read: `lookup()` (ChunkCache.get) finds a
  chunk of an earlier run by its file, verified; put, evict_to and reconcile load the LRU first (usage exact
  before the quota decides; pins are counters of their own and never evicted); what this run forgot is not
  brought back by the load;
- when it fails at runtime (`CasIndexError`), `rebuild_index()` does the same while the reader serves
  reads from the origins (row 6.3).
A store whose disk cannot be opened (read-only, failing, full of errors) stays *unavailable*: every call
raises CacheUnavailable and `probe()` retries the open (row 6.6). Damaged chunk files go to quarantine/, which keeps the newest of them within QUARANTINE_FILES files and
QUARANTINE_SHARE of the quota (older ones are deleted, with one log line); its bytes count against the quota.

Eviction has two tiers below the pins: unpinned chunks go in LRU order, *protected* ones (`protect`: chunks
of the track being played and of the prefetched next track, see reader.py) only once no unprotected chunk
is left to evict, in LRU order too; pinned ones never.

Locks: `_lock` guards the in-memory LRU, sizes, pins and protections and is never held across I/O, so a hung
disk never blocks has/usage/pin/unpin/protect/unprotect (called on the trio loop); `_db_lock` serialises the
SQLite connection.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from typing import Iterator

from ..failpoints import fail_point
from ..shared import (
    CacheFull,
    CacheUnavailable,
    CasError,
    ChunkCorrupt,
    ChunkMissing,
    MusicFSError,
    points,
)
from .eviction import Eviction, RefCounts
from .files import (
    QUARANTINE_FILES,
    QUARANTINE_SHARE,
    ChunkFiles,
    chunk_hash,
    raise_if_fd_exhausted,
    unlink_quietly,
)
from .index import ChunkIndex, describe_error
from .repair import CLAIM_WAIT, RebuildReport, Repair

log = logging.getLogger(__name__)


class CasStore(ChunkFiles, ChunkIndex, Repair, Eviction):
    """Content-addressed chunk store with a byte quota and LRU eviction.

    Thread-safe. Eviction runs from the high watermark down to the low one and
    never removes a pinned chunk (one that an open file is using); protected chunks go last.
    """

    def __init__(self, root: str, quota: int, high: float = 0.95, low: float = 0.85, *, full_check: bool = False,
                 reconcile_later: bool = False, quarantine_files: int = QUARANTINE_FILES,
                 quarantine_share: float = QUARANTINE_SHARE):
        """`reconcile_later` (a clean start, never with `full_check`): the constructor loads the checked index
        but does not compare it with the chunk files; `reconcile_pending` stays True until the cache task
        runs `reconcile()` (cache_health.py), after READY."""
        self.root = root
        self.reconcile_later = reconcile_later and not full_check
        self.reconcile_pending = False
        self.reconciliations = 0  # completed disk-versus-index reconciliations (tests, status)
        self.quota = quota
        self.high, self.low = high, low
        self.full_check = full_check
        self.quarantine_files = quarantine_files
        self.quarantine_bytes_max = int(quota * quarantine_share)
        self._quarantined = (0, 0)  # (bytes, files) in quarantine/, as of the last prune
        self._lock = threading.RLock()  # memory only, never held across I/O
        self._db_lock = threading.RLock()  # the SQLite connection
        self._db: sqlite3.Connection | None = None
        self._lru: collections.OrderedDict[str, int] = collections.OrderedDict()
        # The LRU is loaded from the index by load_lru(): at open, or after READY on a clean start (see load_lru);
        # until then _lru holds only what this run put or read, and _dropped what it forgot
        self._loaded = False
        self._dropped: set[str] = set()
        self._load_lock = threading.Lock()  # one loader; the others wait for it
        self.lru_loads = 0  # completed LRU loads (tests)
        self.pins = RefCounts()  #: held chunks are never evicted (open files' chunks, pinned albums)
        self.protection = RefCounts()  #: held chunks are evicted only after all others (the track playing, the next head)
        self._used = 0
        self._touched: dict[str, float] = {}
        # digests being put (count) and digests claimed by the background reconciliation: a put waits while
        # its digest is claimed, a claim skips a digest being put (see reconcile)
        self._putting: collections.Counter[str] = collections.Counter()
        self._claimed: set[str] = set()
        self._released = threading.Condition(self._lock)
        self.available = False
        self.open_error = ""
        self.last_rebuild: RebuildReport | None = None
        try:
            with self._db_lock:
                self._open()
        except (OSError, sqlite3.Error, MusicFSError) as exc:
            self._close_db()
            self.open_error = describe_error(exc)
            log.error("cache: cannot open %s (%s); reads go straight to the origins until a probe can open it",
                      root, self.open_error)


    def _open(self) -> None:
        """Open (or reopen) the store: folders, temp leftovers, the checked index, the LRU. Caller holds _db_lock."""
        self._prepare_folders()
        self._prune_quarantine()
        path = self.index_path
        existed = os.path.exists(path)
        db, damage = self._open_checked_index(path) if existed else (None, "")
        if db is None:
            db = self._connect(path)
        self._db = db
        self._reset_memory()
        if damage or (not existed and next(self._walk_chunk_files(), None) is not None):
            if not damage:
                log.warning("cache: index %s is missing; rebuilding it from the chunk files", path)
            self.last_rebuild = self._rebuild_from_files()
            log.warning("cache: index %s rebuilt: %s", path, self.last_rebuild.summary())
            self.reconcile_pending = False
        elif self.reconcile_later and self.reconciliations == 0:
            # a clean start: the cache task loads the LRU (load_lru) and reconciles (reconcile()) after READY
            self.reconcile_pending = True
        else:
            self._reconcile()
            self.reconcile_pending = False
        if not self.reconcile_pending:
            self._load_lru()
        self.available = True
        self.open_error = ""


    def _reset_memory(self) -> None:
        """Forget the in-memory LRU, usage and access times (pins and protections survive)."""
        with self._lock:
            self._lru.clear()
            self._used = 0
            self._touched.clear()
            self._loaded = False
            self._dropped.clear()

    def lookup(self, digest: str) -> bytes | None:
        """The verified chunk, or None when the cache does not hold it (blocking). Unlike has(), it also
        answers before the LRU is loaded: then the chunk file itself decides (its bytes are verified against
        its name, as every read's), and a chunk found this way is known to memory from then on.
        ChunkCorrupt (after quarantine) like get(); ChunkMissing when a chunk known to memory lost its file."""
        if self._loaded or self.has(digest):
            return self.get(digest) if self.has(digest) else None
        data = self._read_verified(digest)
        if data is None:
            return None  # not cached (a row without a file is the reconciliation's business)
        with self._lock:
            if digest in self._lru:
                self._lru.move_to_end(digest)
            elif not self._loaded and digest not in self._dropped:
                # its file is on disk (and counts against the quota); the load keeps it at the young end.
                # Once loaded, memory is complete: a digest missing there was evicted since the read.
                self._lru[digest] = len(data)
                self._used += len(data)
            if digest in self._lru:
                self._touched[digest] = time.time()
        return data

    # -- the index store ------------------------------------------------------------
    def _require(self) -> None:
        if not self.available:
            raise CacheUnavailable(f"cache: {self.root} is unavailable ({self.open_error or 'closed'})")

    # -- public -------------------------------------------------------------
    def has(self, digest: str) -> bool:
        with self._lock:
            return digest in self._lru

    def usage(self) -> tuple[int, int]:
        """(bytes, chunks) held."""
        with self._lock:
            return self._used, len(self._lru)

    def get(self, digest: str) -> bytes:
        """The chunk's bytes, verified. ChunkMissing / ChunkCorrupt (after quarantine) otherwise."""
        data = self._read_verified(digest, injectable=True)
        if data is None:
            self._forget(digest)
            raise ChunkMissing(f"chunk {digest} is not in the cache")
        with self._lock:
            if digest in self._lru:
                self._lru.move_to_end(digest)
                self._touched[digest] = time.time()
        return data

    def _read_verified(self, digest: str, injectable: bool = False) -> bytes | None:
        """The chunk file's bytes, verified against its name; None when there is no file. A bad one is
        quarantined (ChunkCorrupt); a disk error is CasError (TooManyOpenFiles for EMFILE). `injectable`: the
        `cas-get` failpoint may fail it as a failing disk would."""
        self._require()
        try:
            if injectable and fail_point(points.CAS_GET) is not None:
                raise OSError(errno.EIO, "Input/output error (injected by failpoint)")
            with open(self._path(digest), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise_if_fd_exhausted(exc, f"reading chunk {digest[:12]} from the cache")
            raise CasError(f"cache: cannot read chunk {digest[:12]}: {exc.strerror}") from exc
        if chunk_hash(data) != digest:
            self.quarantine(digest)
            raise ChunkCorrupt(f"chunk {digest} failed verification and was quarantined")
        return data

    def put(self, data: bytes) -> str:
        """Store bytes, return their hash. Atomic: temp file, fsync, rename, then index.

        Disk full (ENOSPC, or SQLITE_FULL on the index): evict and retry once, else CacheFull.
        """
        self._require()
        self.load_lru()  # usage must be exact before the quota decides (and has() must know every chunk)
        digest = chunk_hash(data)
        if self.has(digest):
            return digest
        with self._putting_digest(digest):
            self._make_room(len(data))
            self._write_chunk_file(digest, data)
            points.hit(points.CAS_PUT_AFTER_WRITE_BEFORE_INDEX, CasError)
            self._index_new_chunk(digest, len(data))
            with self._lock:
                if digest not in self._lru:
                    self._used += len(data)
                self._lru[digest] = len(data)
        return digest

    @contextlib.contextmanager
    def _putting_digest(self, digest: str) -> Iterator[None]:
        """put's mark on its digest: the background reconciliation never decides about a digest being put,
        and a put waits (bounded) while the reconciliation holds its digest."""
        with self._lock:
            deadline = time.monotonic() + CLAIM_WAIT
            while digest in self._claimed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CasError(f"cache: chunk {digest[:12]} held by the index reconciliation for {CLAIM_WAIT:g}s")
                self._released.wait(left)
            self._putting[digest] += 1
        try:
            yield
        finally:
            with self._lock:
                self._putting[digest] -= 1
                if self._putting[digest] <= 0:
                    del self._putting[digest]


    def _index_new_chunk(self, digest: str, size: int) -> None:
        """put's index row; SQLITE_FULL: evict, checkpoint and retry once, else drop the file and CacheFull."""
        row = (digest, size, time.time())
        try:
            self._write_index("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", row)
        except CacheFull:
            self._evict_for_disk(size)
            self._checkpoint()
            try:
                self._write_index("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", row)
            except CacheFull:
                unlink_quietly(self._path(digest))
                raise


    def _remove(self, digest: str) -> int:
        try:
            os.unlink(self._path(digest))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise_if_fd_exhausted(exc, f"evicting chunk {digest[:12]}")
            raise CasError(f"cache: cannot evict chunk {digest[:12]}: {exc.strerror}") from exc
        return self._forget(digest)

    def _forget(self, digest: str) -> int:
        with self._lock:
            size = self._lru.pop(digest, 0)
            self._used -= size
            self._touched.pop(digest, None)
            if not self._loaded:
                self._dropped.add(digest)  # a load of the LRU running or to come must not bring it back
        self._write_index("DELETE FROM chunks WHERE hash = ?", (digest,))
        return size

    def quarantine(self, digest: str) -> None:
        """Move a bad chunk aside (kept for inspection, never served again)."""
        points.hit(points.CAS_QUARANTINE, CasError)
        try:
            dest = self._quarantine_file(digest)
            log.warning("cache: chunk %s failed verification; moved to %s", digest[:12], dest)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._forget(digest)  # never served again, even if it could not be moved
            raise CasError(f"cache: chunk {digest[:12]} failed verification and cannot be moved to quarantine: "
                           f"{exc.strerror}") from exc
        self._forget(digest)


    def close(self) -> None:
        try:
            self.flush_atimes()
        except CasError as exc:
            log.warning("cache: access times not saved at close: %s", exc)
        with self._db_lock:
            self._close_db()
            self.available = False
            self.open_error = "closed"


