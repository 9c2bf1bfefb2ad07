"""CasStore: chunk files named by their SHA-256, written atomically, verified on every read.

Layout under the cache dir: chunks/ab/<hash>, tmp/, quarantine/, index.db (hash, size, atime).
The index is derived data: at open, chunk files missing from it (a crash between rename and
insert) are verified and adopted; index rows without a file are dropped.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import sqlite3
import threading
import time

from . import points
from .errors import CacheFull, CasError, ChunkCorrupt, ChunkMissing
from .failpoints import fail_point

log = logging.getLogger(__name__)


def chunk_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_hash_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class CasStore:
    """Content-addressed chunk store with a byte quota and LRU eviction.

    Thread-safe. Eviction runs from the high watermark down to the low one and
    never removes a pinned chunk (one that an open file is using).
    """

    def __init__(self, root: str, quota: int, high: float = 0.95, low: float = 0.85):
        self.root = root
        self.quota = quota
        self.high, self.low = high, low
        self._lock = threading.RLock()
        self._lru: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pins: collections.Counter[str] = collections.Counter()
        self._used = 0
        self._touched: dict[str, float] = {}
        for sub in ("chunks", "tmp", "quarantine"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        self._db = self._open_index()
        self._load()

    # -- index --------------------------------------------------------------
    def _open_index(self) -> sqlite3.Connection:
        db = sqlite3.connect(os.path.join(self.root, "index.db"), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS chunks(hash TEXT PRIMARY KEY, size INTEGER NOT NULL, atime REAL NOT NULL)")
        return db

    def _load(self) -> None:
        """Load the index in LRU order, then reconcile it with the chunk files on disk."""
        for name in os.listdir(os.path.join(self.root, "tmp")):
            os.unlink(os.path.join(self.root, "tmp", name))  # half-written chunks of a crashed run
        indexed = {h: s for h, s, _ in self._db.execute("SELECT hash, size, atime FROM chunks ORDER BY atime")}
        on_disk = set(self._chunk_files())
        for digest in list(indexed):
            if digest not in on_disk:
                self._db.execute("DELETE FROM chunks WHERE hash = ?", (digest,))
                del indexed[digest]
        for digest in on_disk - indexed.keys():
            self._adopt_orphan(digest)
        for digest, size in self._db.execute("SELECT hash, size FROM chunks ORDER BY atime"):
            self._lru[digest] = size
            self._used += size

    def _chunk_files(self):
        base = os.path.join(self.root, "chunks")
        for sub in os.listdir(base):
            for name in os.listdir(os.path.join(base, sub)):
                if _is_hash_name(name):
                    yield name

    def _adopt_orphan(self, digest: str) -> None:
        """A chunk file that never made it into the index: keep it if its bytes are right."""
        path = self._path(digest)
        with open(path, "rb") as fh:
            data = fh.read()
        if chunk_hash(data) == digest:
            self._db.execute("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", (digest, len(data), time.time()))
            log.info("cache: adopted chunk %s found on disk but not in the index", digest[:12])
        else:
            os.unlink(path)
            log.warning("cache: removed orphan chunk %s whose bytes do not match its name", digest[:12])

    def _path(self, digest: str) -> str:
        return os.path.join(self.root, "chunks", digest[:2], digest)

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
        try:
            with open(self._path(digest), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            self._forget(digest)
            raise ChunkMissing(f"chunk {digest} is not in the cache") from None
        except OSError as exc:
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
        """Store bytes, return their hash. Atomic: temp file, fsync, rename, then index."""
        digest = chunk_hash(data)
        if self.has(digest):
            return digest
        self._make_room(len(data))
        try:
            self._write_file(digest, data)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise CasError(f"cache: cannot write chunk {digest[:12]}: {exc.strerror}") from exc
            self.evict_to(int(self.quota * self.low) - len(data))
            try:
                self._write_file(digest, data)
            except OSError as exc2:
                raise CacheFull(f"cache: disk full writing chunk {digest[:12]}: {exc2.strerror}") from exc2
        fail_point(points.CAS_PUT_AFTER_WRITE_BEFORE_INDEX)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", (digest, len(data), time.time()))
            if digest not in self._lru:
                self._used += len(data)
            self._lru[digest] = len(data)
        return digest

    def _write_file(self, digest: str, data: bytes) -> None:
        fail_point(points.CAS_PUT_BEFORE_WRITE)
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
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _make_room(self, incoming: int) -> None:
        if incoming > self.quota:  # before evicting: a chunk that can never fit must not flush the cache
            raise CacheFull(f"cache: a {incoming}-byte chunk does not fit a {self.quota}-byte quota")
        if self._used + incoming > self.quota * self.high:
            self.evict_to(int(self.quota * self.low) - incoming)

    def evict_to(self, target: int) -> int:
        """Drop least-recently-used unpinned chunks until usage <= target. Returns bytes freed."""
        victims = []
        with self._lock:
            used = self._used
            for digest, size in self._lru.items():
                if used <= target:
                    break
                if self._pins[digest]:
                    continue
                victims.append(digest)
                used -= size
        if not victims:
            return 0
        fail_point(points.CAS_EVICT)
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
        return self._forget(digest)

    def _forget(self, digest: str) -> int:
        with self._lock:
            size = self._lru.pop(digest, 0)
            self._used -= size
            self._touched.pop(digest, None)
            self._db.execute("DELETE FROM chunks WHERE hash = ?", (digest,))
        return size

    def quarantine(self, digest: str) -> None:
        """Move a bad chunk aside (kept for inspection, never served again)."""
        fail_point(points.CAS_QUARANTINE)
        dest = os.path.join(self.root, "quarantine", f"{digest}.{int(time.time())}")
        try:
            os.rename(self._path(digest), dest)
            log.warning("cache: chunk %s failed verification; moved to %s", digest[:12], dest)
        except FileNotFoundError:
            pass
        self._forget(digest)

    def pin(self, digest: str) -> None:
        with self._lock:
            self._pins[digest] += 1

    def unpin(self, digest: str) -> None:
        with self._lock:
            self._pins[digest] -= 1
            if self._pins[digest] <= 0:
                del self._pins[digest]

    def flush_atimes(self) -> None:
        with self._lock:
            touched, self._touched = self._touched, {}
            self._db.executemany("UPDATE chunks SET atime = ? WHERE hash = ?", [(t, h) for h, t in touched.items()])

    def close(self) -> None:
        self.flush_atimes()
        with self._lock:
            self._db.close()
