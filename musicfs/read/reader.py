"""FileReader: the handle table, and each read carried out as its plan says (plan.py).

A read is planned (blocks or chunks, what to load ahead, what to keep) and carried out by the parts the read
path is built of (wiring.py): the ChunkLoader (one load per chunk, verified, stored), the BlockReader (small
reads outside a stream), ReadAhead (loads ahead of the reader), Protection (what the cache evicts last) and the
PagePusher (verified chunks of a sequential reader into the kernel's page cache). An open file pins only the
chunks around where it is read (the one before the current one and those ahead), so reading a file larger than
the cache never holds the cache over its quota; what playback still wants goes last when the cache evicts: the
chunks a played file's reader has passed, until its release, and the heads of the most recent next tracks.

Open files are keyed by version (FileVersion): a handle opened before the file changed keeps reading the old
content's chunks, one opened after reads the new.
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
from ..library import Block, FileRow, FileVersion
from ..origins import OriginRegistry, RegistryStream
from ..shared import MusicFSError
from .block_reader import BlockReader
from .keeping import Protection
from .loader import ChunkLoader
from .open_files import NextHead, OpenFile
from .pages import PagePusher, PagePushStatistics
from .plan import History, ReadPlan, ReadPolicy
from .readahead import Lane, ReadAhead, ReadAheadStatistics

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
    pages: PagePushStatistics | None = None  # chunks pushed into the kernel's page cache


@dataclass
class Handle:
    """One open handle: its file's version, where it has read, and its loads ahead."""

    version: FileVersion
    history: History | None
    lane: Lane | None


class FileReader:
    def __init__(self, *, cache: ChunkCache, origins: OriginRegistry, loader: ChunkLoader, blocks: BlockReader | None,
                 policy: ReadPolicy, readahead: ReadAhead | None, protection: Protection, pages: PagePusher | None,
                 files: dict[FileVersion, OpenFile], counts: collections.Counter, read_timeout: float):
        """Built by `build_reader` (wiring.py), which makes the parts it is given."""
        self.cache = cache
        self.origins = origins
        self.loader = loader
        self.blocks = blocks
        self.policy = policy
        self.readahead = readahead
        self.protection = protection
        self.pages = pages
        self.read_timeout = read_timeout
        self._open = files
        self._counts = counts
        self._handles = itertools.count(1)
        self._fh: dict[int, Handle] = {}
        self._closing: list[RegistryStream] = []  # origin streams of released files, closed by after_release

    @property
    def chunk_size(self) -> int:
        return self.loader.chunk_size

    @property
    def memory(self):
        return self.loader.memory

    @property
    def on_file_changed(self) -> Callable[[str], None] | None:
        """Told the origin path of a file found changed under a read (the daemon rescans)."""
        return self.loader.on_file_changed

    @on_file_changed.setter
    def on_file_changed(self, tell: Callable[[str], None] | None) -> None:
        self.loader.on_file_changed = tell

    # -- open / release ---------------------------------------------------------
    async def open(self, row: FileRow, next_track: Callable[[], FileRow | None] | None = None, *,
                   inode: int = 0) -> int:
        """A handle for reading; the chunks around where it reads are pinned until release. `next_track` names
        the track that follows in its album folder (its head is loaded when this one is read to its end);
        `inode`: the file's inode in the mount, where its pages are pushed (0: none)."""
        key = row.version
        if key not in self._open:
            with trio.fail_after(self.read_timeout):  # a locked catalog must not hang open()
                manifest, seen, blocks = await self.loader.thread(self._opening, row)
            if key not in self._open:  # another open may have won while we waited
                self._open[key] = OpenFile(row, manifest, seen, refs=0, next_track=next_track, blocks=blocks)
        of = self._open[key]
        of.refs += 1
        if inode and not of.inode:
            of.inode = inode
            if self.pages is not None:
                self.pages.bind(inode, key)
        self.protection.opened(key)
        fh = next(self._handles)
        lane = Lane(key) if self.readahead is not None else None
        self._fh[fh] = Handle(key, self.policy.history(row.size), lane)
        return fh

    def _opening(self, row: FileRow) -> tuple[dict[int, str], float, list[Block] | None]:
        """(In a thread.) What an open needs of the catalog, in one call: the version's manifest, when it was first
        recorded, and its blocks (a first small read then asks the catalog nothing more)."""
        manifest, seen = self.loader.version(row)
        blocks = None if self.blocks is None else [Block(*r) for r in self.loader.catalog.blocks(row.version)]
        return manifest, seen, blocks

    def settled(self, fh: int) -> bool:
        """Whether the handle's version is settled now (origins/base.py): every fetch of it from now on may be
        cached. The FUSE open lets the kernel keep pages only of such handles: a handle of a racy version reads
        with direct I/O, so bytes of a version that may still change unseen never enter the page cache."""
        handle = self._fh.get(fh)
        of = self._open.get(handle.version) if handle is not None else None
        return of is not None and self.origins.settled(of.row.identity, of.seen, self.origins.wall_clock())

    def release(self, fh: int) -> None:
        handle = self._fh.pop(fh, None)
        if handle is None:
            return
        if handle.lane is not None:
            self.readahead.cancel(handle.lane)  # what it still loads ahead for this handle is cancelled
        of = self._open.get(handle.version)
        if of is None:
            return
        of.refs -= 1
        if of.refs <= 0:
            for digest in of.pinned:
                self.cache.pins.release(digest)
            of.pinned.clear()
            self.protection.drop(handle.version)  # what it passed (and its head) is ordinary again
            if of.inode and self.pages is not None:
                self.pages.unbind(of.inode)
            if of.origin is not None:
                self._closing.append(of.origin)  # closing it is network I/O: after_release, in a thread
                of.origin = None
            del self._open[handle.version]

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
                                memory_bytes=self.loader.memory.nbytes, **self._counts,
                                readahead=self.readahead.statistics() if self.readahead else None,
                                pages=self.pages.statistics() if self.pages else None)

    # -- reading --------------------------------------------------------------
    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the file, short only at EOF. Bounded by read_timeout."""
        return bytes(await self.read_buffer(fh, offset, size))

    async def read_buffer(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """`read`, as a buffer: a read that one chunk in memory serves is a slice of it, no copy and no await."""
        handle = self._fh.get(fh)
        of = self._open.get(handle.version) if handle is not None else None
        if of is None:
            raise BadHandle(f"read on unknown file handle {fh}")
        end = min(offset + size, of.row.size)
        if offset >= end:
            return b""
        plan = self.policy.plan(handle.history, offset, end, lambda idx: self.loader.ready(of, idx),
                                of.pushed.__contains__)
        # plan.played: the handle was streaming before this read (a window open)
        if handle.lane is not None and (plan.played or not self.origins.ordered_streams):
            self.loader.stream_origin(of)  # (SFTP: any read of an open file, on the handle kept open)
        if plan.sequential:
            of.sequential = True
        if plan.restart:
            self.readahead.cancel(handle.lane)
        # What lies ahead is queued before this read waits for its own bytes: a reader waiting on a chunk still on
        # its way must not hold back the loads beyond it (one round trip each, on a remote origin)
        self._queue_ahead(handle, of, plan)
        cs = self.chunk_size
        if plan.first == plan.last and not plan.blocks:  # the lean path: one chunk, in memory
            data = self.loader.in_memory(of, plan.first)  # (offered to the page cache: verified and kept)
            if data is not None:
                self._after(handle, of, plan)
                base = plan.first * cs
                return memoryview(data)[offset - base:end - base]
        with trio.fail_after(self.read_timeout):
            if plan.blocks or await self._blocks_hold(of, plan, offset, end):
                out = await self.blocks.read(of, offset, end, plan.to_chunk_end)
            else:
                parts = []
                for idx in range(plan.first, plan.last + 1):
                    data = await self.loader.chunk(of, idx)  # offered to the page cache if it was kept
                    base = idx * cs
                    parts.append(memoryview(data)[max(offset - base, 0):end - base])
                out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._after(handle, of, plan)
        return out

    async def _blocks_hold(self, of: OpenFile, plan: ReadPlan, offset: int, end: int) -> bool:
        """A read planned from chunks that are not in hand, whose bytes blocks hold whole (a small file the scan
        read all of): served from the blocks, with no origin request."""
        if self.blocks is None or all(self.loader.ready(of, idx) for idx in range(plan.first, plan.last + 1)):
            return False
        return await self.blocks.holds(of, offset, end)

    def _after(self, handle: Handle, of: OpenFile, plan: ReadPlan) -> None:
        """What a plan asks once its read is served: what the reader passed is released (one reader)."""
        if of.refs == 1:  # one reader: what lies behind it may be evicted again (last, while it is played)
            self._unpin_before(of, plan.first - 1, played=plan.played)

    def _queue_ahead(self, handle: Handle, of: OpenFile, plan: ReadPlan) -> None:
        """The chunks ahead and the next track's head a plan asks for, to read-ahead."""
        if handle.lane is None:
            return
        if plan.ahead:
            self.readahead.queue(handle.lane, plan.ahead)
        if plan.next_head and of.next_track is not None:
            row = of.next_track()
            if row is not None and row.size:
                chunks = -(-row.size // self.chunk_size)
                # its own lane: closing this file (the player moves on) must not cancel it
                self.readahead.queue(Lane(NextHead(row)), range(min(plan.next_head, chunks)), low=True)

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
