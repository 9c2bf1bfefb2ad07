"""What the cache keeps: the LRU, the quota (high and low watermarks), pins and protection (one RefCounts each)."""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading

from ..shared import (
    CacheFull,
    CacheUnavailable,
    CasError,
    CasIndexError,
    points,
)

log = logging.getLogger(__package__ + ".cas")  # one component, one logger: CasStore's




class RefCounts:
    """Digests someone holds, each counted: held until as many releases as holds. The one type behind pins
    (never evicted) and protection (evicted last). Thread-safe; its lock is never held across I/O."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def hold(self, digest: str) -> None:
        with self._lock:
            self._counts[digest] += 1

    def release(self, digest: str) -> None:
        with self._lock:
            self._counts[digest] -= 1
            if self._counts[digest] <= 0:
                del self._counts[digest]

    def __contains__(self, digest: str) -> bool:
        return digest in self._counts

    def __len__(self) -> int:
        return len(self._counts)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._counts)


class Eviction:
    """CasStore's part for this module's concern (see its docstring); state lives in CasStore."""

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
                    if digest in self.pins or (digest in self.protection) != protected:
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

    def trim_over_quota(self) -> int:
        """Down to the low watermark if the cache holds more than its quota (a restart with a smaller one); bytes
        freed. Loads the LRU first: usage is exact only then."""
        self.load_lru()
        used, _ = self.usage()
        kept, _ = self.quarantine_usage()
        if used + kept <= self.quota:
            return 0
        return self.evict_to(int(self.quota * self.low) - kept)

    @property
    def pinned(self) -> int:
        return len(self.pins)

    @property
    def protected(self) -> int:
        """Protected chunks in the cache (protection is no pin: one evicted as the last resort is not counted)."""
        held = self.protection.held()
        with self._lock:
            return sum(1 for digest in held if digest in self._lru)
