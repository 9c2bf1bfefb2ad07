"""ChunkLoader: one load per chunk (memory, the disk cache verified, else the origins), fetched chunks stored."""

from __future__ import annotations

import collections
import functools
import logging
from typing import Callable

import trio

from ..cache import ChunkCache
from ..library import Catalog, FileRow, FileVersion
from ..origins import OriginRegistry
from ..shared import (
    CatalogError,
    OriginFileChanged,
    OriginNotFound,
    OriginTransient,
    points,
    run_all,
)
from .keeping import ChunkLRU, Protection
from .open_files import NextHead, OpenFile
from .pages import PagePusher

log = logging.getLogger(__name__)

#: How long a fetched chunk may take to be stored and named once its load was cancelled (a clean stop).
KEEP_GRACE = 10.0


class ChunkLoader:
    """Loads chunks of open files: a chunk being loaded is loaded once (reads of it wait for that load), every
    chunk is verified (the cache hashes what it serves, fetched chunks are hashed as they are stored) and every
    fetch is checked against the file's identity (origins). Fetched chunks of settled versions are stored and
    named in the catalog's manifest; read-ahead's loads (`prefetch`) go the same way. Loaded chunks are kept in
    memory (ChunkLRU), pinned while their file is open around where it is read, protected once passed, and
    offered to the kernel's page cache (`pages`) when their file is read sequentially."""

    def __init__(self, catalog: Catalog, cache: ChunkCache, origins: OriginRegistry, *, files: dict[FileVersion, OpenFile],
                 memory: ChunkLRU, protection: Protection, pages: PagePusher | None, counts: collections.Counter,
                 chunk_size: int, read_timeout: float, threads: int,
                 on_file_changed: Callable[[str], None] | None = None):
        self.catalog = catalog
        self.cache = cache  # the disk cache: verified chunks, passthrough while it is unstable or down
        self.origins = origins
        self.files = files  # the reader's open files, by version
        self.memory = memory
        self.protection = protection
        self.pages = pages
        self.counts = counts  # ReaderStatistics' counters
        self.chunk_size = chunk_size
        self.read_timeout = read_timeout
        #: told the origin path of a file found changed under a read (the daemon rescans)
        self.on_file_changed = on_file_changed
        self.limiter = trio.CapacityLimiter(threads)
        self._inflight: dict[tuple[FileVersion, int], trio.Event] = {}
        # chunks of a run fetched in one request, from their arrival until each is stored (readers need not wait)
        self._fresh: dict[tuple[FileVersion, int], bytes] = {}

    async def thread(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)

    def version(self, row: FileRow) -> tuple[dict[int, str], float]:
        """(In a thread.) The catalog's manifest of the file's version, and when it first recorded that version."""
        return self.catalog.manifest(row.version), self.catalog.version_seen(row.version)

    def ready(self, of: OpenFile, idx: int) -> bool:
        """Whether chunk idx is in hand (memory, or the cache may have it) or being loaded."""
        if (of.row.version, idx) in self._inflight:
            return True
        digest = of.manifest.get(idx)
        return digest is not None and (self.memory.has(digest) or self.cache.may_have(digest))

    def in_memory(self, of: OpenFile, idx: int) -> bytes | None:
        """Chunk idx if memory holds it (verified and kept when it was loaded: offered to the page cache) and no
        load of it is under way."""
        digest = of.manifest.get(idx)
        if digest is None or (of.row.version, idx) in self._inflight:
            return None
        data = self.memory.get(digest)
        if data is not None:
            self.counts["memory_hits"] += 1
            self.offer_pages(of, idx, data)
        return data

    def stream_origin(self, of: OpenFile) -> None:
        """A file read as a stream reads its origins through one open stream (S3: part GETs of the pinned version;
        SFTP: the remote file kept open), for read-ahead and for the reader's own fetches alike; where streams need
        no order (SFTP, S3), every read of an open file does (no open and close of the remote file per small
        read)."""
        if of.origin is None:
            of.origin = self.origins.open_stream(of.row.path, of.row.stat())

    async def chunk(self, of: OpenFile, idx: int) -> bytes:
        """Chunk idx of the open file, verified: from memory, the chunk being loaded, the disk cache, or the
        origins (then stored, if its version is settled)."""
        key = (of.row.version, idx)
        while key in self._inflight:  # someone is loading this chunk: wait, then use it
            fresh = self._fresh.get(key)
            if fresh is not None:  # fetched (identity-checked) and being stored: served as a fetch serves it
                self.counts["memory_hits"] += 1
                return fresh
            await self._inflight[key].wait()
        data = self.in_memory(of, idx)
        if data is not None:
            return data
        digest = of.manifest.get(idx)
        # Kernel readahead sends several reads into one chunk at once: load (and hash) it once.
        event = self._inflight[key] = trio.Event()
        try:
            return await self._load(of, idx, digest)
        finally:
            del self._inflight[key]
            event.set()

    async def _load(self, of: OpenFile, idx: int, digest: str | None) -> bytes:
        """A chunk from the disk cache (verified), else from the origin."""
        if digest is not None:
            data = await self.cache.get(digest)
            if data is not None:
                self.counts["cache_hits"] += 1
                self._keep(of, idx, digest, data)
                return data
        return await self._fetch(of, idx)

    async def _fetch(self, of: OpenFile, idx: int) -> bytes:
        return await self._store_fetched(of, idx, *await self._fetch_span(of, idx, idx))

    async def _fetch_span(self, of: OpenFile, first: int, last: int) -> tuple[bytes, bool]:
        """Chunks first..last of the file from the origins, in one request (checked against the file's identity
        before and after, like every fetch), and whether they may be kept; the caller verifies, stores and names
        each chunk."""
        start = first * self.chunk_size
        [data], keep = await self.from_origin(of, [(start, min((last + 1) * self.chunk_size, of.row.size) - start)])
        self.counts["origin_fetches"] += last - first + 1
        return data, keep

    async def from_origin(self, of: OpenFile, ranges: list[tuple[int, int]]) -> tuple[list[bytes], bool]:
        """The only way bytes come from the origins: `ranges` of the file's version, checked against its identity
        before and after (through its origin stream while it is streamed), and whether they may be kept: not
        while the version is racy (origins/base.py, settled) when the fetch starts; they are served to this read
        only. Offline fails at once; else a thread of the registry's own limiter (never the cache's). A changed
        file (or one gone) raises OriginFileChanged: nothing of it is cached, this read fails with EIO, and the
        daemon is told to rescan."""
        row = of.row
        await points.hit_async(points.READER_MANIFEST_FETCH, OriginTransient)
        started = self.origins.wall_clock()
        try:
            if of.origin is not None:
                datas = await of.origin.fetch_ranges(ranges, exact=True)
            else:  # (one range is one read there)
                datas = await self.origins.fetch_ranges(row.path, ranges, row.stat(), exact=True)
        except (OriginFileChanged, OriginNotFound) as exc:
            self.counts["changed_files"] += 1
            if self.on_file_changed is not None:
                self.on_file_changed(row.path)
            if isinstance(exc, OriginNotFound):  # read(2) answers EIO for a file that went away under it
                raise OriginFileChanged(f"{exc} (gone at the origin since it was scanned)", origin=exc.origin,
                                        path=row.path) from exc
            raise
        keep = self.origins.settled(row.identity, of.seen, started)
        if not keep:
            self.counts["racy_fetches"] += 1
        return datas, keep

    async def _store_fetched(self, of: OpenFile, idx: int, data: bytes, keep: bool) -> bytes:
        """Cache a chunk the origin gave and name it in the manifest, if it may be kept (not racy); the bytes
        are served either way.

        The manifest write is the catalog's, outside the cache's timeout: a locked catalog delays this read
        (within its own deadline) but never marks the cache disk unstable.
        """
        if keep:
            # Shielded (and bounded): a reader may have been served these bytes already (`_fresh`), so a clean
            # stop that cancels the load lets them finish being kept rather than leave them half stored.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + KEEP_GRACE):
                await self._store_and_name(of, idx, data)
        return data

    async def _store_and_name(self, of: OpenFile, idx: int, data: bytes) -> None:
        row = of.row
        digest = await self.cache.store(data, f"a chunk of {row.path}")
        if digest is None:
            return
        try:
            await self.thread(self.catalog.set_manifest_chunk, row.version, idx, digest)
        except CatalogError as exc:
            self.counts["manifest_failures"] += 1
            log.warning("catalog: cannot record a chunk of %s (%s); serving it uncached", row.path, exc)
            return
        of.manifest[idx] = digest
        self._keep(of, idx, digest, data)

    def _keep(self, of: OpenFile, idx: int, digest: str, data: bytes) -> None:
        self.memory.put(digest, data)
        # a closed file (or a next track's head) pins nothing; a chunk its reader has passed is protected if the
        # file is played (as _unpin_before does), else ordinary
        if of.refs > 0 and digest not in of.pinned:
            if idx >= of.unpinned_below:
                of.pinned[digest] = idx
                self.cache.pins.hold(digest)
            elif of.played:
                self.protection.add(of.row.version, [digest])
        self.offer_pages(of, idx, data)

    def offer_pages(self, of: OpenFile, idx: int, data: bytes) -> None:
        """A verified chunk of a sequentially read file, kept (never a racy version's bytes, which are never
        kept): to the kernel's page cache, once per open."""
        if self.pages is not None and of.sequential and of.inode and idx not in of.pushed:
            if self.pages.offer(of.inode, of.row.version, idx * self.chunk_size, data, of.row.size):
                of.pushed.add(idx)

    async def prefetch(self, key, indexes: list[int], fetched: Callable[[], None]) -> None:
        """Load chunks ahead of a reader (ReadAhead's fetch; consecutive indexes): into the caches, verified,
        like a read. Chunks the cache has (or that are on their way) are loaded in parallel; a run of chunks
        nobody has is fetched from the origins in one request, then each chunk is stored and named at once.
        `fetched()` is called as soon as no origin request of this batch is left."""
        if isinstance(key, NextHead):  # the head of the next track: loaded and cached, protected (pinned by no one yet)
            await self._prefetch_head(key.row, indexes, fetched)
            return
        of = self.files.get(key)
        if of is None:
            return  # closed meanwhile
        self.stream_origin(of)
        if not of.origin.ordered:  # (SFTP) the file's next batch may go to the origin beside this one
            fetched()
        await self._load_ahead(of, indexes, fetched)

    async def _prefetch_head(self, row: FileRow, indexes: list[int], fetched: Callable[[], None]) -> None:
        """Load the head of the next track and protect it: until that track is opened and released, or newer
        heads push it out (Protection); if it is open already, until its release."""
        key = row.version
        of = self.files.get(key)
        if of is None:
            manifest, seen = await self.thread(self.version, row)
            of = OpenFile(row, manifest, seen, refs=0)
        try:
            await self._load_ahead(of, indexes, fetched)
        finally:  # what was loaded, also when the job failed or timed out
            head = [d for d in map(of.manifest.get, indexes) if d is not None]
            if key in self.files:  # (opened meanwhile)
                self.protection.add(key, head)
            elif head:
                self.protection.add_head(key, head)

    async def _load_ahead(self, of: OpenFile, indexes: list[int], fetched: Callable[[], None]) -> None:
        """_prefetch's loads: cached chunks (or chunks on their way) in parallel, a run of missing ones in one
        origin request; `fetched()` once no origin request is left."""
        here, missing = [], []
        # a racy version is not fetched ahead: nobody could keep what read-ahead fetched
        racy = not self.origins.settled(of.row.identity, of.seen, self.origins.wall_clock())
        for idx in indexes:
            if idx * self.chunk_size >= of.row.size:
                break
            if of.manifest.get(idx) is not None or (of.row.version, idx) in self._inflight:
                here.append(idx)  # cached (load and verify it) or on its way already
            elif not racy:
                missing.append(idx)
        loads = [(f"load-{idx}", functools.partial(self.chunk, of, idx)) for idx in here]
        if missing:
            loads.append(("fetch", functools.partial(self._fetch_missing, of, missing, fetched)))
        else:
            fetched()
        await run_all(loads)

    async def _fetch_missing(self, of: OpenFile, missing: list[int], fetched: Callable[[], None]) -> None:
        """Uncached chunks: each run of consecutive ones nobody loads yet is fetched in one origin request (reads of
        any of them wait for it, as _chunk, each until its own chunk is stored), the runs side by side (one after
        the other where the origin reads a stream only in order); a chunk somebody loads already (the reader's
        own read got there first) is waited for, never fetched twice nor made to split the rest into chunk-by-chunk
        requests. `fetched()` once no origin request is left."""
        runs: list[list[int]] = []
        waits: list[int] = []
        for idx in missing:
            if (of.row.version, idx) in self._inflight:
                waits.append(idx)
            elif runs and runs[-1][-1] == idx - 1:
                runs[-1].append(idx)
            else:
                runs.append([idx])
        # Registered before anything awaits: a read of any of these chunks from now on waits for this load.
        claims = [self._claim(of, run) for run in runs]
        left = len(runs)

        def arrived() -> None:  # one run's bytes are in hand (or its request failed): fetched() after the last
            nonlocal left
            left -= 1
            if left == 0:
                fetched()

        if not runs:
            fetched()
        loads = [(f"fetch-{run[0]}", functools.partial(self._fetch_run, of, run, events, arrived))
                 for run, events in zip(runs, claims)]
        loads += [(f"load-{idx}", functools.partial(self.chunk, of, idx)) for idx in waits]
        try:
            if of.origin is not None and of.origin.ordered:  # one request at a time on this stream
                for _name, load in loads:
                    await load()
            else:
                await run_all(loads)
        finally:  # a run that never got to go (an earlier one failed) is no longer claimed, nor at the origin
            for events in claims:
                for key, event in events.items():
                    self._release(key, event)
            if left > 0:
                left = 0
                fetched()

    def _claim(self, of: OpenFile, run: list[int]) -> dict[tuple[FileVersion, int], trio.Event]:
        events = {(of.row.version, idx): trio.Event() for idx in run}
        self._inflight.update(events)
        return events

    async def _fetch_run(self, of: OpenFile, run: list[int], events: dict[tuple[FileVersion, int], trio.Event],
                         arrived: Callable[[], None]) -> None:
        """Chunks of `run` (claimed: `events`) in one origin request, then each verified, stored and named at once;
        readers take them as they arrive (`_fresh`). `arrived()` once the request is done."""
        keys = list(events)
        try:
            try:
                data, keep = await self._fetch_span(of, run[0], run[-1])
            finally:
                arrived()
            if not keep:  # racy: nobody else takes these bytes; each read fetches its own
                return
            cs = self.chunk_size
            for n, key in enumerate(keys):  # readers take them now, while they are stored
                self._fresh[key] = data[n * cs:(n + 1) * cs]
            del data  # the pieces are the only copy

            async def store(n: int, idx: int) -> None:
                try:
                    await self._store_fetched(of, idx, self._fresh[keys[n]], True)
                finally:
                    self._release(keys[n], events[keys[n]])

            # The chunks are hashed, written and named at once, on the cache's and the catalog's threads.
            await run_all([(f"store-{idx}", functools.partial(store, n, idx)) for n, idx in enumerate(run)])
        finally:
            for key in keys:
                self._release(key, events[key])

    def _release(self, key: tuple[FileVersion, int], event: trio.Event) -> None:
        """A claimed chunk's load is over (stored, or not): readers waiting for it go on (and load it themselves
        if it was not kept). Once per claim."""
        if event.is_set():
            return
        self._fresh.pop(key, None)
        if self._inflight.get(key) is event:
            del self._inflight[key]
        event.set()
