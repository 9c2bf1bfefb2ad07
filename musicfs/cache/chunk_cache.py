"""ChunkCache: the reader's one door to the local chunk cache (CasStore behind CacheHealth).

`get(digest)` answers a verified chunk or None, `store(data)` its digest or None; the caller never
learns why not. `pin`/`unpin` keep a chunk from eviction, `protect`/`unprotect` make it one of the last
to go. Behind them:

- a bypassed cache (unstable or down, see cache_health.py) answers None at once: passthrough to the
  origins, nothing stored;
- cache I/O runs on the cache's own thread limiter within `op_timeout`; an I/O error, a read-only disk
  or a hang marks the cache unstable, a failing index puts it down (rebuilt by the `run` task);
- a corrupt or missing chunk (quarantined by the CAS) is a miss: the reader fetches it again;
- a full disk (after the CAS evicted and retried) is served uncached: the state stays normal;
- EMFILE (TooManyOpenFiles) is the process's fault, not the disk's: `get` raises it (that request answers
  EIO), `store` serves uncached; nothing is marked broken.

Only the chunk goes through here: the catalog's manifest entry is the reader's business, written outside
the cache's timeout, so a locked catalog never marks the cache disk unstable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from ..shared import (
    CacheFull,
    CacheUnavailable,
    CasError,
    ChunkCorrupt,
    ChunkMissing,
    TooManyOpenFiles,
)
from .cas import CasStore
from .eviction import RefCounts
from .health import CacheHealth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStatistics:
    """`ChunkCache.statistics()`: what `musicfs status` shows under `cache`."""

    state: str  # normal | unstable | down
    reason: str
    since_s: float  # seconds in this state
    used_bytes: int
    quota_bytes: int
    chunks: int
    pinned: int
    protected: int  # chunks evicted only after every unprotected one (the track played, the next track's head)
    quarantine_bytes: int
    quarantine_files: int
    probes: int
    failed_probes: int
    transitions: int
    bad_chunks: int  # chunks found corrupt or missing on a read (quarantined, fetched again)
    passthrough_reads: int  # chunks not stored because the cache was bypassed (unstable/down)
    uncached_reads: int  # chunks that could not be stored (disk full, EMFILE, a failing disk)
    loaded: bool = True  # False after a clean start until the LRU is loaded: used_bytes/chunks count this run's only


class ChunkCache:
    """The chunk cache as the reader sees it. `health_options` are CacheHealth's keyword arguments."""

    def __init__(self, cas: CasStore, **health_options):
        self._cas = cas
        self.health = CacheHealth(cas, **health_options)  # the state machine; its `run` is the cache task
        self._bad = 0
        self._passthrough = 0
        self._uncached = 0

    async def get(self, digest: str) -> bytes | None:
        """The verified chunk, or None: not cached, bad (quarantined or missing), or the cache bypassed."""
        if not self.health.usable:
            return None
        if self._cas.has(digest):
            read = self._cas.get
        elif not self._cas.loaded:
            read = self._cas.lookup  # after a clean start, until the LRU is loaded: the chunk file decides
        else:
            return None
        try:
            return await self.health.run_io(read, digest)
        except TooManyOpenFiles:
            raise  # this request fails with EIO; the cache is not to blame
        except (ChunkCorrupt, ChunkMissing) as exc:
            self._bad += 1
            log.warning("cache: %s; fetching it again from the origin", exc)
            return None
        except CacheUnavailable:
            return None
        except CasError as exc:
            self.health.failed(exc)  # unstable (or down + index rebuild): reads bypass the cache
            return None

    async def store(self, data: bytes, what: str = "a chunk") -> str | None:
        """Keep `data`; its digest, or None when it was not stored (the bytes are served either way)."""
        if not self.health.usable:
            self._passthrough += 1
            return None
        try:
            return await self.health.run_io(self._cas.put, data)
        except CacheUnavailable:
            self._passthrough += 1
        except (CacheFull, TooManyOpenFiles) as exc:
            self._uncached += 1
            log.warning("cache: cannot store %s (%s); serving it uncached", what, exc)
        except CasError as exc:
            self._uncached += 1
            self.health.failed(exc)  # the disk failed: serve this and the next reads from the origins
        return None

    @property
    def quota(self) -> int:
        return self._cas.quota

    def has(self, digest: str) -> bool:
        """Whether the chunk is known to be in the cache (its index, in memory: no I/O); a get may still find it
        bad. Until the store's LRU is loaded after a clean start, chunks of earlier runs are not known yet (False
        here, while get() still finds them)."""
        return self._cas.has(digest)

    def may_have(self, digest: str) -> bool:
        """has(), or unknown yet (the store's LRU is not loaded after a clean start): worth a get(), which finds
        the chunk by its file. The reader decides with it, so a chunk of an earlier run is served from the
        cache (also offline) while the LRU loads, not fetched again."""
        return self._cas.has(digest) or not self._cas.loaded

    @property
    def pins(self) -> RefCounts:
        """Chunks kept from eviction (chunks of open files, pinned albums) until as many releases as holds."""
        return self._cas.pins

    @property
    def protection(self) -> RefCounts:
        """Chunks evicted only after every other (the track being played, the next track's head) until as many
        releases as holds; unlike a pin, the quota may still take them, last."""
        return self._cas.protection

    async def trim_over_quota(self) -> None:
        """At start (after READY): a cache that holds more than its quota (a restart with a smaller one) is
        brought back under it at once; one within its quota is left as it is (the next store evicts, as always)."""
        await self._evict(self._cas.trim_over_quota)

    async def trim(self) -> None:
        """Back under the quota's low watermark when unpinned chunks hold it above the high one (after a file
        larger than the cache was read and closed, its chunks are no longer pinned: evict them now, not at
        the next store)."""
        used, _ = self._cas.usage()
        kept, _ = self._cas.quarantine_usage()
        if used + kept > self._cas.quota * self._cas.high:
            await self._evict(self._cas.evict_to, int(self._cas.quota * self._cas.low) - kept)

    async def _evict(self, fn, *args) -> None:
        """An eviction in a cache thread, skipped while the cache is bypassed; a failure moves its state."""
        if not self.health.usable:
            return
        try:
            await self.health.run_io(fn, *args)
        except CacheUnavailable:
            pass
        except CasError as exc:
            self.health.failed(exc)

    async def run(self, after: trio.Event | None = None) -> None:
        """The cache task (a critical task of the supervisor): the deferred start-up work (LRU load, index
        reconciliation; once `after` is set: READY), probes, index rebuild, access times."""
        await self.health.run(after, started=self.trim_over_quota)  # a start with a smaller quota trims at once

    def statistics(self) -> CacheStatistics:
        h = self.health
        used, chunks = self._cas.usage()
        kept, files = self._cas.quarantine_usage()
        return CacheStatistics(
            state=h.state, reason=h.reason, since_s=round(h.elapsed(), 1), used_bytes=used,
            quota_bytes=self._cas.quota, chunks=chunks, pinned=self._cas.pinned, protected=self._cas.protected,
            quarantine_bytes=kept, quarantine_files=files, probes=h.probes, failed_probes=h.failed_probes,
            transitions=h.transitions, bad_chunks=self._bad, passthrough_reads=self._passthrough,
            uncached_reads=self._uncached, loaded=self._cas.loaded)
