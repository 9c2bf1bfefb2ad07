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
import functools
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..cache import ChunkCache
from ..library import BLOCK_SIZE, Block, Catalog, FileRow, FileVersion, aligned, cover, cut, merge
from ..origins import OriginRegistry, RegistryStream
from ..shared import (
    CatalogError,
    MusicFSError,
    OriginFileChanged,
    OriginNotFound,
    OriginTransient,
    points,
    run_all,
)
from .readahead import ReadAhead, ReadAheadStatistics, Stream

log = logging.getLogger(__name__)


# A sequential run this long (a few FUSE reads) is no tag reader's: its next uncached small read fetches the rest
# of its chunk at once (mediainfo, ffprobe, beets and mpd read less than this of a file's head in a row).
STREAMING_SOON = 512 << 10


@dataclass(frozen=True)
class NextHead:
    """A read-ahead job's file: the head of the track after the one being read (not open, or open elsewhere)."""

    row: FileRow


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

    def has(self, digest: str) -> bool:
        return digest in self._data

    def discard(self, digest: str) -> None:
        data = self._data.pop(digest, None)
        if data is not None:
            self._bytes -= len(data)

    @property
    def nbytes(self) -> int:
        return self._bytes


NEXT_HEADS = 4  # next tracks whose heads (loaded by read-ahead, not open yet) stay protected


class Protection:
    """The one record of what the reader keeps last to go in the cache (ChunkCache.protect), per file key
    ((id, identity)): the chunks an open file's reader has passed (unpinned behind it), and the head of a next
    track read-ahead loaded. A file's protections end when it is released (`drop`); a head waits for its track
    to be opened (`opened`: the file owns it from then on, until its release), but only the `heads` most recent
    heads not open are kept: an older one is unprotected. Bounded by the open files' chunks and `heads` heads."""

    def __init__(self, cache: ChunkCache, heads: int = NEXT_HEADS):
        self.cache = cache
        self.heads = heads
        self._digests: dict[FileVersion, set[str]] = {}  # file key -> the digests protected for it
        # heads of tracks not open, oldest first
        self._waiting: collections.OrderedDict[FileVersion, None] = collections.OrderedDict()

    def add(self, key: FileVersion, digests) -> None:
        """Protect `digests` for the open file `key` (each once per file) until `drop(key)`."""
        digests = list(digests)
        if not digests:
            return
        held = self._digests.setdefault(key, set())
        for digest in digests:
            if digest not in held:
                held.add(digest)
                self.cache.protect(digest)

    def add_head(self, key: FileVersion, digests) -> None:
        """The head of a next track that is not open: protected until it is opened and released, or until
        `heads` newer heads wait."""
        self.add(key, digests)
        self._waiting[key] = None
        self._waiting.move_to_end(key)
        while len(self._waiting) > self.heads:
            self.drop(next(iter(self._waiting)))

    def opened(self, key: FileVersion) -> None:
        """The file was opened: its head (if one waits) is the file's now, dropped at its release."""
        self._waiting.pop(key, None)

    def drop(self, key: FileVersion) -> None:
        """Everything protected for `key` is ordinary again."""
        self._waiting.pop(key, None)
        for digest in self._digests.pop(key, ()):
            self.cache.unprotect(digest)


@dataclass
class OpenFile:
    row: FileRow
    manifest: dict[int, str]
    seen: float  # when the catalog first recorded this version (racy versions: origins/base.py, settled)
    pinned: dict[str, int] = field(default_factory=dict)  # digest -> chunk index, pinned against eviction
    refs: int = 1
    next_track: Callable[[], FileRow | None] | None = None  # the track after this one in its album folder
    origin: RegistryStream | None = None  # while streamed: the origins' open streams of the file (SFTP: kept open)
    blocks: list[Block] | None = None  # this version's recorded blocks (blocks.py), loaded at the first small read
    unpinned_below: int = 0  # its one reader has passed the chunks below this index (see _unpin_before)
    played: bool = False  # its one reader streams (see _unpin_before)


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


class FileReader:
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
        self._open: dict[int, OpenFile] = {}
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
                self.cache.unpin(digest)
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
    def _small_read(self, fh: int, of: OpenFile, offset: int, end: int) -> bool:
        """Whether [offset, end) is read from blocks: blocks are on, the handle is not streaming (no read-ahead
        window, and not a long sequential run entering a new chunk: that chunk is loaded whole, as read-ahead is
        about to), the read covers no whole chunk, and some chunk it touches is neither cached nor being loaded."""
        if not self.block_size:
            return False
        stream = self._streams.get(fh)
        cs, row = self.chunk_size, of.row
        if stream is None or stream.window or (offset % cs == 0 and self._streaming_soon(stream, offset)):
            return False
        indexes = range(offset // cs, (end - 1) // cs + 1)
        if any(offset <= i * cs and end >= min((i + 1) * cs, row.size) for i in indexes):
            return False
        for idx in indexes:
            digest = of.manifest.get(idx)
            if (row.version, idx) in self._inflight:
                continue
            if digest is None or not (self.memory.has(digest) or self.cache.may_have(digest)):
                return True
        return False

    def _streaming_soon(self, stream: Stream | None, offset: int) -> bool:
        """Whether this read continues a sequential run of STREAMING_SOON bytes or more: longer than tag readers
        read, so a player or a copy on its way to read-ahead (which starts at a chunk)."""
        return (stream is not None and stream.run >= STREAMING_SOON
                and abs(offset - stream.next_offset) <= self.readahead.tolerance)

    async def _read_blocks(self, of: OpenFile, offset: int, end: int, to_chunk_end: bool = False) -> bytes:
        """[offset, end) from the file's blocks (each verified), fetching the aligned blocks none covers;
        `to_chunk_end`: the last gap is fetched on to the end of its chunk (or the next block in hand), in the
        same request, so a reader about to stream needs one request for the rest of the chunk, not one a read."""
        row = of.row
        if of.blocks is None:
            rows = await self._thread(self.catalog.blocks, row.version)
            if of.blocks is None:  # another read may have loaded them meanwhile
                of.blocks = [Block(*r) for r in rows]
        got: dict[Block, bytes] = {}  # bytes in hand for this read: verified from the cache, or just fetched
        while True:
            usable = set(got) | {b for b in of.blocks if self.memory.has(b.digest) or self.cache.may_have(b.digest)}
            used, gaps = cover(offset, end, usable)
            missing = [b for b in used if b not in got]
            if missing:
                for b in missing:
                    data = self.memory.get(b.digest)
                    if data is None:
                        data = await self.cache.get(b.digest)  # verified; None: bad (quarantined), gone, bypassed
                    if data is None or len(data) != b.length:
                        if b in of.blocks:
                            of.blocks.remove(b)  # fetched again below, as a gap
                        break
                    self.memory.put(b.digest, data)
                    self._counts["block_hits"] += 1
                    got[b] = data
                continue
            if not gaps:
                break
            wanted = merge(aligned(s, e, row.size, self.block_size) for s, e in gaps)
            if to_chunk_end:
                start, n = wanted[-1]
                stop = min([b.offset for b in usable if b.offset >= start + n]
                           + [(start // self.chunk_size + 1) * self.chunk_size, row.size])
                wanted[-1] = (start, max(n, stop - start))
            keys = [(row.version, off) for start, n in wanted
                    for off in range(start, start + n, self.block_size)]
            busy = next((self._block_inflight[k] for k in keys if k in self._block_inflight), None)
            if busy is not None:  # another read is fetching (some of) these blocks: wait, then look again
                await busy.wait()
                continue
            got.update(await self._fetch_blocks(of, wanted, keys))
        out = bytearray()
        pos = offset
        while pos < end:
            b = max((b for b in got if b.offset <= pos < b.end), key=lambda b: b.end)
            out += got[b][pos - b.offset : min(end, b.end) - b.offset]
            pos = min(end, b.end)
        return bytes(out)

    async def _fetch_blocks(self, of: OpenFile, wanted: list[tuple[int, int]],
                            keys: list[tuple[FileVersion, int]]) -> dict[Block, bytes]:
        """Fetch the aligned ranges (one origin request each, identity-checked), cache them cut into blocks and
        record those in the catalog; the blocks' bytes (digest '' for those the cache did not take)."""
        row = of.row
        events = {key: trio.Event() for key in keys}
        self._block_inflight.update(events)
        try:
            datas, keep = await self._from_origin(of, wanted)
            self._counts["block_fetches"] += len(wanted)
            out: dict[Block, bytes] = {}
            stored: list[Block] = []
            for off, data in cut(zip((start for start, _ in wanted), datas), self.block_size):
                digest = await self.cache.store(data, f"a block of {row.path}") if keep else None
                block = Block(off, len(data), digest or "")
                out[block] = data
                if digest is not None:
                    self.memory.put(digest, data)
                    stored.append(block)
            if stored:
                try:
                    await self._thread(self.catalog.add_blocks, row.version,
                                       [(b.offset, b.length, b.digest) for b in stored])
                except CatalogError as exc:
                    self._counts["manifest_failures"] += 1
                    log.warning("catalog: cannot record blocks of %s (%s); serving them uncached", row.path, exc)
                else:
                    offsets = {b.offset for b in stored}
                    of.blocks = [b for b in of.blocks if b.offset not in offsets] + stored
            return out
        finally:
            for key, event in events.items():
                del self._block_inflight[key]
                event.set()

    async def _prefetch(self, key, indexes: list[int], fetched: Callable[[], None]) -> None:
        """Load chunks ahead of a reader (ReadAhead's fetch; consecutive indexes): into the caches, verified,
        like a read. Chunks the cache has (or that are on their way) are loaded in parallel; a run of chunks
        nobody has is fetched from the origins in one request, then each chunk is stored and named at once.
        `fetched()` is called as soon as no origin request of this batch is left."""
        if isinstance(key, NextHead):  # the head of the next track: loaded and cached, protected (pinned by no one yet)
            await self._prefetch_head(key.row, indexes, fetched)
            return
        of = self._open.get(key)
        if of is None:
            return  # closed meanwhile
        self._stream_origin(of)
        if not of.origin.ordered:  # (SFTP) the file's next batch may go to the origin beside this one
            fetched()
        await self._load_ahead(of, indexes, fetched)

    async def _prefetch_head(self, row: FileRow, indexes: list[int], fetched: Callable[[], None]) -> None:
        """Load the head of the next track and protect it: until that track is opened and released, or newer
        heads push it out (Protection); if it is open already, until its release."""
        key = row.version
        of = self._open.get(key)
        if of is None:
            manifest, seen = await self._thread(self._version, row)
            of = OpenFile(row, manifest, seen, refs=0)
        try:
            await self._load_ahead(of, indexes, fetched)
        finally:  # what was loaded, also when the job failed or timed out
            head = [d for d in map(of.manifest.get, indexes) if d is not None]
            if key in self._open:  # (opened meanwhile)
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
        loads = [(f"load-{idx}", functools.partial(self._chunk, of, idx)) for idx in here]
        if missing:
            loads.append(("fetch", functools.partial(self._fetch_missing, of, missing, fetched)))
        else:
            fetched()
        await run_all(loads)

    def _stream_origin(self, of: OpenFile) -> None:
        """A file read as a stream reads its origins through one open stream (S3: one GET read on; SFTP: the
        remote file kept open), for read-ahead and for the reader's own fetches alike; where streams need no
        order (SFTP), every read of an open file does (no open and close of the remote file per small read)."""
        if of.origin is None:
            of.origin = self.origins.open_stream(of.row.path, of.row.stat())

    async def _fetch_missing(self, of: OpenFile, missing: list[int], fetched: Callable[[], None]) -> None:
        """Uncached chunks: consecutive ones nobody loads yet in one origin request (reads of any of them wait
        for it, as _chunk, each until its own chunk is stored), else chunk by chunk. `fetched()` once no origin
        request is left."""
        keys = [(of.row.version, idx) for idx in missing]
        if (len(missing) < 2 or missing != list(range(missing[0], missing[-1] + 1))
                or any(k in self._inflight for k in keys)):  # (someone started one meanwhile)
            try:
                for idx in missing:
                    await self._chunk(of, idx)
            finally:
                fetched()
            return
        events = {key: trio.Event() for key in keys}
        self._inflight.update(events)

        def done(key) -> None:
            self._fresh.pop(key, None)
            if self._inflight.get(key) is events[key]:
                del self._inflight[key]
            events[key].set()

        try:
            try:
                data, keep = await self._fetch_span(of, missing[0], missing[-1])
            finally:
                fetched()
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
                    done(keys[n])

            # The chunks are hashed, written and named at once, on the cache's and the catalog's threads.
            await run_all([(f"store-{idx}", functools.partial(store, n, idx)) for n, idx in enumerate(missing)])
        finally:
            for key in keys:
                done(key)

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
            self.cache.unpin(digest)

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
                self.cache.pin(digest)
            elif of.played:
                self.protection.add(of.row.version, [digest])


