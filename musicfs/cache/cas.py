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
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

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
    ChunkCorrupt,
    ChunkMissing,
    MusicFSError,
    TooManyOpenFiles,
    move_aside,
    points,
    sqlite_code,
    sqlite_corruption,
)

log = logging.getLogger(__name__)

INDEX_NAME = "index.db"
_DISK_CODES = {SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN}
_FD_ERRNOS = {errno.EMFILE, errno.ENFILE}
# quarantine/ keeps the newest damaged files for inspection, within both bounds; its bytes count against
# the quota (a soak once left 91 MiB there beside a 40 MiB quota).
QUARANTINE_FILES = 64
QUARANTINE_SHARE = 0.10  # of the quota
# a put of a digest the background reconciliation holds waits at most this long (the claim covers one file)
CLAIM_WAIT = 30.0


def chunk_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HASH_NAME = re.compile(r"[0-9a-f]{64}")


def is_hash_name(name: str) -> bool:
    # one regex match, not a generator over 64 characters: start-up walks every chunk file (100k: 0.8 s)
    return _HASH_NAME.fullmatch(name) is not None


def raise_if_fd_exhausted(exc: OSError, doing: str) -> None:
    """EMFILE/ENFILE is the process running out of descriptors, not a broken cache disk."""
    if exc.errno in _FD_ERRNOS:
        raise TooManyOpenFiles(f"too many open files ({errno.errorcode[exc.errno]}) {doing}; this request fails "
                               f"with EIO, later ones succeed once descriptors are free (raise LimitNOFILE= if "
                               f"it persists)") from exc


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


def scan_chunk_sizes(root: str) -> Iterator[tuple[str, int]]:
    """(digest, size) of every well-named chunk file in its right folder under `root`/chunks (one scandir per
    folder, one stat per file)."""
    base = os.path.join(root, "chunks")
    try:
        subs = sorted(os.listdir(base))
    except FileNotFoundError:
        return
    for sub in subs:
        try:
            with os.scandir(os.path.join(base, sub)) as entries:
                for entry in entries:
                    name = entry.name
                    if name[:2] != sub or not is_hash_name(name):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            yield name, entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # evicted since the listing
        except (FileNotFoundError, NotADirectoryError):
            continue


def walk_chunk_files(root: str, strays: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(digest, path) of every well-named chunk file in its right folder under `root`/chunks, sorted; the
    paths of anything else there go to `strays` when it is given."""
    base = os.path.join(root, "chunks")
    for sub in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        folder = os.path.join(base, sub)
        if not os.path.isdir(folder):
            if strays is not None:
                strays.append(folder)
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if is_hash_name(name) and name[:2] == sub and (strays is None or os.path.isfile(path)):
                yield name, path
            elif strays is not None:
                strays.append(path)


@dataclass(frozen=True)
class ChunkCheck:
    digest: str
    path: str
    size: int
    ok: bool  # its bytes hash to its name


class ChunkVerification:
    """The result of CasStore.verify_chunks: iterate for one ChunkCheck per chunk file, verified as it goes."""

    def __init__(self, root: str):
        self.strays: list[str] = []
        self.files = list(walk_chunk_files(root, self.strays))

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[ChunkCheck]:
        for digest, path in self.files:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                continue  # evicted by a running daemon since the listing
            yield ChunkCheck(digest, path, len(data), chunk_hash(data) == digest)


class CasStore:
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
        self._pins: collections.Counter[str] = collections.Counter()
        self._protected: collections.Counter[str] = collections.Counter()  # evicted only after the others
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
            self.open_error = _describe(exc)
            log.error("cache: cannot open %s (%s); reads go straight to the origins until a probe can open it",
                      root, self.open_error)

    # -- opening ------------------------------------------------------------------
    @property
    def index_path(self) -> str:
        return os.path.join(self.root, INDEX_NAME)

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

    def _prepare_folders(self) -> None:
        """Make chunks/, tmp/ and quarantine/, and empty tmp/."""
        for sub in ("chunks", "tmp", "quarantine"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        tmp = os.path.join(self.root, "tmp")
        for name in os.listdir(tmp):
            try:
                os.unlink(os.path.join(tmp, name))  # half-written chunks of a crashed run
            except FileNotFoundError:
                pass

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

    def _reset_memory(self) -> None:
        """Forget the in-memory LRU, usage and access times (pins and protections survive)."""
        with self._lock:
            self._lru.clear()
            self._used = 0
            self._touched.clear()
            self._loaded = False
            self._dropped.clear()

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

    def _walk_chunk_files(self) -> Iterator[tuple[str, str]]:
        """(digest, path) of every well-named chunk file in its right folder."""
        return walk_chunk_files(self.root)

    @staticmethod
    def verify_chunks(root: str) -> "ChunkVerification":
        """Read-only: every chunk file under `root` hashed against its name (for `musicfs fsck`).

        Opens no index, creates, moves and deletes nothing, so it may run beside a daemon using the cache.
        The result lists the files up front (len() is their number, for progress) and verifies them
        one at a time as it is iterated; what is not a chunk file (bad name, wrong folder) is in `strays`."""
        return ChunkVerification(root)

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

    def _load_lru(self) -> None:
        """The LRU from the index, replacing what memory holds (the store is being opened or rebuilt: nothing
        else uses it). Caller holds _db_lock."""
        lru = self._select_lru()
        used = sum(lru.values())
        with self._lock:
            self._lru = lru
            self._used = used
            self._loaded = True
            self._dropped.clear()
        self.lru_loads += 1

    def _select_lru(self) -> collections.OrderedDict[str, int]:
        """One SELECT in atime order straight into an OrderedDict (no per-row objects). Caller holds _db_lock."""
        return collections.OrderedDict(self._db.execute("SELECT hash, size FROM chunks ORDER BY atime"))

    @property
    def loaded(self) -> bool:
        """Whether the in-memory LRU holds every indexed chunk (has/usage are exact). False after a clean
        start until load_lru() ran (the cache task runs it after READY; put, evict_to and reconcile run it
        first themselves; lookup answers without it)."""
        return self._loaded

    def load_lru(self) -> None:
        """Load the LRU from the index unless it is loaded (blocking; O(chunks), so a clean start leaves it
        out of the way to READY). Safe beside live traffic: what this run put or read since the open is more
        recent than any stored access time and goes to the young end; what it forgot (evicted, quarantined,
        missing) stays forgotten. One loader at a time; the others wait for it. CasIndexError when the index
        cannot be read (the store is then rebuilt, as for any failed index)."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            self._require()
            with self._db_lock:
                if self._db is None:
                    raise CacheUnavailable(f"cache: {self.root} is unavailable ({self.open_error or 'closed'})")
                try:
                    lru = self._select_lru()
                except sqlite3.Error as exc:
                    raise CasIndexError(f"cache: index store {self.index_path} failed: {exc}") from exc
            used = sum(lru.values())
            with self._lock:
                for digest in self._dropped:
                    used -= lru.pop(digest, 0)
                for digest, size in self._lru.items():  # this run's, oldest first: after every stored one
                    used += size - lru.pop(digest, 0)
                    lru[digest] = size
                self._lru = lru
                self._used = used
                self._dropped.clear()
                self._loaded = True
            self.lru_loads += 1

    def lookup(self, digest: str) -> bytes | None:
        """The verified chunk, or None when the cache does not hold it (blocking). Unlike has(), it also
        answers before the LRU is loaded: then the chunk file itself decides (its bytes are verified against
        its name, as every read's), and a chunk found this way is known to memory from then on.
        ChunkCorrupt (after quarantine) like get(); ChunkMissing when a chunk known to memory lost its file."""
        if self._loaded or self.has(digest):
            return self.get(digest) if self.has(digest) else None
        self._require()
        try:
            with open(self._path(digest), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None  # not cached (a row without a file is the reconciliation's business)
        except OSError as exc:
            raise_if_fd_exhausted(exc, f"reading chunk {digest[:12]} from the cache")
            raise CasError(f"cache: cannot read chunk {digest[:12]}: {exc.strerror}") from exc
        if chunk_hash(data) != digest:
            self.quarantine(digest)
            raise ChunkCorrupt(f"chunk {digest} failed verification and was quarantined")
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

    def _path(self, digest: str) -> str:
        return os.path.join(self.root, "chunks", digest[:2], digest)

    chunk_path = _path

    def _quarantine_file(self, digest: str) -> str:
        dest = os.path.join(self.root, "quarantine", f"{digest}.{int(time.time())}")
        n = 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(self.root, "quarantine", f"{digest}.{int(time.time())}.{n}")
        os.rename(self._path(digest), dest)
        try:  # a rename keeps the chunk's mtime: "newest" means newest in quarantine (to the ns, not the tick)
            now = time.time_ns()
            os.utime(dest, ns=(now, now))
        except OSError:
            pass
        self._prune_quarantine()
        return dest

    def _prune_quarantine(self) -> None:
        """Keep the newest quarantined files within the bounds, delete the older ones (one log line), and
        remember what is kept. Never raises: a quarantine that cannot be listed or pruned is only logged."""
        folder = os.path.join(self.root, "quarantine")
        found = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            found.append((st.st_mtime_ns, entry.name, st.st_size))
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cache: cannot list the quarantine %s: %s", folder, exc.strerror or exc)
            return
        kept = kept_bytes = dropped = dropped_bytes = 0
        failed = ""
        full = False
        for _mtime, name, size in sorted(found, reverse=True):  # newest first
            if not full and kept < self.quarantine_files and kept_bytes + size <= self.quarantine_bytes_max:
                kept, kept_bytes = kept + 1, kept_bytes + size
                continue
            full = True  # everything older than the first file that does not fit goes
            try:
                os.unlink(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed = failed or (exc.strerror or str(exc))
                kept, kept_bytes = kept + 1, kept_bytes + size
                continue
            dropped, dropped_bytes = dropped + 1, dropped_bytes + size
        with self._lock:
            self._quarantined = (kept_bytes, kept)
        if dropped:
            log.info("cache: quarantine %s: deleted the %d oldest files (%d bytes); keeping the newest %d (%d bytes) "
                     "for inspection (at most %d files, %d bytes)", folder, dropped, dropped_bytes, kept, kept_bytes,
                     self.quarantine_files, self.quarantine_bytes_max)
        if failed:
            log.warning("cache: quarantine %s: cannot delete old files (%s); they still count against the quota",
                        folder, failed)

    # -- the index store ------------------------------------------------------------
    def _require(self) -> None:
        if not self.available:
            raise CacheUnavailable(f"cache: {self.root} is unavailable ({self.open_error or 'closed'})")

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

    # -- public -------------------------------------------------------------
    def has(self, digest: str) -> bool:
        with self._lock:
            return digest in self._lru

    def usage(self) -> tuple[int, int]:
        """(bytes, chunks) held."""
        with self._lock:
            return self._used, len(self._lru)

    def quarantine_usage(self) -> tuple[int, int]:
        """(bytes, files) kept in quarantine/ for inspection; they count against the quota too."""
        with self._lock:
            return self._quarantined

    def get(self, digest: str) -> bytes:
        """The chunk's bytes, verified. ChunkMissing / ChunkCorrupt (after quarantine) otherwise."""
        self._require()
        try:
            if fail_point(points.CAS_GET) is not None:
                raise OSError(errno.EIO, "Input/output error (injected by failpoint)")
            with open(self._path(digest), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            self._forget(digest)
            raise ChunkMissing(f"chunk {digest} is not in the cache") from None
        except OSError as exc:
            raise_if_fd_exhausted(exc, f"reading chunk {digest[:12]} from the cache")
            raise CasError(f"cache: cannot read chunk {digest[:12]}: {exc.strerror}") from exc
        if chunk_hash(data) != digest:
            self.quarantine(digest)
            raise ChunkCorrupt(f"chunk {digest} failed verification and was quarantined")
        with self._lock:
            if digest in self._lru:
                self._lru.move_to_end(digest)
                self._touched[digest] = time.time()
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

    def _write_chunk_file(self, digest: str, data: bytes) -> None:
        """put's file write; a full disk: evict and retry once, else CacheFull."""
        try:
            self._write_file(digest, data)
        except OSError as exc:
            raise_if_fd_exhausted(exc, f"writing chunk {digest[:12]} to the cache")
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise CasError(f"cache: cannot write chunk {digest[:12]}: {exc.strerror}") from exc
            freed = self._evict_for_disk(len(data))
            try:
                self._write_file(digest, data)
            except OSError as exc2:
                raise_if_fd_exhausted(exc2, f"writing chunk {digest[:12]} to the cache")
                raise CacheFull(f"cache: disk full writing chunk {digest[:12]} ({exc2.strerror}) even after "
                                f"evicting {freed} bytes") from exc2

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
                _unlink_quietly(self._path(digest))
                raise

    def _write_file(self, digest: str, data: bytes) -> None:
        points.hit(points.CAS_PUT_BEFORE_WRITE, CasError)
        final = self._path(digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(self.root, "tmp", f"{digest}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def _make_room(self, incoming: int) -> None:
        if incoming > self.quota:  # before evicting: a chunk that can never fit must not flush the cache
            raise CacheFull(f"cache: a {incoming}-byte chunk does not fit a {self.quota}-byte quota")
        kept, _ = self.quarantine_usage()  # bounded well below the low watermark
        if self._used + kept + incoming > self.quota * self.high:
            self.evict_to(int(self.quota * self.low) - kept - incoming)

    def _evict_for_disk(self, incoming: int) -> int:
        """The disk filled before the quota did: free a slice of what we hold (LRU), for one retry."""
        used, _ = self.usage()
        target = max(min(int(self.quota * self.low), int(used * self.low)) - incoming, 0)
        freed = self.evict_to(target)
        log.info("cache: disk full with %d bytes cached: evicted %d bytes, retrying once", used, freed)
        return freed

    def evict_to(self, target: int) -> int:
        """Drop unpinned chunks until usage <= target: unprotected ones least recently used first, then
        protected ones (LRU too); pinned ones never. Returns bytes freed."""
        self.load_lru()  # every chunk is a candidate, and usage is exact
        victims = []
        with self._lock:
            used = self._used
            for protected in (False, True):
                for digest, size in self._lru.items():
                    if used <= target:
                        break
                    if digest in self._pins or (digest in self._protected) != protected:
                        continue
                    victims.append(digest)
                    used -= size
        if not victims:
            return 0
        points.hit(points.CAS_EVICT, CasError)
        freed = 0
        for digest in victims:
            freed += self._remove(digest)
        log.debug("cache: evicted %d chunks (%d bytes)", len(victims), freed)
        return freed

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

    def pin(self, digest: str) -> None:
        with self._lock:
            self._pins[digest] += 1

    def unpin(self, digest: str) -> None:
        with self._lock:
            self._pins[digest] -= 1
            if self._pins[digest] <= 0:
                del self._pins[digest]

    @property
    def pinned(self) -> int:
        with self._lock:
            return len(self._pins)

    def protect(self, digest: str) -> None:
        """Evict the chunk only after every unprotected one, until as many unprotects (counted like pins)."""
        with self._lock:
            self._protected[digest] += 1

    def unprotect(self, digest: str) -> None:
        with self._lock:
            self._protected[digest] -= 1
            if self._protected[digest] <= 0:
                del self._protected[digest]

    @property
    def protected(self) -> int:
        """Protected chunks in the cache (protection is no pin: one evicted as the last resort is not counted)."""
        with self._lock:
            return sum(1 for digest in self._protected if digest in self._lru)

    def flush_atimes(self) -> None:
        with self._lock:
            touched, self._touched = self._touched, {}
        if touched:
            self._write_index("UPDATE chunks SET atime = ? WHERE hash = ?", [(t, h) for h, t in touched.items()],
                              many=True)

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
                        self.open_error = _describe(exc)
                        raise CasError(f"cache: cannot open {self.root}: {self.open_error}") from exc
                    log.info("cache: %s opened (%d chunks, %d bytes)", self.root, len(self._lru), self._used)
        path = os.path.join(self.root, "tmp", f"probe.{os.getpid()}.{threading.get_ident()}")
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
            _unlink_quietly(path)
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
                self.open_error = f"index rebuild failed: {_describe(exc)}"
                raise CasError(f"cache: cannot rebuild the index of {self.root}: {_describe(exc)}") from exc
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

    def close(self) -> None:
        try:
            self.flush_atimes()
        except CasError as exc:
            log.warning("cache: access times not saved at close: %s", exc)
        with self._db_lock:
            self._close_db()
            self.available = False
            self.open_error = "closed"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _close_quietly(db: sqlite3.Connection | None) -> None:
    if db is not None:
        try:
            db.close()
        except sqlite3.Error:
            pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
