"""The read policy on its own (plan.py): pure, no trio, no I/O. Sequential detection, the window, seeks, the
next track, and when a small read is served from blocks."""

from __future__ import annotations

from musicfs.read.plan import STREAMING_SOON, History, ReadPolicy

CHUNK = 1 << 20
READ = 128 << 10  # FUSE's read size
BLOCK = 64 << 10


def nothing_ready(idx: int) -> bool:
    return False


def sequential(policy: ReadPolicy, history: History, start: int, end: int, ready=nothing_ready) -> list:
    """The plans of reading [start, end) in FUSE-sized reads."""
    return [policy.plan(history, off, min(off + READ, history.size), ready) for off in range(start, end, READ)]


def ahead(plans) -> list[int]:
    return [i for plan in plans for i in plan.ahead]


def test_sequential_reads_open_a_window_that_grows_to_its_bound():
    policy = ReadPolicy(CHUNK, max_window=8)
    h = policy.history(40 * CHUNK)
    assert ahead(sequential(policy, h, 0, CHUNK - READ)) == []  # less than a chunk read: nothing ahead yet
    plans = sequential(policy, h, CHUNK - READ, CHUNK)
    assert ahead(plans) == [1, 2] and plans[-1].sequential  # the window opens at 2 chunks
    indexes = ahead(sequential(policy, h, CHUNK, 6 * CHUNK))
    assert len(indexes) == len(set(indexes)), "a chunk was planned twice"
    assert max(indexes) == 5 + 8  # 8 chunks (max_window) ahead of chunk 5
    assert h.window == 8


def test_a_tag_reader_pattern_never_starts_read_ahead():
    policy = ReadPolicy(CHUNK, max_window=8)
    for _ in range(3):  # open, read the head, seek to the tail, close; again and again
        h = policy.history(40 * CHUNK)
        plans = sequential(policy, h, 0, 4 * READ)  # mutagen reads a few blocks of the head
        plans.append(policy.plan(h, 40 * CHUNK - READ, 40 * CHUNK, nothing_ready))
        plans.append(policy.plan(h, 20 * CHUNK, 20 * CHUNK + READ, nothing_ready))  # an Ogg's last page, a moov
        assert ahead(plans) == [] and not any(p.sequential or p.restart or p.next_head for p in plans)


def test_a_seek_restarts_the_run_and_drops_the_window():
    policy = ReadPolicy(CHUNK, max_window=8)
    h = policy.history(40 * CHUNK)
    sequential(policy, h, 0, 3 * CHUNK)
    assert h.window > 0
    plan = policy.plan(h, 30 * CHUNK, 30 * CHUNK + READ, nothing_ready)
    assert plan.restart and plan.ahead == range(0) and h.window == 0 and h.run == READ
    assert plan.played  # it was streaming up to this read: what it passed stays protected


def test_the_next_track_is_planned_once_from_the_last_chunk():
    policy = ReadPolicy(CHUNK, max_window=8, next_track_chunks=2)
    h = policy.history(3 * CHUNK)
    assert not any(p.next_head for p in sequential(policy, h, 0, 2 * CHUNK))
    assert [p.next_head for p in sequential(policy, h, 2 * CHUNK, 3 * CHUNK) if p.next_head] == [2]
    assert not any(p.next_head for p in sequential(policy, h, 2 * CHUNK + READ, 3 * CHUNK))  # a reread: not twice


def test_without_read_ahead_every_read_loads_whole_chunks_and_is_played():
    policy = ReadPolicy(CHUNK, block_size=BLOCK, readahead=False)
    assert policy.history(10 * CHUNK) is None
    plan = policy.plan(None, 100, 200, nothing_ready)
    assert (plan.first, plan.last, plan.blocks, plan.played, plan.sequential) == (0, 0, False, True, False)


def test_a_small_read_outside_a_stream_is_served_from_blocks_unless_its_chunk_is_ready():
    policy = ReadPolicy(CHUNK, block_size=BLOCK)
    h = policy.history(10 * CHUNK)
    assert policy.plan(h, 5 * CHUNK + 10, 5 * CHUNK + 4096, nothing_ready).blocks
    assert not policy.plan(policy.history(10 * CHUNK), 5 * CHUNK + 10, 5 * CHUNK + 4096, lambda idx: True).blocks
    assert not policy.plan(policy.history(10 * CHUNK), 2 * CHUNK, 3 * CHUNK, nothing_ready).blocks  # a whole chunk
    last = policy.history(10 * CHUNK - 100)  # the last chunk is short: a read to EOF covers it
    assert not policy.plan(last, 9 * CHUNK, 10 * CHUNK - 100, nothing_ready).blocks


def test_a_long_sequential_run_stops_using_blocks_at_a_chunk_boundary_and_asks_for_the_chunk_end():
    policy = ReadPolicy(CHUNK, block_size=BLOCK)
    h = policy.history(10 * CHUNK)
    plans = [policy.plan(h, off, off + BLOCK, nothing_ready) for off in range(0, STREAMING_SOON + BLOCK, BLOCK)]
    assert all(p.blocks for p in plans)
    assert not any(p.to_chunk_end for p in plans[:STREAMING_SOON // BLOCK]) and plans[-1].to_chunk_end
    slow = ReadPolicy(CHUNK, block_size=BLOCK, min_run=4 * CHUNK)  # no window yet: the boundary rule alone
    at_boundary = slow.history(10 * CHUNK)
    for off in range(0, CHUNK, BLOCK):
        assert slow.plan(at_boundary, off, off + BLOCK, nothing_ready).blocks
    assert at_boundary.window == 0
    assert not slow.plan(at_boundary, CHUNK, CHUNK + BLOCK, nothing_ready).blocks  # read-ahead is about to
    assert slow.plan(at_boundary, CHUNK + BLOCK, CHUNK + 2 * BLOCK, nothing_ready).blocks  # mid-chunk: blocks


def test_a_reader_asking_past_chunks_it_read_from_the_page_cache_keeps_its_window():
    policy = ReadPolicy(CHUNK, max_window=8)
    h = policy.history(40 * CHUNK)
    sequential(policy, h, 0, 2 * CHUNK)
    window = h.window
    pushed = {2, 3, 4, 5}.__contains__  # chunks 2..5 went to the page cache: no request came for them
    plan = policy.plan(h, 6 * CHUNK, 6 * CHUNK + READ, nothing_ready, pushed)
    assert not plan.restart and plan.sequential and h.window == min(8, 2 * window)
    assert list(plan.ahead) and min(plan.ahead) > 6
    gap = policy.plan(h, 20 * CHUNK, 20 * CHUNK + READ, nothing_ready, pushed)  # chunks 7..19 were not pushed
    assert gap.restart
