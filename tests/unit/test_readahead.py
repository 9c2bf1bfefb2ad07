"""ReadAhead on its own: sequential detection, the window, seeks and closes, the global budget, next track."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from musicfs.read.readahead import ReadAhead

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


async def sequential(ra: ReadAhead, stream, start: int, end: int, **kw) -> None:
    for offset in range(start, end, READ):
        ra.observe(stream, offset, READ, **kw)
        await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
async def running(nursery):
    made = []

    def make(fetch, **kw):
        ra = ReadAhead(fetch, chunk_size=CHUNK, **{"budget": 32 * CHUNK, "max_window_bytes": 8 * CHUNK, **kw})
        nursery.start_soon(ra.run)
        made.append(ra)
        return ra

    return make


async def test_sequential_reads_start_a_window_that_grows_to_its_bound(running):
    fetch = Fetches()
    ra = running(fetch)
    stream = ra.open("f", 40 * CHUNK)
    await sequential(ra, stream, 0, CHUNK - READ)
    assert fetch.calls == []  # less than a chunk read: nothing ahead yet
    await sequential(ra, stream, CHUNK - READ, CHUNK)
    assert sorted(i for _, i in fetch.calls) == [1, 2]  # the window opens at 2 chunks
    await sequential(ra, stream, CHUNK, 6 * CHUNK)
    indexes = [i for _, i in fetch.calls]
    assert len(indexes) == len(set(indexes)), "a chunk was queued twice"
    assert max(indexes) == 5 + 8  # 8 chunks (max_window_bytes) ahead of chunk 5
    assert ra.statistics().streams == 1


async def test_a_tag_reader_pattern_never_starts_read_ahead(running):
    fetch = Fetches()
    ra = running(fetch)
    for _ in range(3):  # open, read the head, seek to the tail, close; again and again
        stream = ra.open("f", 40 * CHUNK)
        await sequential(ra, stream, 0, 4 * READ)  # mutagen reads a few blocks of the head
        ra.observe(stream, 40 * CHUNK - READ, READ)
        ra.observe(stream, 20 * CHUNK, READ)  # and an Ogg's last page, an MP4 moov
        ra.close(stream)
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.calls == []


async def test_a_seek_cancels_what_is_in_flight_and_drops_what_is_queued(running):
    fetch = Fetches(hold=True)
    ra = running(fetch, budget=2 * CHUNK)
    stream = ra.open("f", 40 * CHUNK)
    await sequential(ra, stream, 0, 3 * CHUNK)
    assert fetch.running == 2 and ra.statistics().queued > 0  # two in flight (the budget), more queued
    ra.observe(stream, 30 * CHUNK, READ)  # a seek
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.cancelled == 2 and fetch.running == 0
    stats = ra.statistics()
    assert stats.queued == 0 and stats.dropped > 0 and stats.streams == 0 and stats.inflight_bytes == 0


async def test_close_cancels_the_stream(running):
    fetch = Fetches(hold=True)
    ra = running(fetch)
    stream = ra.open("f", 40 * CHUNK)
    await sequential(ra, stream, 0, 2 * CHUNK)
    assert fetch.running > 0
    ra.close(stream)
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.running == 0 and ra.statistics().streams == 0


async def test_a_stream_has_one_batch_at_the_origin_and_the_jobs_behind_it_join_into_the_next(running):
    # its origin stream (one S3 GET body, one SFTP handle) is read in order: a second batch of the same file must
    # not overtake the first; other files are not held up by it
    fetch = Fetches(hold=True)
    ra = running(fetch, workers=8)
    a, b = ra.open("a", 40 * CHUNK), ra.open("b", 40 * CHUNK)
    await sequential(ra, a, 0, 5 * CHUNK)
    await sequential(ra, b, 0, 2 * CHUNK)
    assert fetch.batches == [2, 2]  # one batch each (a's first window; b's), though a has more queued
    assert ra.statistics().queued > 0
    fetch.release.set()  # their bytes are in hand: a's queued jobs go as one batch
    await trio.testing.wait_all_tasks_blocked()
    assert len(fetch.batches) == 4 and max(fetch.batches[2:]) > 2
    calls = [i for key, i in fetch.calls if key == "a"]
    assert calls == sorted(calls) and len(calls) == len(set(calls))  # in order, each chunk once


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

    ra = running(fetch)
    stream = ra.open("a", 40 * CHUNK)
    await sequential(ra, stream, 0, 2 * CHUNK)
    await sequential(ra, stream, 2 * CHUNK, 4 * CHUNK)  # more jobs queue behind batch 2
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
    streams = [ra.open(f"f{i}", 20 * CHUNK) for i in range(50)]
    for stream in streams:
        await sequential(ra, stream, 0, 2 * CHUNK)
    assert 2 <= fetch.running == fetch.most <= 4  # never more than the budget in flight
    assert ra.statistics().inflight_bytes == fetch.running * CHUNK
    fetch.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert fetch.most <= 4 and ra.statistics().queued == 0


async def test_the_next_track_is_queued_once_at_low_priority_from_the_last_chunk(running):
    fetch = Fetches()
    ra = running(fetch)
    stream = ra.open("a", 3 * CHUNK)
    nxt = ("b", 10)
    await sequential(ra, stream, 0, 2 * CHUNK, next_track=nxt)
    assert ("b", 0) not in fetch.calls
    await sequential(ra, stream, 2 * CHUNK, 3 * CHUNK, next_track=nxt)
    await sequential(ra, stream, 2 * CHUNK + READ, 3 * CHUNK, next_track=nxt)  # reread of the end: not twice
    assert sorted(c for c in fetch.calls if c[0] == "b") == [("b", 0), ("b", 1)]
    assert ra.statistics().next_track == 2


async def test_a_failing_fetch_is_counted_and_forgotten(running):
    async def broken(key, indexes):
        raise OSError("origin down")

    ra = running(broken)
    stream = ra.open("f", 10 * CHUNK)
    await sequential(ra, stream, 0, CHUNK)
    stats = ra.statistics()
    assert stats.failed == stats.started == 2
