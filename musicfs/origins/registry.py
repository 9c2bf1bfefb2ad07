"""OriginRegistry: the library's replicas in priority order, with retry, health states and failover.

Policy (rows 4.1, 4.2.3, 4.3 of the resilience catalogue):

* Retry: a transient error (reset, 5xx, throttling, short read) is retried on the same origin with
  exponential backoff and jitter, at most `retries` times and never past the caller's deadline.
  Not found, permission, fatal and "file changed" errors are never retried. A timeout is retried by
  `call` (scans) but not by `read`: a read that already waited out a timeout moves on to the next
  replica instead of spending its remaining budget on the same dead one.
* Health: every origin is `unknown`, `healthy` or `unhealthy`. The HealthMonitor (health.py) probes
  them; a read that gives up on an origin for a health reason (transient or fatal, not "no such file")
  marks it unhealthy too and wakes the monitor.
* Failover: reads try origins in preference order: healthy/unknown origins by priority, then those
  that recovered less than `grace` seconds ago (CernVM-FS style: once failed over, stay on the
  replica until the primary has been healthy for a while). While a monitor watches, unhealthy
  origins are not tried at all.
* Replicas: the catalog holds the identities (size, mtime, ETag) of the origin whose scan last
  committed: `identity_origin`. Reads from it pass that identity (OriginFileChanged: the file changed
  since the scan). Another replica has identities of its own: its copy must have the catalog's size
  and is read against its own stat (checked before and after the read). Heterogeneous replicas are
  therefore only checked by size: they must hold the same bytes. Only the scanner moves
  `identity_origin` (`adopt_identities`), when a scan of another origin commits; until then, and
  while such a scan runs (None: no origin's identities are sure), reads check every origin as a replica.
  Failing over never changes it: `first_healthy` is a pure query.
* Offline: while monitored and every origin is unhealthy, reads fail at once with OriginOffline
  (EIO): no thread, no timeout. The monitor's next good probe ends it.
* Stuck calls (row 4.7, stuck.py): a call past its read's deadline costs only itself.

The registry itself is blocking, like the origins: `read`, `call` and `first_healthy` run in worker
threads; `fetch_ranges` is the async entry used by the reader.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from typing import Callable, Sequence

from ..shared import (
    LocalExhaustion,
    OriginError,
    OriginFileChanged,
    OriginOffline,
    OriginTimeout,
    OriginTransient,
    ShortRead,
    points,
)
from .base import FileStat, Identity, Origin, OriginStream, exhaustion, settled
from .health_records import (
    HEALTHY,
    UNHEALTHY,
    OriginHealth,
    OriginStatistics,
    _counts_against_health,
    result_of,
)
from .stuck import STUCK_LIMIT, CallTracker

log = logging.getLogger(__name__)



def probe(origin: Origin) -> None:
    """One health probe (the failpoint lets tests make it hang)."""
    points.hit(points.HEALTH_CHECK_HANG, OriginTimeout)
    origin.probe()


class OriginRegistry:
    """Reads go to the preferred origin that answers; see the module docstring for the policy."""

    #: This machine's wall clock, as racy versions are judged by it (`settled`): when a fetch starts.
    wall_clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, origins: list[Origin], retries: int = 2, backoff: float = 0.05, seed: int | None = None,
                 sleep: Callable[[float], None] = time.sleep, *, max_backoff: float = 2.0, grace: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, fetch_threads: int = 8):
        if not origins:
            raise ValueError("at least one origin is needed")
        self.origins, self.fetch_threads, self.grace = origins, fetch_threads, grace
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff  # each read's retry schedule
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the health records
        self.health = [OriginHealth(o.name) for o in origins]
        #: True while a HealthMonitor watches: only then do unhealthy origins get skipped (and offline exist).
        self.monitored = False
        self._listeners: list[Callable[[Origin, str], None]] = []
        self._fetch_limiter = None  # a trio.CapacityLimiter, made on first use inside trio: reads in progress
        self._thread_limiter = None  # ... and the threads they run in, stuck ones included (STUCK_LIMIT each)
        self._calls = CallTracker(clock)  # calls in progress, and those stuck past their deadline
        #: The origin whose identities (size, mtime, etag) the catalog holds: the one whose scan last
        #: committed, the primary until one did; None while no origin's are sure (a scan of another
        #: origin is re-keying the catalog). Other replicas have identities of their own.
        self.identity_origin: Origin | None = origins[0]

    @property
    def primary(self) -> Origin:
        return self.origins[0]

    def origin_named(self, name: str) -> Origin | None:
        return next((o for o in self.origins if o.name == name), None)

    def adopt_identities(self, origin: Origin | None) -> None:
        """The catalog now holds `origin`'s identities (None: no one origin's). Only the scanner calls it."""
        if origin is not None:
            self._index(origin)  # must be one of ours
        if origin is not self.identity_origin:
            log.info("catalog identities are now those of %s", origin.name if origin else "no single origin")
        self.identity_origin = origin

    def settled(self, identity: Identity, seen: float, started: float) -> bool:
        """Whether bytes of the catalog's version `identity` (first recorded at `seen`) fetched by a read that
        started at `started` may be cached (origins/base.py: settled), by the rules of the origin whose
        identities the catalog holds; while no one origin's are sure, nothing is."""
        origin = self.identity_origin
        return origin is not None and settled(origin, identity, seen, started)

    # -- health states ------------------------------------------------------------------------
    def _index(self, origin: Origin) -> int:
        for i, o in enumerate(self.origins):
            if o is origin:
                return i
        raise ValueError(f"{origin.name} is not in this registry")

    def health_of(self, origin: Origin) -> OriginHealth:
        return self.health[self._index(origin)]

    def add_listener(self, fn: Callable[[Origin, str], None]) -> Callable[[], None]:
        """fn(origin, source) after an origin is marked unhealthy; source is "read" or "probe".

        Called from whichever thread noticed; returns a function that removes the listener.
        """
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _all_down(self) -> bool:
        return all(h.state == UNHEALTHY for h in self.health)

    @property
    def offline(self) -> bool:
        """Every origin is down (and a monitor is there to notice when one comes back)."""
        return self.monitored and self._all_down()

    def record_ok(self, origin: Origin, *, probe: bool = False) -> None:
        h = self.health_of(origin)
        now = time.time()
        if h.state == HEALTHY and not probe:
            h.last_ok = now  # the common case of a read: no lock, no log
            return
        if self._calls.stuck(origin) >= STUCK_LIMIT:  # a probe may pass while reads hang (a stuck file, a half-dead share)
            return
        with self._lock:
            was_down = self._all_down()
            before = h.state
            h.state, h.failures, h.last_ok = HEALTHY, 0, now
            if probe:
                h.last_check = now
            if before == UNHEALTHY:
                h.recovered_at = self._clock()
        if before == UNHEALTHY:
            extra = f"; preferred again after {self.grace:g}s of health" if self.grace and len(self.origins) > 1 else ""
            log.info("origin %s is healthy again%s", origin.name, extra)
            if was_down and self.monitored:
                log.info("back online: origin %s answers", origin.name)

    def record_failure(self, origin: Origin, exc: BaseException, *, probe: bool = False) -> None:
        """Mark `origin` unhealthy for `exc`; this process running out of descriptors or memory (LocalExhaustion,
        or an error caused by EMFILE and the like) is not the origin's failure: logged, and nothing changes."""
        if isinstance(exc, LocalExhaustion) or exhaustion(exc) is not None:
            log.warning("origin %s: %s; its health is unchanged", origin.name,
                        exc if isinstance(exc, LocalExhaustion) else f"out of resources here ({exhaustion(exc)})")
            return
        h = self.health_of(origin)
        message = str(exc) if isinstance(exc, OriginError) else f"{type(exc).__name__}: {exc}"
        with self._lock:
            was_down = self._all_down()
            before = h.state
            h.state, h.last_error, h.recovered_at = UNHEALTHY, message, None
            h.failures += 1
            if probe:
                h.last_check = time.time()
            now_down = self._all_down()
        if before != UNHEALTHY:
            # Only a monitored registry acts on health (skips the origin): unmonitored, it is a note.
            log.log(logging.WARNING if self.monitored else logging.INFO, "origin %s is unhealthy: %s",
                    origin.name, message)
            if now_down and not was_down and self.monitored:
                log.warning("every origin is down: offline, serving cached files only")
        for fn in list(self._listeners):
            fn(origin, "probe" if probe else "read")

    def order(self) -> list[Origin]:
        """Origins in the order a read tries them (see the module docstring)."""
        now = self._clock()
        stable, settling, down = [], [], []
        with self._lock:
            for origin, h in zip(self.origins, self.health):
                if h.state == UNHEALTHY:
                    down.append(origin)
                elif h.recovered_at is not None and now - h.recovered_at < self.grace:
                    settling.append(origin)
                else:
                    stable.append(origin)
        if self.monitored:
            return stable + settling
        return stable + settling + down  # nobody would notice a recovery: keep trying

    @property
    def active(self) -> Origin | None:
        """The origin reads go to first right now (None when offline)."""
        order = self.order()
        return order[0] if order else None

    def statistics(self) -> tuple[OriginStatistics, ...]:
        active = self.active
        sessions = [o.sessions() for o in self.origins]  # (each origin's own lock, not under the registry's)
        with self._lock:
            return tuple(OriginStatistics(
                name=h.name, state=h.state, active=o is active, last_error=h.last_error, last_ok=h.last_ok,
                last_check=h.last_check, failures=h.failures, requests=sum(h.results.values()),
                results=dict(h.results), bytes_fetched=h.bytes_fetched, retries=h.retries, failovers=h.failovers,
                stuck=self._calls.stuck(o), sessions=kept)
                for o, h, kept in zip(self.origins, self.health, sessions))

    def counted(self, origin: Origin, data):
        """`data` (bytes, or a list of them) that a caller read from `origin` itself (a scan's tag reads): counted
        in the origin's statistics like the registry's own reads; returned as it is."""
        self._count(origin, None, len(data) if isinstance(data, bytes) else sum(len(part) for part in data))
        return data

    def _count(self, origin: Origin, exc: BaseException | None, nbytes: int = 0) -> None:
        h = self.health_of(origin)
        with self._lock:
            h.results[result_of(exc)] += 1
            h.bytes_fetched += nbytes

    # -- retry ----------------------------------------------------------------------------------
    def note_stuck(self) -> None:
        """After a read gave up at its deadline: calls still running past theirs are stuck. Each is counted
        once against its origin, which is marked unhealthy with the reason (the monitor's probes bring it back
        unless STUCK_LIMIT of its calls are stuck)."""
        for origin in self._calls.find_stuck():
            n = self._calls.stuck(origin)
            self.record_failure(origin, OriginTimeout(
                f"{origin.name}: {n} call{'s' if n > 1 else ''} stuck past the read deadline (a hung file or share)",
                origin=origin.name))

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: uniform in [cap/2, cap], cap = backoff * 2**attempt (bounded)."""
        cap = min(self.max_backoff, self.backoff * (2**attempt))
        with self._rng_lock:
            return cap / 2 + self._rng.uniform(0, cap / 2)

    def call(self, origin: Origin, op: Callable[[Origin], object], *, deadline: float | None = None,
             retry_timeouts: bool = True):
        """Run op against one origin, retrying transient errors only (never past `deadline`, registry clock)."""
        with self._calls.running(origin, deadline):
            return self._call(origin, op, deadline, retry_timeouts)

    def _call(self, origin: Origin, op: Callable[[Origin], object], deadline: float | None,
              retry_timeouts: bool):
        attempt = 0
        while True:
            try:
                return op(origin)
            except OriginTransient as exc:
                if attempt >= self.retries or isinstance(exc, OriginOffline):
                    raise
                if isinstance(exc, OriginTimeout) and not retry_timeouts:
                    raise
                delay = self._delay(attempt)
                if deadline is not None and self._clock() + delay >= deadline:
                    raise
                attempt += 1
                h = self.health_of(origin)
                with self._lock:
                    h.retries += 1
                log.debug("origin %s: %s; retry %d of %d in %.3fs", origin.name, exc, attempt, self.retries, delay)
                self._sleep(delay)

    # -- reads ----------------------------------------------------------------------------------
    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None, exact: bool = False,
             *, deadline: float | None = None) -> bytes:
        """Bytes from the first origin that delivers; with exact, fewer than length is a (retried) error."""
        return self.read_ranges(path, [(offset, length)], expect, exact, deadline=deadline)[0]

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]], expect: FileStat | None = None,
                    exact: bool = False, *, deadline: float | None = None,
                    stream: "RegistryStream | None" = None) -> list[bytes]:
        """`read` of many ranges of one file at once (Origin.read_ranges: pipelined where the origin can),
        with the same retry, deadline, identity and failover policy; all ranges come from one origin and
        one version. With `stream` (open_stream), the origins' open streams of the file are used."""
        identity_origin = self.identity_origin  # one answer for the whole read, though a scan may move it
        ranges = [(int(offset), int(length)) for offset, length in ranges]

        def want_of(origin: Origin) -> FileStat | None:
            if expect is None or origin is identity_origin:
                return expect
            # A replica's mtime and ETag are its own: its copy must have the catalog's size, and
            # is then read against its own identity, so it cannot change under the read either.
            st = origin.stat(path)
            Identity(st.size).require(Identity(expect.size), origin=origin.name, path=path,
                                      when="here: its copy differs from the catalog's copy")
            return st

        def op(origin: Origin) -> list[bytes]:
            if stream is not None:
                data = stream.origin_stream(origin, want_of).read_ranges(ranges)
            elif len(ranges) == 1:
                data = [origin.read(path, ranges[0][0], ranges[0][1], want_of(origin))]
            else:
                data = origin.read_ranges(path, ranges, want_of(origin))
            for (offset, length), part in zip(ranges, data):
                if exact and len(part) != length:
                    raise ShortRead(f"{origin.name}: {path}: got {len(part)} of {length} bytes at {offset}",
                                    origin=origin.name, path=path)
            return data

        return self._failover(path, op, identity_origin, deadline, stream)

    def _failover(self, path: str, op: Callable[[Origin], list[bytes]], identity_origin: Origin | None,
                  deadline: float | None, stream: "RegistryStream | None") -> list[bytes]:
        """op on the origins in `order()` until one delivers (each with `call`'s retries); a change of the file
        at the identity origin ends it at once (a rescan sorts it out)."""
        order = self.order()
        if not order:
            raise OriginOffline(f"every origin is down (offline): {path} cannot be fetched", path=path)
        last: OriginError | None = None
        for i, origin in enumerate(order):
            if i and deadline is not None and self._clock() >= deadline:
                break
            try:
                data = self.call(origin, op, deadline=deadline, retry_timeouts=False)
            except OriginError as exc:
                self._count(origin, exc)
                if isinstance(exc, OriginFileChanged):
                    if stream is not None:
                        stream.forget(origin)  # that version is gone: a later read opens the file again
                    if origin is identity_origin:
                        raise  # the file changed since the scan; a rescan sorts it out
                last = exc  # a replica whose copy differs, or a failed origin: try the next one
                if _counts_against_health(exc):
                    self.record_failure(origin, exc)
            else:
                self._count(origin, None, sum(len(part) for part in data))
                self.record_ok(origin)
                return data
            if i + 1 < len(order):
                h = self.health_of(origin)
                with self._lock:
                    h.failovers += 1
                log.warning("origin %s failed for %s (%s); trying %s", origin.name, path, last, order[i + 1].name)
        assert last is not None
        raise last

    @property
    def ordered_streams(self) -> bool:
        """Whether some origin reads a stream cheaply only in offset order (Origin.ordered_streams)."""
        return any(origin.ordered_streams for origin in self.origins)

    def open_stream(self, path: str, expect: FileStat | None = None) -> "RegistryStream":
        """A read stream of one file across the replicas (see RegistryStream); close it when done."""
        return RegistryStream(self, path, expect)

    async def fetch_ranges(self, path: str, ranges: Sequence[tuple[int, int]], expect: FileStat | None = None,
                           exact: bool = False, *, stream: "RegistryStream | None" = None) -> list[bytes]:
        """`read_ranges` from trio (one range is one `read`): offline fails at once; otherwise a worker thread bounded
        by the caller's deadline.

        Origin fetches have their own thread limiter, so hung origin calls never take the threads that
        serve cached chunks; a cancelled fetch abandons its thread, which stops retrying at the deadline.
        """
        return await self._in_thread(path, functools.partial(self.read_ranges, path, list(ranges), expect, exact,
                                                             stream=stream))

    async def _in_thread(self, path: str, work: Callable[..., object]):
        """work(deadline=...) in a thread of the fetch limiter, bounded by the caller's trio deadline (turned
        into the registry clock's); offline fails at once, with no thread."""
        import trio

        if self.offline:
            raise OriginOffline(f"every origin is down (offline): {path} is not cached", path=path)
        if self._fetch_limiter is None:
            self._fetch_limiter = trio.CapacityLimiter(self.fetch_threads)
            self._thread_limiter = trio.CapacityLimiter(self.fetch_threads + STUCK_LIMIT * len(self.origins))
        remaining = trio.current_effective_deadline() - trio.current_time()
        deadline = None if math.isinf(remaining) else self._clock() + max(0.0, remaining)
        # The fetch limit is held by this task, given back when it gives up; an abandoned thread holds only the
        # thread limit until it returns (note_stuck counts it): a hung call never takes another read's turn.
        async with self._fetch_limiter:
            try:
                return await trio.to_thread.run_sync(functools.partial(work, deadline=deadline),
                                                     limiter=self._thread_limiter, abandon_on_cancel=True)
            except trio.Cancelled:
                self.note_stuck()
                raise

    def first_healthy(self) -> Origin:
        """The preferred origin whose probe passes (for scanning).

        A query: it records the probes' outcomes in the health states, and changes nothing else (the
        identity origin moves only when a scan of another origin commits, see `adopt_identities`).
        """
        order = self.order()
        if not order:
            raise OriginOffline("every origin is down (offline): nothing to scan")
        last: OriginError | None = None
        for origin in order:
            try:
                return self.check(origin)
            except OriginError as exc:
                last = exc
        assert last is not None
        raise last

    def check(self, origin: Origin) -> Origin:
        """Probe one origin (with retries) and record the outcome in its health; OriginError when it fails."""
        try:
            self.call(origin, probe)
        except OriginError as exc:
            self.record_failure(origin, exc, probe=True)
            raise
        self.record_ok(origin, probe=True)
        return origin

    def close(self) -> None:
        for origin in self.origins:
            origin.close()


class RegistryStream:
    """One file read many times (a read-ahead window) through the registry: `read_ranges(..., stream=)`.

    Keeps one Origin stream per origin it read from (SFTP: the remote file stays open), opened with that
    origin's identity of the file as `read` computes it (the catalog's for the identity origin, a
    replica's own stat, checked by size). A stream whose file changed is dropped and opened again by the
    next read. Thread-safe; close() closes every origin stream (safe twice).
    """

    def __init__(self, registry: OriginRegistry, path: str, expect: FileStat | None):
        self.registry = registry
        self.path = path
        self.expect = expect
        self._lock = threading.Lock()
        self._streams: dict[int, OriginStream] = {}
        self.closed = False

    def origin_stream(self, origin: Origin, want_of: Callable[[Origin], FileStat | None]) -> OriginStream:
        with self._lock:
            stream = self._streams.get(id(origin))
        if stream is not None:
            return stream
        opened = origin.open_stream(self.path, want_of(origin))  # outside the lock: a replica's stat
        with self._lock:
            if self.closed:
                opened.close()
                raise ValueError(f"stream of {self.path} is closed")
            stream = self._streams.setdefault(id(origin), opened)
        if stream is not opened:
            opened.close()
        return stream

    @property
    def ordered(self) -> bool:
        return self.registry.ordered_streams

    def forget(self, origin: Origin) -> None:
        with self._lock:
            stream = self._streams.pop(id(origin), None)
        if stream is not None:
            stream.close()

    def read_ranges(self, ranges: Sequence[tuple[int, int]], exact: bool = False, *,
                    deadline: float | None = None) -> list[bytes]:
        return self.registry.read_ranges(self.path, ranges, self.expect, exact, deadline=deadline, stream=self)

    async def fetch_ranges(self, ranges: Sequence[tuple[int, int]], exact: bool = False) -> list[bytes]:
        return await self.registry.fetch_ranges(self.path, ranges, self.expect, exact, stream=self)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.close()
