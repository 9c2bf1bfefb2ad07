"""L1: the block arithmetic (library/blocks.py) against brute force: many small random cases (a fixed seed), each
answer checked byte position by byte position by an oracle that shares no code with the module. Pure."""

from __future__ import annotations

import random

import pytest

from musicfs.library.blocks import Block, aligned, cover, cut, merge

CASES = 400


def positions(ranges) -> set[int]:
    return {p for off, n in ranges for p in range(off, off + n)}


@pytest.mark.parametrize("seed", range(4))
def test_merge_keeps_every_byte_joins_touching_ranges_and_sorts(seed):
    rng = random.Random(seed)
    for _ in range(CASES):
        ranges = [(rng.randrange(0, 60), rng.randrange(0, 12)) for _ in range(rng.randrange(0, 7))]
        out = merge(ranges)
        assert positions(out) == positions(ranges)
        assert all(n > 0 for _, n in out)
        assert all(a[0] + a[1] < b[0] for a, b in zip(out, out[1:])), (ranges, out)  # sorted, apart, not touching


@pytest.mark.parametrize("seed", range(4))
def test_cut_joins_contiguous_pieces_and_never_crosses_a_block(seed):
    rng = random.Random(100 + seed)
    content = bytes(rng.randrange(256) for _ in range(200))
    for _ in range(CASES):
        block = rng.choice([4, 8, 16])
        pieces = []
        for _ in range(rng.randrange(0, 6)):
            off, n = rng.randrange(0, 150), rng.randrange(0, 40)
            pieces.append((off, content[off:off + n]))
        out = cut(pieces, block)
        covered = {p for off, data in pieces for p in range(off, off + len(data))}
        assert {p for off, data in out for p in range(off, off + len(data))} == covered
        for off, data in out:
            assert data and data == content[off:off + len(data)]
            assert off // block == (off + len(data) - 1) // block  # within one block
        for (a, da), (b, _) in zip(out, out[1:]):
            assert a + len(da) <= b  # in order, no overlap
            if a + len(da) == b:
                assert b % block == 0  # contiguous pieces are only ever split at a boundary


@pytest.mark.parametrize("seed", range(4))
def test_cover_reads_each_position_from_the_block_reaching_furthest_and_names_the_gaps(seed):
    rng = random.Random(200 + seed)
    for _ in range(CASES):
        blocks = []
        for i in range(rng.randrange(0, 6)):
            off = rng.randrange(0, 50)
            blocks.append(Block(off, rng.randrange(1, 20), f"d{i}"))
        start = rng.randrange(0, 50)
        end = start + rng.randrange(1, 30)
        used, gaps = cover(start, end, blocks)
        pos = start
        expect_used, expect_gaps = [], []
        while pos < end:  # the oracle: walk position by position
            here = [b for b in blocks if b.offset <= pos < b.offset + b.length]
            if here:
                best = max(here, key=lambda b: b.offset + b.length)
                expect_used.append(best.offset + best.length)
                pos = min(best.offset + best.length, end)
            else:
                stop = pos
                while stop < end and not any(b.offset <= stop < b.offset + b.length for b in blocks):
                    stop += 1
                expect_gaps.append((pos, stop))
                pos = stop
        assert [b.end for b in used] == expect_used, (start, end, blocks, used)
        assert gaps == expect_gaps, (start, end, blocks, gaps)


def test_aligned_widens_to_block_boundaries_and_clips_to_the_file():
    for start in range(0, 70):
        for end in range(start + 1, 72):
            for size in (end, end + 5, 64, 100):
                if size < end:
                    continue
                off, n = aligned(start, end, size, 16)
                assert off == (start // 16) * 16 and off + n == min(-(-end // 16) * 16, size)
                assert off <= start and off + n >= end
