"""Read-ahead's executor: loads of chunks ahead of readers, queued by the reader as its plans say (plan.py).

* Each handle (and each next track's head) has a `Lane`. The reader queues chunk indexes on it; a seek or a
  close `cancel`s it: the lane's generation moves on, its loads in flight are cancelled and its queued ones
  are dropped unrun.
* Every chunk ahead is a `Job` in a queue served by `workers` tasks; a worker takes up to `batch` queued jobs
  of one lane with consecutive chunks and the loader fetches the uncached ones in one origin request (fewer
  round trips, fewer S3 requests). A lane has one batch at the origin at a time, so its origin stream (one S3
  GET body, one SFTP handle) is read in order, never re-opened for a batch that overtook another; the lane is
  free again as soon as the batch's bytes are in hand (`fetched()`; at once, when the file's origin reads a
  stream in any order: SFTP's batches run on several connections), so the next batch reads on while the
  previous one is hashed and stored, and meanwhile the jobs queued behind it join into a bigger batch. The
  bytes in flight are bounded for the whole daemon by `budget` (config `readahead`), counted in chunks: a batch
  waits (in turn, first come first served) until its chunks fit, so the small batch at a file's end goes beside
  a big one rather than after it.
* Next tracks' heads are queued at low priority: taken only when no window job waits.

The load itself is the loader's (`fetch(key, indexes, fetched)`: the chunks into the caches, verified, calling
`fetched()` once their bytes came from the origin or the disk). Read-ahead is best effort: a failed or timed-out
job is counted and forgotten; the reader's own read of that chunk later fetches it again, within its deadline.
"""

from __future__ import annotations

import collections
import logging
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
    dropped: int  # jobs dropped unrun: their handle seeked or closed first
    failed: int  # jobs whose fetch failed or timed out (the reader fetches those chunks itself)
    next_track: int  # chunks of next tracks queued


class Room:
    """Chunks that may be in flight, taken by batches of any size in the order they asked (a big batch is not
    overtaken for ever by small ones); a batch takes at most the whole room."""

    def __init__(self, chunks: int):
        self.total = chunks
        self.used = 0
        self._waiters: collections.deque[tuple[int, trio.Event]] = collections.deque()

    async def acquire(self, n: int) -> None:
        n = min(n, self.total)
        if not self._waiters and self.used + n <= self.total:
            self.used += n
            return
        waiter = (n, trio.Event())
        self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        except BaseException:
            if waiter[1].is_set():  # granted as it was cancelled: give it back
                self.release(n)
            else:
                self._waiters.remove(waiter)
                self._grant()  # the one behind it may fit now
            raise

    def release(self, n: int) -> None:
        self.used -= min(n, self.total)
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            n, event = self._waiters.popleft()
            self.used += n
            event.set()


@dataclass(eq=False)
class Lane:
    """The loads ahead of one handle (or of one next track's head)."""

    key: Hashable  # what fetch() is given to find the open file
    generation: int = 0  # moves on at each cancel: queued jobs of older generations are dropped
    busy: bool = False  # a batch of this lane is at the origin: the next one waits (its origin stream is serial)
    scopes: set = field(default_factory=set)  # cancel scopes of this lane's jobs in flight


@dataclass(frozen=True)
class Job:
    lane: Lane
    index: int
    generation: int


class ReadAhead:
    def __init__(self, fetch: Fetch, *, chunk_size: int, budget: int, workers: int = 8, job_timeout: float = 30.0,
                 batch: int = 16):
        self._fetch = fetch
        self.chunk_size = chunk_size
        self.budget = budget
        self.workers = workers
        self.job_timeout = job_timeout
        # Up to `batch` consecutive chunks of one lane go to the origin as one request (fewer round trips);
        # the budget is counted in chunks (at least one batch of them).
        self.batch = max(1, min(batch, budget // chunk_size))
        self._room = Room(max(self.batch, budget // chunk_size))
        self._high: collections.deque[Job] = collections.deque()
        self._low: collections.deque[Job] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._streams: set[int] = set()  # ids of lanes with window loads queued since their last cancel
        self._started = self._dropped = self._failed = self._next = 0
        self._inflight_chunks = 0
        self._waiting = 0  # chunks taken by a worker that waits for room

    # -- what the reader tells -------------------------------------------------------------------
    def queue(self, lane: Lane, indexes, *, low: bool = False) -> None:
        """Load these chunks of the lane's file ahead; `low`: a next track's head (after every window job)."""
        queue = self._low if low else self._high
        for index in indexes:
            queue.append(Job(lane, index, lane.generation))
            if low:
                self._next += 1
        if not low:
            self._streams.add(id(lane))
        self._lot.unpark_all()

    def cancel(self, lane: Lane) -> None:
        """A seek or a close: nothing queued for the lane is loaded; what is in flight is cancelled."""
        lane.generation += 1
        self._streams.discard(id(lane))
        for scope in list(lane.scopes):
            scope.cancel()

    # -- the workers -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """The workers; a supervisor task runs this for the daemon's life."""
        await run_all([(f"readahead-{i}", self._worker) for i in range(self.workers)])

    def _first_ready(self, queue: collections.deque[Job]) -> int | None:
        """Index in `queue` of the first job whose lane has no batch at the origin (stale jobs count: dropped)."""
        for i, job in enumerate(queue):
            if not job.lane.busy or job.generation != job.lane.generation:
                return i
        return None

    async def _take(self) -> list[Job]:
        """The next job whose lane is free, with the queued jobs that continue it (same lane and generation,
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
                if nxt.lane is not last.lane or nxt.generation != last.generation or nxt.index != last.index + 1:
                    break
                jobs.append(nxt)
                del queue[i]
            if job.generation == job.lane.generation:
                job.lane.busy = True  # until its bytes are in hand (or it is dropped): see _run's fetched()
            return jobs

    def _free(self, lane: Lane) -> None:
        """The lane's batch left the origin (fetched, failed or dropped): its next batch may go."""
        if lane.busy:
            lane.busy = False
            self._lot.unpark_all()

    async def _worker(self) -> None:
        while True:
            jobs = await self._take()
            job = jobs[0]
            if job.generation != job.lane.generation:  # stale when taken: it never made its lane busy
                self._dropped += len(jobs)
                continue
            self._waiting += len(jobs)
            try:
                await self._room.acquire(len(jobs))
            finally:
                self._waiting -= len(jobs)
            try:
                if job.generation != job.lane.generation:  # closed or seeked while waiting for room
                    self._dropped += len(jobs)
                    self._free(job.lane)
                    continue
                await self._run(jobs)
            finally:
                self._room.release(len(jobs))

    async def _run(self, jobs: list[Job]) -> None:
        job = jobs[0]
        lane = job.lane
        self._started += len(jobs)
        self._inflight_chunks += len(jobs)

        freed = False

        def fetched() -> None:  # the batch's bytes are in hand: the lane's next batch may go to the origin
            nonlocal freed
            if not freed:  # once: a second call must not free the lane from under its next batch
                freed = True
                self._free(lane)

        with trio.CancelScope() as scope:
            lane.scopes.add(scope)
            try:
                with trio.fail_after(self.job_timeout):
                    await self._fetch(lane.key, [j.index for j in jobs], fetched)
            except Exception as exc:  # best effort: the reader's own read fetches the chunks again
                self._failed += len(jobs)
                log.debug("read-ahead of chunks %d..%d failed: %s", job.index, jobs[-1].index, exc)
            finally:
                fetched()
                lane.scopes.discard(scope)
                self._inflight_chunks -= len(jobs)

    def statistics(self) -> ReadAheadStatistics:
        return ReadAheadStatistics(budget_bytes=self.budget, inflight_bytes=self._inflight_chunks * self.chunk_size,
                                   queued=len(self._high) + len(self._low) + self._waiting,
                                   streams=len(self._streams),
                                   started=self._started, dropped=self._dropped, failed=self._failed,
                                   next_track=self._next)
