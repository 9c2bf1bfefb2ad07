"""Read-ahead: per open file, sequential reading is detected and a bounded window of chunks is fetched ahead.

* A `Stream` follows one open file. A read that starts where the previous ones ended (within a tolerance,
  as the kernel sends several reads at once) extends the current run; any other read is a seek: the run
  starts again, the window closes and the chunks still in flight for it are cancelled.
* Once a run covers `min_run` bytes (a chunk by default: a tag reader's head read never gets there, and
  its seek to the tail starts a new run), the stream keeps `window` chunks ahead of the reader, starting
  at 2 and doubling each time the reader enters a new chunk, up to `max_window`.
* Every chunk ahead is a `Job` in a queue served by `workers` tasks; a worker takes up to `batch` queued jobs
  of one stream with consecutive chunks and the reader fetches the uncached ones in one origin request
  (fewer round trips, fewer S3 requests). A stream has one batch at the origin at a time, so its origin
  stream (one S3 GET body, one SFTP handle) is read in order, never re-opened for a batch that overtook
  another; the stream is free again as soon as the batch's bytes are in hand (`fetched()`; at once, when the
  file's origin reads a stream in any order: SFTP's batches run on several connections), so the next
  batch reads on while the previous one is hashed and stored, and meanwhile the jobs queued behind it
  join into a bigger batch. The bytes in flight are bounded for the whole daemon by `budget` (config
  `readahead`): a batch waits for room, and jobs of a stream that seeked or closed since they were queued
  are dropped unrun.
* Next track: when a stream reads into the last chunk of its file, the first chunks of the next track of
  the same album folder are queued at low priority (taken only when no window job waits), once per stream.

The fetch itself is the reader's (`fetch(key, indexes, fetched)`: load the chunks into the cache, verified,
calling `fetched()` once their bytes came from the origin or the disk); read-ahead
is best effort, so a failed or timed-out job is counted and forgotten: the reader's own read of that chunk
later fetches it again, within its read_timeout.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Hashable

import trio

from ..shared import run_all

log = logging.getLogger(__name__)

# (key, consecutive chunk indexes of one file, fetched: call once their bytes are in hand)
Fetch = Callable[[Hashable, list[int], Callable[[], None]], Awaitable[object]]


@dataclass(frozen=True)
class ReadAheadStatistics:
    budget_bytes: int  # bytes of chunks that may be in flight ahead of readers, for the whole daemon
    inflight_bytes: int  # bytes of chunks being fetched ahead right now
    queued: int  # jobs waiting for a worker
    streams: int  # open files being read ahead (window open)
    started: int  # chunks fetched ahead (jobs run)
    dropped: int  # jobs dropped unrun: their stream seeked or closed first
    failed: int  # jobs whose fetch failed or timed out (the reader fetches those chunks itself)
    next_track: int  # chunks of next tracks queued


@dataclass
class Stream:
    """Where one open file is read, and what has been queued ahead of it."""

    key: Hashable  # what fetch() is given to find the open file
    chunks: int  # the file's number of chunks
    next_offset: int = -1  # where the current run would continue
    run: int = 0  # bytes read in the current sequential run
    window: int = 0  # chunks kept ahead; 0: not streaming
    ahead: int = 0  # chunk index up to which jobs were queued (exclusive)
    last_chunk: int = -1  # the chunk the reader was last in
    generation: int = 0  # moves on at each seek and at close: queued jobs of older generations are dropped
    next_queued: bool = False
    busy: bool = False  # a batch of this stream is at the origin: the next one waits (its origin stream is serial)
    scopes: set = field(default_factory=set)  # cancel scopes of this stream's jobs in flight


@dataclass(frozen=True)
class Job:
    stream: Stream
    key: Hashable
    index: int
    generation: int


class ReadAhead:
    def __init__(self, fetch: Fetch, *, chunk_size: int, budget: int, max_window_bytes: int = 32 << 20,
                 min_run: int | None = None, workers: int = 8, job_timeout: float = 30.0,
                 next_track_chunks: int = 2, batch: int = 16):
        self._fetch = fetch
        self.chunk_size = chunk_size
        self.budget = budget
        self.max_window = max(2, max_window_bytes // chunk_size)
        self.min_run = chunk_size if min_run is None else min_run
        self.tolerance = max(chunk_size, 256 << 10)  # reads the kernel sends at once arrive a little out of order
        self.workers = workers
        self.job_timeout = job_timeout
        self.next_track_chunks = next_track_chunks
        # Up to `batch` consecutive chunks of one stream go to the origin as one request (fewer round trips);
        # the budget is counted in batches: `budget // (batch * chunk)` of them in flight, at least one.
        self.batch = max(1, min(batch, budget // chunk_size))
        self._room = trio.CapacityLimiter(max(1, budget // (self.batch * chunk_size)))
        self._high: collections.deque[Job] = collections.deque()
        self._low: collections.deque[Job] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._streams: set[int] = set()  # ids of streams with an open window
        self._started = self._dropped = self._failed = self._next = 0
        self._inflight_chunks = 0
        self._waiting = 0  # chunks taken by a worker that waits for room

    # -- what the reader tells -------------------------------------------------------------------
    def open(self, key: Hashable, size: int) -> Stream:
        return Stream(key, chunks=max(1, math.ceil(size / self.chunk_size)) if size else 0)

    def observe(self, stream: Stream, offset: int, size: int, next_track: tuple[Hashable, int] | None = None) -> None:
        """A read of [offset, offset+size) was served: extend or restart the run, queue chunks ahead.

        `next_track`: (key, chunks) of the track that follows in its album folder, for the last chunk.
        """
        if size <= 0 or stream.chunks == 0:
            return
        end = offset + size
        if stream.next_offset >= 0 and abs(offset - stream.next_offset) <= self.tolerance:
            stream.run += max(0, end - max(offset, stream.next_offset))
            stream.next_offset = max(stream.next_offset, end)
        else:
            if stream.window:
                self._cancel(stream)
            stream.run, stream.next_offset = size, end
        if stream.run < self.min_run:
            return
        current = min((end - 1) // self.chunk_size, stream.chunks - 1)
        if not stream.window:
            stream.window = 2
            stream.ahead = current + 1
            self._streams.add(id(stream))
        elif current > stream.last_chunk:
            stream.window = min(self.max_window, stream.window * 2)  # the reader keeps up: look further
        stream.last_chunk = current
        last = min(current + stream.window, stream.chunks - 1)
        for index in range(max(stream.ahead, current + 1), last + 1):
            self._high.append(Job(stream, stream.key, index, stream.generation))
        stream.ahead = max(stream.ahead, last + 1)
        if current == stream.chunks - 1 and next_track is not None and not stream.next_queued:
            stream.next_queued = True
            key, chunks = next_track
            ahead = Stream(key, chunks)  # its own: closing this file (the player moves on) must not cancel it
            for index in range(min(self.next_track_chunks, chunks)):
                self._low.append(Job(ahead, key, index, ahead.generation))
                self._next += 1
        self._lot.unpark_all()

    def close(self, stream: Stream) -> None:
        """The file is closed: nothing more is fetched for it; what is in flight is cancelled."""
        self._cancel(stream)

    def _cancel(self, stream: Stream) -> None:
        stream.generation += 1
        stream.window = stream.ahead = 0
        stream.last_chunk = -1
        self._streams.discard(id(stream))
        for scope in list(stream.scopes):
            scope.cancel()

    # -- the workers -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """The workers; a supervisor task runs this for the daemon's life."""
        await run_all([(f"readahead-{i}", self._worker) for i in range(self.workers)])

    def _first_ready(self, queue: collections.deque[Job]) -> int | None:
        """Index in `queue` of the first job whose stream has no batch at the origin (stale jobs count: dropped)."""
        for i, job in enumerate(queue):
            if not job.stream.busy or job.generation != job.stream.generation:
                return i
        return None

    async def _take(self) -> list[Job]:
        """The next job whose stream is free, with the queued jobs that continue it (same stream and generation,
        next indexes)."""
        while True:
            for queue in (self._high, self._low):
                i = self._first_ready(queue)
                if i is not None:
                    break
            else:
                await self._lot.park()
                continue
            job = queue[i]
            del queue[i]
            jobs = [job]
            while len(jobs) < self.batch and i < len(queue):
                nxt, last = queue[i], jobs[-1]
                if nxt.stream is not last.stream or nxt.generation != last.generation or nxt.index != last.index + 1:
                    break
                jobs.append(nxt)
                del queue[i]
            if job.generation == job.stream.generation:
                job.stream.busy = True  # until its bytes are in hand (or it is dropped): see _run's fetched()
            return jobs

    def _free(self, stream: Stream) -> None:
        """The stream's batch left the origin (fetched, failed or dropped): its next batch may go."""
        if stream.busy:
            stream.busy = False
            self._lot.unpark_all()

    async def _worker(self) -> None:
        while True:
            jobs = await self._take()
            job = jobs[0]
            if job.generation != job.stream.generation:  # stale when taken: it never made its stream busy
                self._dropped += len(jobs)
                continue
            self._waiting += len(jobs)
            try:
                await self._room.acquire()
            finally:
                self._waiting -= len(jobs)
            try:
                if job.generation != job.stream.generation:  # closed or seeked while waiting for room
                    self._dropped += len(jobs)
                    self._free(job.stream)
                    continue
                await self._run(jobs)
            finally:
                self._room.release()

    async def _run(self, jobs: list[Job]) -> None:
        job = jobs[0]
        stream = job.stream
        self._started += len(jobs)
        self._inflight_chunks += len(jobs)

        freed = False

        def fetched() -> None:  # the batch's bytes are in hand: the stream's next batch may go to the origin
            nonlocal freed
            if not freed:  # once: a second call must not free the stream from under its next batch
                freed = True
                self._free(stream)

        with trio.CancelScope() as scope:
            stream.scopes.add(scope)
            try:
                with trio.fail_after(self.job_timeout):
                    await self._fetch(job.key, [j.index for j in jobs], fetched)
            except Exception as exc:  # best effort: the reader's own read fetches the chunks again
                self._failed += len(jobs)
                log.debug("read-ahead of chunks %d..%d failed: %s", job.index, jobs[-1].index, exc)
            finally:
                fetched()
                stream.scopes.discard(scope)
                self._inflight_chunks -= len(jobs)

    def statistics(self) -> ReadAheadStatistics:
        return ReadAheadStatistics(budget_bytes=self.budget, inflight_bytes=self._inflight_chunks * self.chunk_size,
                                   queued=len(self._high) + len(self._low) + self._waiting,
                                   streams=len(self._streams),
                                   started=self._started, dropped=self._dropped, failed=self._failed,
                                   next_track=self._next)
