"""ReadAhead (the executor of loads ahead) on its own: lanes, cancels, one batch per lane at the origin, the global
budget, next tracks at low priority, failures. What is queued is the policy's (test_read_plan.py)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from musicfs.read.readahead import Lane, ReadAhead, Room

CHUNK = 1 << 20
READ = 128 << 10  # FUSE's read size


class Fetches:
    """A fetch() that records what it was asked and can hold every call until released."""

    def __init__(self, hold: bool = False):
        self.calls: list[tuple[object, int]] = []
        self.batches: list[int] = []
        self.running = 0
        self.most = 0
        self.release = trio.Event()
        if not hold:
            self.release.set()
        self.cancelled = 0

    async def __call__(self, key, indexes, fetched):
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), "a batch is consecutive chunks"
        self.calls += [(key, index) for index in indexes]
        self.batches.append(len(indexes))
        self.running += len(indexes)  # chunks in flight
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
            fetched()
        except trio.Cancelled:
            self.cancelled += len(indexes)
            raise
        finally:
            self.running -= len(indexes)


async def queued(ra: ReadAhead, lane: Lane, indexes, **kw) -> None:
    ra.queue(lane, indexes, **kw)
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
async def running(nursery):
    made = []

    def make(fetch, **kw):
        ra = ReadAhead(fetch, chunk_size=CHUNK, **{"budget": 32 * CHUNK, **kw})
        nursery.start_soon(ra.run)
        made.append(ra)
        return ra

    return make


async def test_queued_chunks_are_loaded_each_once(running):
    fetch = Fetches()
    ra = running(fetch)
    lane = Lane("f")
    await queued(ra, lane, [1, 2])
    await queued(ra, lane, range(3, 14))
    assert [i for _, i in fetch.calls] == list(range(1, 14)) and {k for k, _ in fetch.calls} == {"f"}
    assert ra.statistics().streams == 1 and ra.statistics().started == 13


async def test_a_cancel_cancels_what_is_in_flight_and_drops_what_is_queued(running):
    fetch = Fetches(hold=True)
    ra = running(fetch, budget=2 * CHUNK)
    lane = Lane("f")
    await queued(ra, lane, range(1, 8))
    assert fetch.running == 2 and ra.statistics().queued > 0  # two in flight (the budget), more queued
    ra.cancel(lane)  # a seek
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.cancelled == 2 and fetch.running == 0
    stats = ra.statistics()
    assert stats.queued == 0 and stats.dropped > 0 and stats.streams == 0 and stats.inflight_bytes == 0
    await queued(ra, lane, [30])  # the run after the seek is loaded
    assert ("f", 30) in fetch.calls


async def test_a_lane_has_one_batch_at_the_origin_and_the_jobs_behind_it_join_into_the_next(running):
    # its origin stream (one S3 GET body, one SFTP handle) is read in order: a second batch of the same file must
    # not overtake the first; other files are not held up by it
    fetch = Fetches(hold=True)
    ra = running(fetch, workers=8, batch=2)
    a, b = Lane("a"), Lane("b")
    await queued(ra, a, [1, 2])
    await queued(ra, a, range(3, 8))
    await queued(ra, b, [1, 2])
    assert fetch.batches == [2, 2]  # one batch each (a's first; b's), though a has more queued
    assert ra.statistics().queued > 0
    fetch.release.set()  # their bytes are in hand: a's queued jobs go on, in batches
    await trio.testing.wait_all_tasks_blocked()
    calls = [i for key, i in fetch.calls if key == "a"]
    assert calls == list(range(1, 8))  # in order, each chunk once


async def test_jobs_queued_behind_a_busy_lane_join_into_one_batch(running):
    fetch = Fetches(hold=True)
    ra = running(fetch)
    lane = Lane("a")
    await queued(ra, lane, [1, 2])
    for i in range(3, 9):
        await queued(ra, lane, [i])
    fetch.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.batches == [2, 6]

async def test_a_batch_ending_after_its_bytes_came_does_not_free_the_next_batchs_stream(running):
    # batch 1's bytes came (fetched()), it is being stored while batch 2 is at the origin; when batch 1 ends,
    # batch 3 of the same file must still wait for batch 2
    calls: list[list[int]] = []
    at_origin = most = 0
    gate, stored = trio.Event(), trio.Event()

    async def fetch(key, indexes, fetched):
        nonlocal at_origin, most
        first = not calls
        calls.append(indexes)
        at_origin += 1
        most = max(most, at_origin)
        if not first:
            await gate.wait()  # later batches stay at the origin
        at_origin -= 1
        fetched()
        if first:
            await stored.wait()  # the first is still being stored

    ra = running(fetch, batch=2)
    lane = Lane("a")
    await queued(ra, lane, [1, 2])
    await queued(ra, lane, [3, 4])
    await queued(ra, lane, [5, 6])  # more jobs queue behind batch 2
    assert len(calls) == 2 and ra.statistics().queued > 0
    stored.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(calls) == 2 and most == 1, "a batch went to the origin beside another of the same file"
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(calls) == 3 and most == 1


async def test_fifty_streams_stay_within_the_global_budget(running):
    fetch = Fetches(hold=True)
    ra = running(fetch, budget=4 * CHUNK, workers=16)
    for i in range(50):
        await queued(ra, Lane(f"f{i}"), [1, 2])
    assert 2 <= fetch.running == fetch.most <= 4  # never more than the budget in flight
    assert ra.statistics().inflight_bytes == fetch.running * CHUNK
    fetch.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.most <= 4 and ra.statistics().queued == 0


async def test_next_track_heads_wait_for_every_window_job(running):
    fetch = Fetches(hold=True)
    ra = running(fetch, budget=2 * CHUNK, batch=1, workers=1)
    await queued(ra, Lane("a"), [1])  # the one worker busy: what comes next waits in the queues
    await queued(ra, Lane("b"), [1])
    await queued(ra, Lane("next"), [0, 1], low=True)
    await queued(ra, Lane("c"), [1])
    fetch.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert [k for k, _ in fetch.calls] == ["a", "b", "c", "next", "next"]
    assert ra.statistics().next_track == 2


async def test_a_failing_fetch_is_counted_and_forgotten(running):
    async def broken(key, indexes):
        raise OSError("origin down")

    ra = running(broken)
    await queued(ra, Lane("f"), [1, 2])
    stats = ra.statistics()
    assert stats.failed == stats.started == 2


async def test_the_budget_is_counted_in_chunks_so_a_small_batch_goes_beside_a_big_one(running):
    # a file's last few chunks need not wait for the whole batch before them to be stored
    fetch = Fetches(hold=True)
    ra = running(fetch, budget=20 * CHUNK, batch=16)
    a, b = Lane("a"), Lane("b")
    await queued(ra, a, range(1, 17))
    await queued(ra, b, range(1, 4))
    assert fetch.batches == [16, 3] and fetch.running == 19
    await queued(ra, Lane("c"), range(1, 3))  # two more would pass the budget: it waits
    assert fetch.batches == [16, 3] and ra.statistics().queued == 2
    fetch.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.batches == [16, 3, 2] and fetch.most == 19


async def test_a_big_batch_waiting_for_room_is_not_overtaken_by_small_ones():
    room = Room(4)
    order = []

    async def take(name, n, hold):
        await room.acquire(n)
        order.append(name)
        await hold.wait()
        room.release(n)

    holds = {name: trio.Event() for name in "abcd"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "a", 3, holds["a"])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "b", 4, holds["b"])  # waits for a
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "c", 1, holds["c"])  # would fit now, but b asked first
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a"] and room.used == 3
        holds["a"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b"] and room.used == 4
        holds["b"].set()
        holds["c"].set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b", "c"]
    assert room.used == 0


async def test_a_batch_cancelled_while_waiting_for_room_lets_the_one_behind_it_in():
    room = Room(4)
    await room.acquire(3)
    got = []
    first = trio.CancelScope()

    async def take(n, scope=None):
        with scope or trio.CancelScope():
            await room.acquire(n)
            got.append(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, 4, first)  # waits for the 3 taken
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, 1)  # fits, but waits behind the first
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        first.cancel()  # a seek: the first gives up its turn
        await trio.testing.wait_all_tasks_blocked()
        assert got == [1] and room.used == 4
