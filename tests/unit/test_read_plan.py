"""The read policy on its own (plan.py): pure, no trio, no I/O. Sequential detection, the window, seeks, the
next track, and when a small read is served from blocks."""

from __future__ import annotations

import dataclasses

import pytest

from musicfs.read.plan import STREAMING_SOON, History, ReadPlan, ReadPolicy

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
    assert ahead(plans) == [1, 2, 3, 4] and plans[-1].sequential  # the window opens at 4 chunks
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


# -- exact plans and boundaries (the mutation run of plan.py uses this file: bench/mutate.py) --------------------
HALF = CHUNK // 2


def test_a_whole_file_read_in_half_chunks_gives_exactly_these_plans():
    policy = ReadPolicy(CHUNK, max_window=4)
    h = policy.history(8 * CHUNK)
    plans = [policy.plan(h, off, off + HALF, nothing_ready) for off in range(0, 8 * CHUNK, HALF)]
    assert [list(p.ahead) for p in plans] == [
        [], [1, 2, 3, 4],  # chunk 0: a chunk read in a row opens a window of 4 (max_window here)
        [5], [],  # chunk 1: 4 ahead of chunk 1, one more
        [6], [], [7], [],  # then one more chunk each time the reader enters one, never past the last
        [], [], [], [], [], [], [], []]
    assert [p.next_head for p in plans] == [0] * 14 + [2, 0]  # the next track's head: once, entering the last chunk
    assert [p.sequential for p in plans] == [False] + [True] * 15  # from the read that opened the window on
    assert [p.played for p in plans] == [False, False] + [True] * 14  # the handle streamed before this read
    assert [(p.first, p.last) for p in plans[:3]] == [(0, 0), (0, 0), (1, 1)]
    assert not any(p.restart or p.blocks for p in plans)
    assert [p.to_chunk_end for p in plans] == [False] + [True] * 15  # half a MiB read in a row
    assert (h.window, h.ahead, h.last_chunk, h.next_offset, h.run, h.next_planned) == (4, 8, 7, 8 * CHUNK, 8 * CHUNK, True)


def test_the_window_opens_at_exactly_min_run_bytes_from_the_first_byte():
    policy = ReadPolicy(CHUNK)
    h = policy.history(8 * CHUNK)
    assert policy.plan(h, 0, CHUNK - 1, nothing_ready).ahead == range(0) and h.run == CHUNK - 1
    assert policy.plan(h, CHUNK - 1, CHUNK, nothing_ready).ahead == range(1, 5)
    one_read = policy.history(8 * CHUNK)
    assert policy.plan(one_read, 0, CHUNK, nothing_ready).ahead == range(1, 5)
    later = ReadPolicy(CHUNK, min_run=3 * HALF)
    h = later.history(8 * CHUNK)
    assert not list(later.plan(h, 0, CHUNK, nothing_ready).ahead)
    assert list(later.plan(h, CHUNK, CHUNK + HALF, nothing_ready).ahead) == [2, 3, 4, 5]


def test_the_window_defaults_to_32_chunks_and_is_never_below_2():
    policy = ReadPolicy(CHUNK)
    h = policy.history(100 * CHUNK)
    plans = [policy.plan(h, off, off + CHUNK, nothing_ready) for off in range(0, 10 * CHUNK, CHUNK)]
    assert h.window == 32 and max(i for p in plans for i in p.ahead) == 9 + 32
    assert ReadPolicy(CHUNK, max_window=1).max_window == 2
    tiny = ReadPolicy(CHUNK, max_window=0)
    h = tiny.history(100 * CHUNK)
    plans = [tiny.plan(h, off, off + CHUNK, nothing_ready) for off in range(0, 5 * CHUNK, CHUNK)]
    assert h.window == 2 and [list(p.ahead) for p in plans] == [[1, 2], [3], [4], [5], [6]]


def test_the_next_track_head_defaults_to_two_chunks():
    policy = ReadPolicy(CHUNK)
    h = policy.history(2 * CHUNK)
    assert [p.next_head for p in (policy.plan(h, 0, CHUNK, nothing_ready), policy.plan(h, CHUNK, 2 * CHUNK,
                                                                                       nothing_ready))] == [0, 2]


@pytest.mark.parametrize("chunk, tolerance", [(CHUNK, CHUNK), (64 << 10, 256 << 10)])
def test_reads_within_the_tolerance_of_the_run_continue_it_and_beyond_it_seek(chunk, tolerance):
    policy = ReadPolicy(chunk)
    assert policy.tolerance == tolerance

    def streaming():
        h = policy.history(200 * chunk)
        for off in range(0, 2 * chunk, chunk // 2):
            policy.plan(h, off, off + chunk // 2, nothing_ready)
        assert h.window and h.next_offset == 2 * chunk
        return h

    h = streaming()
    near = policy.plan(h, 2 * chunk + tolerance, 2 * chunk + tolerance + 4096, nothing_ready)
    assert not near.restart and h.window and h.run == 2 * chunk + 4096 and h.next_offset == 2 * chunk + tolerance + 4096
    h = streaming()
    back = policy.plan(h, 2 * chunk - tolerance, 2 * chunk - tolerance + 4096, nothing_ready)  # behind: also near
    assert not back.restart and h.next_offset == 2 * chunk and h.run == 2 * chunk
    h = streaming()
    assert policy.plan(h, 2 * chunk + tolerance + 1, 2 * chunk + tolerance + 4097, nothing_ready).restart
    h = streaming()
    assert policy.plan(h, 2 * chunk - tolerance - 1, 2 * chunk - tolerance + 4095, nothing_ready).restart
    assert (h.window, h.ahead, h.last_chunk, h.run) == (0, 0, -1, 4096)


def test_a_restart_opens_a_new_window_from_where_it_landed():
    policy = ReadPolicy(CHUNK, max_window=4)
    h = policy.history(40 * CHUNK)
    for off in range(0, 4 * CHUNK, HALF):
        policy.plan(h, off, off + HALF, nothing_ready)
    policy.plan(h, 20 * CHUNK, 20 * CHUNK + HALF, nothing_ready)
    assert policy.plan(h, 20 * CHUNK + HALF, 21 * CHUNK, nothing_ready).ahead == range(21, 25)


def test_streaming_soon_starts_at_half_a_mebibyte_read_in_a_row():
    policy = ReadPolicy(CHUNK, block_size=BLOCK)
    for run, soon in ((512 << 10, True), ((512 << 10) - 4096, False)):
        h = policy.history(10 * CHUNK)
        policy.plan(h, 0, run, nothing_ready)
        assert policy.plan(h, run, run + 4096, nothing_ready).to_chunk_end is soon
    assert STREAMING_SOON == 512 << 10  # the tests above speak of it in bytes
    h = policy.history(10 * CHUNK)
    policy.plan(h, 0, 512 << 10, nothing_ready)
    far = policy.plan(h, (512 << 10) + policy.tolerance + 1, (512 << 10) + policy.tolerance + 4097, nothing_ready)
    assert not far.to_chunk_end  # a seek is no stream, however long the run before it


def test_block_size_is_used_only_between_zero_and_a_chunk():
    assert ReadPolicy(CHUNK, block_size=BLOCK).block_size == BLOCK
    for size in (0, -1, CHUNK, 2 * CHUNK):
        policy = ReadPolicy(CHUNK, block_size=size)
        assert policy.block_size == 0
        assert not policy.plan(policy.history(10 * CHUNK), 10, 4096, nothing_ready).blocks
    assert ReadPolicy(CHUNK, block_size=CHUNK - 1).block_size == CHUNK - 1


def test_blocks_cover_a_read_only_while_it_covers_no_whole_chunk():
    policy = ReadPolicy(CHUNK, block_size=BLOCK)
    fresh = lambda: policy.history(10 * CHUNK)
    assert policy.plan(fresh(), 0, CHUNK - 1, nothing_ready).blocks
    assert not policy.plan(fresh(), 0, CHUNK, nothing_ready).blocks
    assert policy.plan(fresh(), 1, CHUNK + 1, nothing_ready).blocks  # two chunks, neither whole
    assert not policy.plan(fresh(), HALF, 2 * CHUNK, nothing_ready).blocks  # chunk 1 whole
    half_ready = {0}.__contains__
    assert policy.plan(fresh(), HALF, CHUNK + 10, half_ready).blocks  # chunk 1 is not ready
    assert not policy.plan(fresh(), HALF, CHUNK + 10, {0, 1}.__contains__).blocks
    streaming = fresh()
    for off in range(0, CHUNK, HALF):
        policy.plan(streaming, off, off + HALF, nothing_ready)
    assert streaming.window and not policy.plan(streaming, CHUNK + 10, CHUNK + 20, nothing_ready).blocks


def test_pushed_chunks_count_only_when_every_one_between_was_pushed():
    policy = ReadPolicy(CHUNK, max_window=8)

    def streaming():
        h = policy.history(40 * CHUNK)
        sequential(policy, h, 0, 2 * CHUNK)
        return h

    h = streaming()
    plan = policy.plan(h, 6 * CHUNK, 6 * CHUNK + READ, nothing_ready, {2, 3, 4, 5}.__contains__)
    assert not plan.restart and h.run == 6 * CHUNK + READ
    h = streaming()
    assert policy.plan(h, 6 * CHUNK, 6 * CHUNK + READ, nothing_ready, {2, 3, 5}.__contains__).restart
    not_streaming = ReadPolicy(CHUNK, min_run=100 * CHUNK)
    h = not_streaming.history(40 * CHUNK)
    not_streaming.plan(h, 0, CHUNK, nothing_ready)
    not_streaming.plan(h, 6 * CHUNK, 6 * CHUNK + READ, nothing_ready, lambda idx: True)
    assert h.run == READ  # without a window nothing was pushed for it: a jump is a jump


def test_a_plan_is_frozen_and_its_defaults_are_a_plain_read():
    plan = ReadPlan(3, 4)
    assert (plan.blocks, plan.to_chunk_end, plan.restart, plan.ahead, plan.next_head, plan.played,
            plan.sequential) == (False, False, False, range(0), 0, True, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.first = 1  # type: ignore[misc]
    h = ReadPolicy(CHUNK).history(CHUNK + 1)
    assert (h.chunks, h.next_offset, h.run, h.window, h.ahead, h.last_chunk, h.next_planned) == (2, -1, 0, 0, 0, -1,
                                                                                               False)
    assert ReadPolicy(CHUNK).history(0).chunks == 0


def test_empty_reads_and_empty_files_plan_nothing_ahead():
    policy = ReadPolicy(CHUNK)
    h = policy.history(8 * CHUNK)
    policy.plan(h, 0, CHUNK, nothing_ready)
    before = dataclasses.replace(h)
    assert policy.plan(h, CHUNK, CHUNK, nothing_ready).ahead == range(0) and h == before
    empty = policy.history(0)
    assert policy.plan(empty, 0, 0, nothing_ready).ahead == range(0)


def test_the_window_doubles_each_new_chunk_up_to_its_bound_and_not_on_a_step_back():
    policy = ReadPolicy(CHUNK, max_window=16)
    h = policy.history(100 * CHUNK)
    windows = []
    for off in range(0, 6 * CHUNK, CHUNK):
        policy.plan(h, off, off + CHUNK, nothing_ready)
        windows.append(h.window)
    assert windows == [4, 8, 16, 16, 16, 16]
    slow_start = ReadPolicy(CHUNK, max_window=16, first_window=2)
    h = slow_start.history(100 * CHUNK)
    assert [slow_start.plan(h, off, off + CHUNK, nothing_ready) and h.window
            for off in range(0, 5 * CHUNK, CHUNK)] == [2, 4, 8, 16, 16]
    assert ReadPolicy(CHUNK, max_window=3).first_window == 3  # never past the bound
    narrow = ReadPolicy(CHUNK, max_window=16)
    h = narrow.history(100 * CHUNK)
    narrow.plan(h, 0, 2 * CHUNK, nothing_ready)  # into chunk 1: a window of 4
    narrow.plan(h, 2 * CHUNK, 2 * CHUNK + HALF, nothing_ready)  # chunk 2: 8
    assert h.window == 8
    narrow.plan(h, CHUNK + HALF, 2 * CHUNK, nothing_ready)  # the kernel's reads a little out of order: chunk 1
    assert h.window == 8 and h.last_chunk == 1
    narrow.plan(h, 2 * CHUNK + HALF, 3 * CHUNK, nothing_ready)  # chunk 2 again: entered anew, so it doubles
    assert h.window == 16


def test_the_last_chunk_a_read_touches_counts_its_last_byte_only():
    policy = ReadPolicy(CHUNK)
    assert (policy.plan(None, 0, CHUNK + 1, nothing_ready).last, policy.plan(None, 0, CHUNK, nothing_ready).last) \
        == (1, 0)
    h = policy.history(10 * CHUNK)
    plan = policy.plan(h, CHUNK - 10, CHUNK + 1, nothing_ready)
    assert (plan.first, plan.last) == (0, 1)


def test_blocks_need_every_touched_chunk_ready_to_be_skipped_and_a_whole_chunk_wins():
    policy = ReadPolicy(CHUNK, block_size=BLOCK)
    fresh = lambda: policy.history(10 * CHUNK)
    assert not policy.plan(fresh(), 5 * CHUNK + 10, 6 * CHUNK, {5}.__contains__).blocks  # ready: the chunk serves it
    assert policy.plan(fresh(), 5 * CHUNK + 10, 6 * CHUNK, {4, 6}.__contains__).blocks  # its neighbours do not
    assert policy.plan(fresh(), CHUNK + 10, 2 * CHUNK, nothing_ready).blocks  # to a chunk's end, not from its start
    assert not policy.plan(fresh(), CHUNK, 2 * CHUNK + 10, nothing_ready).blocks  # chunk 1 whole, and a bit more


def test_every_chunk_boundary_of_a_long_run_without_a_window_loads_the_chunk():
    slow = ReadPolicy(CHUNK, block_size=BLOCK, min_run=8 * CHUNK)
    h = slow.history(10 * CHUNK)
    for off in range(0, 2 * CHUNK, BLOCK):
        slow.plan(h, off, off + BLOCK, nothing_ready)
    assert h.window == 0 and not slow.plan(h, 2 * CHUNK, 2 * CHUNK + BLOCK, nothing_ready).blocks


def test_streaming_soon_counts_the_distance_to_the_run_not_its_bits():
    policy = ReadPolicy(CHUNK, block_size=BLOCK, min_run=100 * CHUNK)
    h = policy.history(10 * CHUNK)
    policy.plan(h, 0, 3 * HALF, nothing_ready)  # a run of 1.5 MiB, no window yet
    at = 3 * HALF + policy.tolerance  # exactly the tolerance ahead: still the run
    assert policy.plan(h, at, at + 4096, nothing_ready).to_chunk_end


def test_pushed_chunks_extend_the_run_by_exactly_the_bytes_skipped():
    policy = ReadPolicy(CHUNK, max_window=8)
    h = policy.history(40 * CHUNK)
    sequential(policy, h, 0, 3 * CHUNK)
    policy.plan(h, 6 * CHUNK, 6 * CHUNK + READ, nothing_ready, {3, 4, 5}.__contains__)
    assert h.run == 6 * CHUNK + READ and h.next_offset == 6 * CHUNK + READ


def test_an_empty_read_far_into_a_file_is_no_seek():
    policy = ReadPolicy(CHUNK)
    h = policy.history(8 * CHUNK)
    policy.plan(h, 0, 2 * CHUNK, nothing_ready)
    before = dataclasses.replace(h)
    at, end = 5 * CHUNK, int(str(5 * CHUNK))  # equal, and not the same int object
    plan = policy.plan(h, at, end, nothing_ready)
    assert not plan.restart and plan.ahead == range(0) and plan.next_head == 0 and h == before


def test_policy_options_are_keywords_and_a_one_byte_block_is_a_block():
    with pytest.raises(TypeError):
        ReadPolicy(CHUNK, BLOCK)  # type: ignore[misc]
    assert ReadPolicy(CHUNK, block_size=1).block_size == 1


def test_a_read_one_byte_into_a_chunk_touches_that_chunk():
    policy = ReadPolicy(CHUNK, block_size=BLOCK)
    assert policy.plan(policy.history(10 * CHUNK), 5 * CHUNK + 10, 6 * CHUNK + 1, {5}.__contains__).blocks
    eager = ReadPolicy(CHUNK, min_run=1)
    assert eager.plan(eager.history(10 * CHUNK), 0, CHUNK + 1, nothing_ready).ahead == range(2, 6)


def test_the_window_does_not_double_within_the_chunk_it_is_in():
    policy = ReadPolicy(CHUNK, max_window=16)
    h = policy.history(100 * CHUNK)
    for off, window in ((0, 4), (CHUNK, 8), (CHUNK + HALF, 8), (2 * CHUNK, 16)):
        policy.plan(h, off, off + (CHUNK if off == 0 else HALF), nothing_ready)
        assert h.window == window, off


def test_the_next_track_is_planned_from_the_last_chunk_of_a_long_file_too():
    policy = ReadPolicy(CHUNK, min_run=1)  # 300 chunks: numbers past the small ints Python shares
    h = policy.history(300 * CHUNK)
    assert policy.plan(h, 299 * CHUNK, 300 * CHUNK, nothing_ready).next_head == 2
