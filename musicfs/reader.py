"""FileReader: a byte range -> chunks -> verified cache hit or origin fetch (then cached)."""

from __future__ import annotations

import collections
import errno
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

import trio

from . import points
from .cas import CasStore
from .cache_health import CacheHealth
from .catalog import Catalog, FileRow
from .errors import CacheFull, CacheUnavailable, CatalogError, ChunkCorrupt, ChunkMissing, TooManyOpenFiles
from .errors import CasError, MusicFSError, OriginFileChanged, OriginTransient
from .origins.registry import OriginRegistry

log = logging.getLogger(__name__)


class BadHandle(MusicFSError):
    errno = errno.EBADF


class ChunkLRU:
    """Verified chunks in memory, bounded by bytes; FUSE's 128 KiB reads hit this."""

    def __init__(self, limit: int):
        self.limit = limit
        self._data: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0

    def get(self, digest: str) -> bytes | None:
        data = self._data.get(digest)
        if data is not None:
            self._data.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if digest in self._data or len(data) > self.limit:
            return
        self._data[digest] = data
        self._bytes += len(data)
        while self._bytes > self.limit:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old)

    def discard(self, digest: str) -> None:
        data = self._data.pop(digest, None)
        if data is not None:
            self._bytes -= len(data)

    @property
    def nbytes(self) -> int:
        return self._bytes


@dataclass
class OpenFile:
    row: FileRow
    manifest: dict[int, str]
    pinned: set[str] = field(default_factory=set)
    refs: int = 1


@dataclass
class ReaderStats:
    cache_hits: int = 0
    memory_hits: int = 0
    origin_fetches: int = 0
    uncached_reads: int = 0
    bad_chunks: int = 0
    passthrough_reads: int = 0  # chunks served from the origin, uncached, while the cache was bypassed
    changed_files: int = 0  # fetches refused because the origin file changed before or during the read


class FileReader:
    def __init__(self, catalog: Catalog, cas: CasStore, origins: OriginRegistry, *, chunk_size: int,
                 memory_cache: int, read_timeout: float, threads: int = 8, cache: CacheHealth | None = None,
                 on_file_changed: Callable[[str], None] | None = None):
        self.catalog = catalog
        self.cas = cas
        # cache health: normal / unstable / down; cache I/O runs on its own limiter within op_timeout
        self.cache = cache or CacheHealth(cas, op_timeout=min(5.0, read_timeout / 3))
        self.origins = origins
        #: told the origin path of a file found changed under a read (the daemon rescans)
        self.on_file_changed = on_file_changed
        self.chunk_size = chunk_size
        self.read_timeout = read_timeout
        self.memory = ChunkLRU(memory_cache)
        self.stats = ReaderStats()
        self.limiter = trio.CapacityLimiter(threads)
        self._open: dict[int, OpenFile] = {}
        self._handles = itertools.count(1)
        self._fh: dict[int, tuple[int, str]] = {}
        self._inflight: dict[tuple[int, str, int], trio.Event] = {}

    async def _thread(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)

    # -- open / release ---------------------------------------------------------
    async def open(self, row: FileRow) -> int:
        """A handle for reading; the file's cached chunks are pinned until release.

        Open files are keyed by (id, identity): a handle opened before the file changed keeps
        reading the old content's chunks, one opened after reads the new.
        """
        key = (row.id, row.ident)
        if key not in self._open:
            with trio.fail_after(self.read_timeout):  # a locked catalog must not hang open()
                manifest = await self._thread(self.catalog.manifest, row.id, row.ident)
            if key not in self._open:  # another open may have won while we waited
                self._open[key] = OpenFile(row, manifest, refs=0)
        self._open[key].refs += 1
        fh = next(self._handles)
        self._fh[fh] = key
        return fh

    def release(self, fh: int) -> None:
        key = self._fh.pop(fh, None)
        of = self._open.get(key) if key is not None else None
        if of is None:
            return
        of.refs -= 1
        if of.refs <= 0:
            for digest in of.pinned:
                self.cas.unpin(digest)
            del self._open[key]

    @property
    def open_files(self) -> int:
        return len(self._open)

    # -- reading --------------------------------------------------------------
    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the file, short only at EOF. Bounded by read_timeout."""
        of = self._open.get(self._fh.get(fh))
        if of is None:
            raise BadHandle(f"read on unknown file handle {fh}")
        end = min(offset + size, of.row.size)
        if offset >= end:
            return b""
        with trio.fail_after(self.read_timeout):
            parts = []
            for idx in range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1):
                data = await self._chunk(of, idx)
                base = idx * self.chunk_size
                parts.append(data[max(offset - base, 0) : end - base])
            return b"".join(parts)

    async def _chunk(self, of: OpenFile, idx: int) -> bytes:
        key = (of.row.id, of.row.ident, idx)
        while key in self._inflight:  # someone is loading this chunk: wait, then use it
            await self._inflight[key].wait()
        digest = of.manifest.get(idx)
        if digest is not None:
            data = self.memory.get(digest)
            if data is not None:
                self.stats.memory_hits += 1
                return data
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
            data = await self._from_cache(digest)
            if data is not None:
                self.stats.cache_hits += 1
                self._keep(of, digest, data)
                return data
        return await self._fetch(of, idx)

    async def _from_cache(self, digest: str) -> bytes | None:
        """The verified chunk from the disk cache, or None: evicted (a plain miss), bad (quarantined or
        missing: fetched again), or the cache bypassed (unstable/down: passthrough to the origin)."""
        if not self.cache.usable or not self.cas.has(digest):
            return None
        try:
            return await self.cache.run_io(self.cas.get, digest)
        except TooManyOpenFiles:
            raise  # this request fails with EIO; the cache is not to blame
        except (ChunkCorrupt, ChunkMissing) as exc:
            self.stats.bad_chunks += 1
            log.warning("cache: %s; fetching it again from the origin", exc)
            return None
        except CacheUnavailable:
            return None
        except CasError as exc:
            self.cache.failed(exc)  # unstable (or down + index rebuild): reads bypass the cache
            return None

    async def _fetch(self, of: OpenFile, idx: int) -> bytes:
        row = of.row
        start = idx * self.chunk_size
        want = min(self.chunk_size, row.size - start)
        expect = row.stat()
        await points.hit_async(points.READER_MANIFEST_FETCH, OriginTransient)
        # Offline fails here at once; else a thread of the registry's own limiter (never the cache's).
        try:
            data = await self.origins.fetch(row.path, start, want, expect, exact=True)
        except OriginFileChanged:
            # Nothing of it is cached: this read fails, and a rescan gives the file its new identity.
            self.stats.changed_files += 1
            if self.on_file_changed is not None:
                self.on_file_changed(row.path)
            raise
        self.stats.origin_fetches += 1
        return await self._store_fetched(of, idx, data)

    async def _store_fetched(self, of: OpenFile, idx: int, data: bytes) -> bytes:
        """Cache a chunk the origin gave (unless the cache is bypassed); the bytes are served either way."""
        row = of.row
        if not self.cache.usable:
            self.stats.passthrough_reads += 1
            return data
        try:
            digest = await self.cache.run_io(self._store, row, idx, data)
        except CacheUnavailable:
            self.stats.passthrough_reads += 1
            return data
        except (CacheFull, TooManyOpenFiles, CatalogError) as exc:
            self.stats.uncached_reads += 1
            log.warning("cache: cannot store a chunk of %s (%s); serving it uncached", row.path, exc)
            return data
        except CasError as exc:
            self.stats.uncached_reads += 1
            self.cache.failed(exc)  # the disk failed: serve this and the next reads from the origins
            return data
        of.manifest[idx] = digest
        self._keep(of, digest, data)
        return data

    def _store(self, row: FileRow, idx: int, data: bytes) -> str:
        digest = self.cas.put(data)
        self.catalog.set_manifest_chunk(row.id, row.ident, idx, digest)
        return digest

    def _keep(self, of: OpenFile, digest: str, data: bytes) -> None:
        self.memory.put(digest, data)
        if digest not in of.pinned:
            of.pinned.add(digest)
            self.cas.pin(digest)


