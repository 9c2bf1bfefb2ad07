"""Small reads outside a stream, served from blocks (library/blocks.py): small verified ranges fetched aligned."""

from __future__ import annotations

import logging

import trio

from ..library import Block, FileVersion, aligned, cover, cut, merge
from ..shared import (
    CatalogError,
)
from .open_files import OpenFile
from .readahead import Stream

log = logging.getLogger(__name__)


# A sequential run this long (a few FUSE reads) is no tag reader's: its next uncached small read fetches the rest
# of its chunk at once (mediainfo, ffprobe, beets and mpd read less than this of a file's head in a row).
STREAMING_SOON = 512 << 10


class SmallReads:
    """FileReader's small reads (see the reader's docstring); state lives in FileReader."""

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
