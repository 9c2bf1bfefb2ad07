"""Blocks: small verified pieces of a file's content, for reads that are not part of a stream.

A probe read (a tag reader, a media server's scan) of a region no cached chunk holds fetches a small aligned
range (`BLOCK_SIZE`, aligned to it, clipped to the file) instead of a whole chunk. Blocks are recorded in the
catalog's `blocks` table, (file_id, ident, offset, length, hash), keyed by the file's identity like manifests
(a changed file drops them), and their bytes are content-addressed objects in the CAS, verified on every read.
MusicFS's own scan keeps the ranges it fetched to read tags the same way (cut at the same boundaries).

A reader uses any block that covers (part of) a request, whatever its offset and length; chunks take
precedence: once a chunk is cached, the blocks inside it are simply not used any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

BLOCK_SIZE = 128 << 10


@dataclass(frozen=True)
class Block:
    offset: int
    length: int
    digest: str

    @property
    def end(self) -> int:
        return self.offset + self.length


def aligned(start: int, end: int, size: int, block: int = BLOCK_SIZE) -> tuple[int, int]:
    """[start, end) widened to `block` boundaries and clipped to the file: (offset, length)."""
    lo = start - start % block
    hi = min(-(-end // block) * block, size)
    return lo, hi - lo


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) ranges, overlapping or touching ones joined, in order."""
    out: list[list[int]] = []
    for off, n in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        else:
            out.append([off, n])
    return [(a, b) for a, b in out]


def cut(pieces: Iterable[tuple[int, bytes]], block: int = BLOCK_SIZE) -> list[tuple[int, bytes]]:
    """Fetched (offset, bytes) pieces, contiguous ones joined, cut at `block` boundaries: what is stored as
    blocks (a piece never crosses a boundary, so the scan's blocks line up with the reader's)."""
    runs: list[tuple[int, bytearray]] = []
    for off, data in sorted(((o, d) for o, d in pieces if d), key=lambda p: p[0]):
        if runs and off <= runs[-1][0] + len(runs[-1][1]):
            start, buf = runs[-1]
            tail = data[start + len(buf) - off:]
            buf += tail
        else:
            runs.append((off, bytearray(data)))
    out = []
    for start, buf in runs:
        pos = start
        while pos < start + len(buf):
            stop = min(pos - pos % block + block, start + len(buf))
            out.append((pos, bytes(buf[pos - start:stop - start])))
            pos = stop
    return out


def cover(start: int, end: int, blocks: Iterable[Block]) -> tuple[list[Block], list[tuple[int, int]]]:
    """The blocks to read [start, end) from (greedy: at each position the usable block reaching furthest), and
    the gaps none covers, as (offset, end) pairs."""
    spans = sorted((b for b in blocks if b.end > start and b.offset < end), key=lambda b: b.offset)
    used: list[Block] = []
    gaps: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        best = None
        for b in spans:
            if b.offset <= pos < b.end and (best is None or b.end > best.end):
                best = b
        if best is not None:
            used.append(best)
            pos = min(best.end, end)
            continue
        nxt = min((b.offset for b in spans if b.offset > pos), default=end)
        gaps.append((pos, min(nxt, end)))
        pos = min(nxt, end)
    return used, gaps
