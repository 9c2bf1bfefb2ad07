"""FileReader: a byte range -> chunks -> verified cache hit or origin fetch (then cached).

A handle read sequentially gets read-ahead (readahead.py): chunks ahead of it are loaded by the
ReadAhead's workers through the same path as a read (`_chunk`: one load per chunk, verified, cached),
and near the end of a track the first chunks of the next track of its album folder. An open file pins
only the chunks around where it is read (the one before the current one and those ahead), so reading a
file larger than the cache never holds the cache over its quota. What playback still wants goes last when
the cache evicts (`Protection`, ChunkCache.protect): the chunks the reader of a file being played (its handle
streams) has passed, until the file's release, and the heads of the most recent next tracks read-ahead
loaded, until that track is opened and released (or newer heads push them out).

A small read that is not part of a stream (its handle's read-ahead `Stream` has no window open) of a region
no cached chunk holds is served from blocks (blocks.py): small verified ranges, fetched aligned to
`block_size` (several in one origin request when the read spans them), cached in the CAS by hash and recorded
in the catalog's `blocks` table by (file, identity, offset). The scan's tag reads are kept as blocks too.
A read that covers a whole chunk, or any read of a stream, loads whole chunks as before; a cached chunk always
wins over blocks. Without read-ahead (`readahead` 0) there is no stream to tell probes from playback: reads
load whole chunks.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
from dataclasses import dataclass
from typing import Callable

import trio

from ..cache import ChunkCache
from ..library import BLOCK_SIZE, Catalog, FileRow, FileVersion
from ..origins import OriginRegistry, RegistryStream
from ..shared import (
    CatalogError,
    MusicFSError,
    OriginFileChanged,
    OriginNotFound,
    OriginTransient,
    points,
)
from .keeping import ChunkLRU, Protection
from .loads_ahead import LoadsAhead
from .open_files import NextHead, OpenFile
from .readahead import ReadAhead, ReadAheadStatistics, Stream
from .small_reads import SmallReads

log = logging.getLogger(__name__)


class BadHandle(MusicFSError):
    errno = errno.EBADF


@dataclass(frozen=True)
class ReaderStatistics:
    """`FileReader.statistics()`: where the chunks of reads came from."""

    open_files: int = 0  # distinct (file, version) pairs open
    open_handles: int = 0
    memory_hits: int = 0  # chunks from the in-memory LRU of verified chunks
    memory_bytes: int = 0
    cache_hits: int = 0  # chunks from the disk cache (verified)
    origin_fetches: int = 0  # chunks fetched from the origins
    changed_files: int = 0  # fetches refused because the origin file changed before or during the read
    racy_fetches: int = 0  # fetches of versions still racy (origins/base.py, settled): served, never kept
    manifest_failures: int = 0  # fetched chunks (or blocks) whose manifest entry the catalog could not take
    block_hits: int = 0  # blocks (small verified ranges, blocks.py) served from memory or the disk cache
    block_fetches: int = 0  # aligned block ranges fetched from the origins for small reads outside a stream
    readahead: ReadAheadStatistics | None = None  # chunks loaded ahead of sequential readers


class FileReader(SmallReads, LoadsAhead):
    def __init__(self, catalog: Catalog, cache: ChunkCache, origins: OriginRegistry, *, chunk_size: int,
                 memory_cache: int, read_timeout: float, threads: int = 8,
                 on_file_changed: Callable[[str], None] | None = None, readahead: int = 32 << 20,
                 readahead_window: int = 32 << 20, block_size: int = BLOCK_SIZE):
        """`readahead`: bytes of chunks that may be in flight ahead of sequential readers, daemon-wide (0: off);
        `readahead_window`: how far ahead of one reader the window may grow; `block_size`: what a small read
        outside a stream fetches (aligned); 0, or not below the chunk size: reads always load whole chunks."""
        self.catalog = catalog
        self.cache = cache  # the disk cache: verified chunks, passthrough while it is unstable or down
        self.origins = origins
        #: told the origin path of a file found changed under a read (the daemon rescans)
        self.on_file_changed = on_file_changed
        self.chunk_size = chunk_size
        self.read_timeout = read_timeout
        self.memory = ChunkLRU(memory_cache)
        self._counts: collections.Counter[str] = collections.Counter()  # ReaderStatistics' counters
        self.limiter = trio.CapacityLimiter(threads)
        self._open: dict[FileVersion, OpenFile] = {}
        self._handles = itertools.count(1)
        self._fh: dict[int, FileVersion] = {}
        self._inflight: dict[tuple[FileVersion, int], trio.Event] = {}
        # chunks of a run fetched in one request, from their arrival until each is stored (readers need not wait)
        self._fresh: dict[tuple[FileVersion, int], bytes] = {}
        self.block_size = block_size if 0 < block_size < chunk_size else 0
        self._block_inflight: dict[tuple[FileVersion, int], trio.Event] = {}  # (version, block offset) being fetched
        self._streams: dict[int, Stream] = {}  # fh -> where that handle reads (read-ahead)
        self._closing: list[RegistryStream] = []  # origin streams of released files, closed by after_release
        self.protection = Protection(cache)  # chunks playback still wants: evicted last
        self.readahead = None
        if readahead >= chunk_size:
            workers = max(2, min(readahead // chunk_size, origins.fetch_threads - 2))
            # A window pins its chunks: a quarter of the cache at most, so readers never hold it over quota.
            window = max(2 * chunk_size, min(readahead_window, cache.quota // 4))
            self.readahead = ReadAhead(self._prefetch, chunk_size=chunk_size, budget=readahead,
                                       max_window_bytes=window, workers=workers,
                                       job_timeout=read_timeout)

    async def _thread(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)

    # -- open / release ---------------------------------------------------------
    async def open(self, row: FileRow, next_track: Callable[[], FileRow | None] | None = None) -> int:
        """A handle for reading; the chunks around where it reads are pinned until release.

        Open files are keyed by (id, identity): a handle opened before the file changed keeps
        reading the old content's chunks, one opened after reads the new. `next_track` names the track
        that follows in its album folder (read-ahead fetches its head when this one is read to its end).
        """
        key = row.version
        if key not in self._open:
            with trio.fail_after(self.read_timeout):  # a locked catalog must not hang open()
                manifest, seen = await self._thread(self._version, row)
            if key not in self._open:  # another open may have won while we waited
                self._open[key] = OpenFile(row, manifest, seen, refs=0, next_track=next_track)
        self._open[key].refs += 1
        self.protection.opened(key)
        fh = next(self._handles)
        self._fh[fh] = key
        if self.readahead is not None:
            self._streams[fh] = self.readahead.open(key, row.size)
        return fh

    def _version(self, row: FileRow) -> tuple[dict[int, str], float]:
        """(In a thread.) The catalog's manifest of the file's version, and when it first recorded that version."""
        return self.catalog.manifest(row.version), self.catalog.version_seen(row.version)

    def settled(self, fh: int) -> bool:
        """Whether the handle's version is settled now (origins/base.py): every fetch of it from now on may be
        cached. The FUSE open lets the kernel keep pages only of such handles: a handle of a racy version reads
        with direct I/O, so bytes of a version that may still change unseen never enter the page cache."""
        of = self._open.get(self._fh.get(fh))
        return of is not None and self.origins.settled(of.row.identity, of.seen, self.origins.wall_clock())

    def release(self, fh: int) -> None:
        stream = self._streams.pop(fh, None)
        if stream is not None:
            self.readahead.close(stream)  # what it still fetches ahead for this handle is cancelled
        key = self._fh.pop(fh, None)
        of = self._open.get(key) if key is not None else None
        if of is None:
            return
        of.refs -= 1
        if of.refs <= 0:
            for digest in of.pinned:
                self.cache.pins.release(digest)
            of.pinned.clear()
            self.protection.drop(key)  # what it passed (and its head) is ordinary again
            if of.origin is not None:
                self._closing.append(of.origin)  # closing it is network I/O: after_release, in a thread
                of.origin = None
            del self._open[key]

    async def after_release(self) -> None:
        """After a release (the FUSE handler awaits it): close the origin streams of files no longer open, in
        a worker thread within read_timeout; evict at once what the release unpinned if it holds the cache
        over its quota."""
        while self._closing:
            stream = self._closing.pop()
            with trio.move_on_after(self.read_timeout):
                await trio.to_thread.run_sync(stream.close, abandon_on_cancel=True)
        await self.cache.trim()

    def statistics(self) -> ReaderStatistics:
        return ReaderStatistics(open_files=len(self._open), open_handles=len(self._fh),
                                memory_bytes=self.memory.nbytes, **self._counts,
                                readahead=self.readahead.statistics() if self.readahead else None)

    # -- reading --------------------------------------------------------------
    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the file, short only at EOF. Bounded by read_timeout."""
        of = self._open.get(self._fh.get(fh))
        if of is None:
            raise BadHandle(f"read on unknown file handle {fh}")
        end = min(offset + size, of.row.size)
        if offset >= end:
            return b""
        first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
        stream = self._streams.get(fh)
        if stream is not None and (stream.window or not self.origins.ordered_streams):
            self._stream_origin(of)  # (SFTP: any read of an open file, on the handle kept open)
        with trio.fail_after(self.read_timeout):
            parts = []
            if self._small_read(fh, of, offset, end):
                parts.append(await self._read_blocks(of, offset, end, self._streaming_soon(stream, offset)))
            else:
                for idx in range(first, last + 1):
                    data = await self._chunk(of, idx)
                    base = idx * self.chunk_size
                    parts.append(data[max(offset - base, 0) : end - base])
        if of.refs == 1:  # one reader: what lies behind it may be evicted again (last, while it is played)
            self._unpin_before(of, first - 1, played=stream is None or stream.window > 0)
        if stream is not None:
            following = None
            if last == (of.row.size - 1) // self.chunk_size and of.next_track is not None:
                row = of.next_track()
                if row is not None and row.size:
                    following = (NextHead(row), -(-row.size // self.chunk_size))
            self.readahead.observe(stream, offset, end - offset, next_track=following)
        return b"".join(parts)

    # -- small reads: blocks (blocks.py) --------------------------------------------------------------


    def _stream_origin(self, of: OpenFile) -> None:
        """A file read as a stream reads its origins through one open stream (S3: one GET read on; SFTP: the
        remote file kept open), for read-ahead and for the reader's own fetches alike; where streams need no
        order (SFTP), every read of an open file does (no open and close of the remote file per small read)."""
        if of.origin is None:
            of.origin = self.origins.open_stream(of.row.path, of.row.stat())


    def _unpin_before(self, of: OpenFile, idx: int, played: bool) -> None:
        """Unpin the chunks behind the reader: the quota may take them again; those of a file being `played`
        (its handle streams: a read-ahead window is open; or there is no read-ahead to tell) only after every
        unprotected chunk: they stay protected until the file's release."""
        of.unpinned_below = idx  # a chunk stored later behind the reader is not pinned (a seek back lowers it)
        of.played = played
        behind = [digest for digest, i in of.pinned.items() if i < idx]
        if played:
            self.protection.add(of.row.version, behind)
        for digest in behind:
            del of.pinned[digest]
            self.cache.pins.release(digest)

    async def _chunk(self, of: OpenFile, idx: int) -> bytes:
        key = (of.row.version, idx)
        while key in self._inflight:  # someone is loading this chunk: wait, then use it
            fresh = self._fresh.get(key)
            if fresh is not None:  # fetched (identity-checked) and being stored: served as a fetch serves it
                self._counts["memory_hits"] += 1
                return fresh
            await self._inflight[key].wait()
        digest = of.manifest.get(idx)
        if digest is not None:
            data = self.memory.get(digest)
            if data is not None:
                self._counts["memory_hits"] += 1
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
            data = await self.cache.get(digest)
            if data is not None:
                self._counts["cache_hits"] += 1
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
        [data], keep = await self._from_origin(of, [(start, min((last + 1) * self.chunk_size, of.row.size) - start)])
        self._counts["origin_fetches"] += last - first + 1
        return data, keep

    async def _from_origin(self, of: OpenFile, ranges: list[tuple[int, int]]) -> tuple[list[bytes], bool]:
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
            elif len(ranges) == 1:
                datas = [await self.origins.fetch(row.path, *ranges[0], row.stat(), exact=True)]
            else:
                datas = await self.origins.fetch_ranges(row.path, ranges, row.stat(), exact=True)
        except (OriginFileChanged, OriginNotFound) as exc:
            self._counts["changed_files"] += 1
            if self.on_file_changed is not None:
                self.on_file_changed(row.path)
            if isinstance(exc, OriginNotFound):  # read(2) answers EIO for a file that went away under it
                raise OriginFileChanged(f"{exc} (gone at the origin since it was scanned)", origin=exc.origin,
                                        path=row.path) from exc
            raise
        keep = self.origins.settled(row.identity, of.seen, started)
        if not keep:
            self._counts["racy_fetches"] += 1
        return datas, keep

    async def _store_fetched(self, of: OpenFile, idx: int, data: bytes, keep: bool) -> bytes:
        """Cache a chunk the origin gave and name it in the manifest, if it may be kept (not racy); the bytes
        are served either way.

        The manifest write is the catalog's, outside the cache's timeout: a locked catalog delays this read
        (within its own deadline) but never marks the cache disk unstable.
        """
        row = of.row
        if not keep:
            return data
        digest = await self.cache.store(data, f"a chunk of {row.path}")
        if digest is None:
            return data
        try:
            await self._thread(self.catalog.set_manifest_chunk, row.version, idx, digest)
        except CatalogError as exc:
            self._counts["manifest_failures"] += 1
            log.warning("catalog: cannot record a chunk of %s (%s); serving it uncached", row.path, exc)
            return data
        of.manifest[idx] = digest
        self._keep(of, idx, digest, data)
        return data

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


