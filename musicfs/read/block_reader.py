"""BlockReader: small reads outside a stream, from blocks (library/blocks.py): small verified ranges fetched aligned."""

from __future__ import annotations

import logging

import trio

from ..library import Block, FileVersion, aligned, cover, cut, merge
from ..shared import (
    CatalogError,
)
from .loader import ChunkLoader
from .open_files import OpenFile

log = logging.getLogger(__name__)


class BlockReader:
    """Reads from blocks (see plan.py for when): each block verified, the aligned blocks none covers fetched (one
    origin request for a read that spans several), stored in the cache and recorded in the catalog."""

    def __init__(self, loader: ChunkLoader, *, block_size: int):
        self.loader = loader
        self.block_size = block_size
        self.chunk_size = loader.chunk_size
        self._block_inflight: dict[tuple[FileVersion, int], trio.Event] = {}  # (version, block offset) being fetched

    async def read(self, of: OpenFile, offset: int, end: int, to_chunk_end: bool = False) -> bytes:
        """[offset, end) from the file's blocks (each verified), fetching the aligned blocks none covers;
        `to_chunk_end`: the last gap is fetched on to the end of its chunk (or the next block in hand), in the
        same request, so a reader about to stream needs one request for the rest of the chunk, not one a read."""
        row = of.row
        await self._load_blocks(of)
        got: dict[Block, bytes] = {}  # bytes in hand for this read: verified from the cache, or just fetched
        while True:
            usable = set(got) | self._usable(of)
            used, gaps = cover(offset, end, usable)
            missing = [b for b in used if b not in got]
            if missing:
                for b in missing:
                    data = self.loader.memory.get(b.digest)
                    if data is None:
                        data = await self.loader.cache.get(b.digest)  # verified; None: bad (quarantined), gone, bypassed
                    if data is None or len(data) != b.length:
                        if b in of.blocks:
                            of.blocks.remove(b)  # fetched again below, as a gap
                        break
                    self.loader.memory.put(b.digest, data)
                    self.loader.counts["block_hits"] += 1
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

    async def holds(self, of: OpenFile, offset: int, end: int) -> bool:
        """Whether blocks in hand cover [offset, end) whole (a small file the scan read for its tags, all of it):
        read there, it needs no origin request."""
        await self._load_blocks(of)
        return not cover(offset, end, self._usable(of))[1]

    async def _load_blocks(self, of: OpenFile) -> None:
        """The file's blocks recorded in the catalog, once per open file."""
        if of.blocks is None:
            rows = await self.loader.thread(self.loader.catalog.blocks, of.row.version)
            if of.blocks is None:  # another read may have loaded them meanwhile
                of.blocks = [Block(*r) for r in rows]

    def _usable(self, of: OpenFile) -> set[Block]:
        """The file's blocks memory or the cache holds (a get still verifies each)."""
        memory, cache = self.loader.memory, self.loader.cache
        return {b for b in of.blocks or () if memory.has(b.digest) or cache.may_have(b.digest)}

    async def _fetch_blocks(self, of: OpenFile, wanted: list[tuple[int, int]],
                            keys: list[tuple[FileVersion, int]]) -> dict[Block, bytes]:
        """Fetch the aligned ranges (one origin request each, identity-checked), cache them cut into blocks and
        record those in the catalog; the blocks' bytes (digest '' for those the cache did not take)."""
        row = of.row
        events = {key: trio.Event() for key in keys}
        self._block_inflight.update(events)
        try:
            datas, keep = await self.loader.from_origin(of, wanted)
            self.loader.counts["block_fetches"] += len(wanted)
            out: dict[Block, bytes] = {}
            stored: list[Block] = []
            for off, data in cut(zip((start for start, _ in wanted), datas), self.block_size):
                digest = await self.loader.cache.store(data, f"a block of {row.path}") if keep else None
                block = Block(off, len(data), digest or "")
                out[block] = data
                if digest is not None:
                    self.loader.memory.put(digest, data)
                    stored.append(block)
            if stored:
                try:
                    await self.loader.thread(self.loader.catalog.add_blocks, row.version,
                                       [(b.offset, b.length, b.digest) for b in stored])
                except CatalogError as exc:
                    self.loader.counts["manifest_failures"] += 1
                    log.warning("catalog: cannot record blocks of %s (%s); serving them uncached", row.path, exc)
                else:
                    offsets = {b.offset for b in stored}
                    of.blocks = [b for b in of.blocks if b.offset not in offsets] + stored
            return out
        finally:
            for key, event in events.items():
                del self._block_inflight[key]
                event.set()
