"""CacheHealth: is the local chunk cache usable? States normal / unstable / down (as JuiceFS names them).

- normal: reads use the cache (every chunk verified) and store what they fetch.
- unstable: a cache operation failed (I/O error, read-only disk) or hung past `op_timeout`: the cache is
  bypassed — reads go straight to the origins, nothing is stored (passthrough) — and probed every
  `retry_interval`; `down_after` failed probes in a row make it down.
- down: bypassed and probed every `down_interval`. Also while the cache index is rebuilt from the chunk
  files after it failed at runtime (row 6.3), and when the cache could not be opened at start.
A passing probe (a small file written, fsynced, read back and removed, then an index write, all within
`probe_timeout`) brings the cache back to normal. While normal it is probed every `probe_interval`, so a
disk that turned read-only is noticed without traffic (row 6.6). `musicfs status` shows the state.

Running out of file descriptors (EMFILE) is not a cache fault and changes nothing here (row 5.3).
Everything here runs on the trio loop; blocking work runs in worker threads, each call inside a deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Awaitable, Callable, TypeVar

import trio

from ..shared import CacheUnavailable, CasError, CasIndexError, TooManyOpenFiles
from .cas import CasStore

log = logging.getLogger(__name__)

NORMAL, UNSTABLE, DOWN = "normal", "unstable", "down"
T = TypeVar("T")


class CacheHealth:
    def __init__(self, cas: CasStore, *, op_timeout: float = 5.0, probe_timeout: float = 5.0,
                 probe_interval: float = 30.0, retry_interval: float = 1.0, down_interval: float = 5.0,
                 down_after: int = 3, rebuild_timeout: float = 3600.0, threads: int = 4):
        self.cas = cas
        self.op_timeout = op_timeout
        self.probe_timeout = probe_timeout
        self.probe_interval = probe_interval
        self.retry_interval = retry_interval
        self.down_interval = down_interval
        self.down_after = down_after
        self.rebuild_timeout = rebuild_timeout
        self.limiter = trio.CapacityLimiter(threads)  # cache I/O only: a hung disk never starves origin reads
        self.state = NORMAL if cas.available else DOWN
        self.reason = "" if cas.available else f"cannot open the cache: {cas.open_error}"
        self.since = time.monotonic()
        self.failed_probes = 0
        self.failed_rebuilds = 0
        self.probes = 0
        self.transitions = 0
        self._rebuild_wanted = False
        self._probe_busy = False
        self._wake: trio.Event | None = None
        self._changed: trio.Event | None = None
        self.reconciled = trio.Event()  # set once the store's deferred start-up reconciliation is done
        self.loaded = trio.Event()  # set once the store's LRU is loaded (deferred after a clean start)
        self.last_reconcile = None  # its ReconcileReport

    # -- state ------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self.state == NORMAL

    def elapsed(self) -> float:
        """Seconds in the current state."""
        return time.monotonic() - self.since

    def _set(self, state: str, reason: str) -> None:
        old = self.state
        self.reason = reason
        if state == old:
            return
        self.state = state
        self.since = time.monotonic()
        self.transitions += 1
        if state == NORMAL:
            log.info("cache: %s -> normal: %s", old, reason)
        else:
            log.warning("cache: %s -> %s (%s): reads go straight to the origins", old, state, reason)
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        if self._wake is not None:
            self._wake.set()  # the health task reschedules its next probe for the new state

    async def wait_for(self, *states: str) -> None:
        """Until the state is one of `states` (tests and callers that must not poll)."""
        while self.state not in states:
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def failed(self, exc: BaseException) -> None:
        """A cache operation failed. A failed index: down, rebuilt in the background. Anything else
        (I/O error, read-only, a hang): unstable until a probe passes."""
        if isinstance(exc, CasIndexError):
            self._rebuild_wanted = True
            self._set(DOWN, f"the cache index failed ({exc}); rebuilding it from the chunk files")
            if self._wake is not None:
                self._wake.set()
        elif self.state == NORMAL:
            self._set(UNSTABLE, str(exc))

    # -- cache I/O ----------------------------------------------------------------------------
    async def run_io(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a cache worker thread within op_timeout; past it the cache is marked unstable and
        CacheUnavailable raised (the abandoned thread finishes on its own)."""
        try:
            with trio.fail_after(self.op_timeout):
                return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            name = getattr(fn, "__name__", "operation")
            error = CasError(f"cache: {name} did not finish within {self.op_timeout:g}s")
            self.failed(error)
            raise CacheUnavailable(str(error)) from None

    # -- probing and rebuilding -------------------------------------------------------------------
    async def probe_once(self) -> bool:
        """One probe (or the pending index rebuild); moves the state. True when the cache is usable after."""
        if self._rebuild_wanted:
            return await self.rebuild()
        self.probes += 1
        error = None
        if self._probe_busy:
            error = "the previous probe is still hanging"
        else:
            self._probe_busy = True

            def work() -> None:
                try:
                    self.cas.probe()
                finally:
                    self._probe_busy = False

            try:
                with trio.fail_after(self.probe_timeout):
                    await trio.to_thread.run_sync(work, abandon_on_cancel=True)
            except trio.TooSlowError:
                error = f"a probe did not finish within {self.probe_timeout:g}s"
            except TooManyOpenFiles:
                return self.usable  # says nothing about the disk
            except CasIndexError as exc:
                self.failed(exc)
                return False
            except CasError as exc:
                error = str(exc)
        if error is None:
            self.failed_probes = 0
            if self.state != NORMAL:
                self._set(NORMAL, "a probe passed: the cache is used again")
            return True
        self.failed_probes += 1
        if self.state == NORMAL:
            self._set(UNSTABLE, error)
        elif self.state == UNSTABLE and self.failed_probes >= self.down_after:
            self._set(DOWN, f"{self.failed_probes} probes failed in a row, the last: {error}")
        else:
            self.reason = error
        return False

    async def rebuild(self) -> bool:
        """Rebuild the failed cache index from the chunk files (reads bypass the cache meanwhile)."""
        self._rebuild_wanted = False
        self._set(DOWN, "rebuilding the cache index from the chunk files")
        stop = threading.Event()
        try:
            with trio.fail_after(self.rebuild_timeout):
                report = await trio.to_thread.run_sync(self.cas.rebuild_index, stop.is_set, abandon_on_cancel=True)
        except (trio.TooSlowError, CasError) as exc:
            self._rebuild_wanted = True  # tried again at the next probe time
            self.failed_rebuilds += 1
            reason = str(exc) or f"it took longer than {self.rebuild_timeout:g}s"
            self.reason = f"the cache index rebuild failed ({reason}); retrying"
            log.warning("cache: the index rebuild failed (%s); retrying in %gs", reason, self.down_interval)
            return False
        finally:
            stop.set()
        self.failed_probes = 0
        self._set(NORMAL, f"index rebuilt: {report.summary()}")
        return True

    async def _deferred(self, what: str, fn: Callable[..., T], *args) -> tuple[bool, T | None]:
        """Start-up work the cache task does after READY: fn(*args) in a cache thread within `rebuild_timeout`.
        (True, its result), or (False, None) after a timeout, EMFILE or an unavailable cache (tried again later)
        or a failure (logged; it moves the state like any cache failure)."""
        try:
            with trio.fail_after(self.rebuild_timeout):
                return True, await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            log.warning("cache: %s took longer than %gs; trying again later", what, self.rebuild_timeout)
        except TooManyOpenFiles as exc:
            log.warning("cache: %s postponed: %s", what, exc)
        except CacheUnavailable:
            pass
        except CasError as exc:
            log.warning("cache: %s failed: %s", what, exc)
            self.failed(exc)  # a failed index: down and rebuilt (which loads and reconciles); else unstable, probed
        return False, None

    async def load(self) -> bool:
        """Load the store's LRU when a clean start left it out of the way to READY (CasStore.load_lru): in a
        cache thread, within `rebuild_timeout`, while reads go on (they find cached chunks by their files
        meanwhile; a put loads it first itself). True when loaded; a failure moves the state like any cache
        failure (a failed index: down and rebuilt, which loads it) and it is tried again later."""
        if self.cas.loaded:
            self.loaded.set()
            return True
        if not self.usable:
            return False
        done, _ = await self._deferred("loading the index", self.cas.load_lru)
        if not done:
            return False
        self.loaded.set()
        return True

    async def reconcile(self) -> bool:
        """The store's deferred start-up reconciliation (a clean start leaves it to the cache task, after
        READY): in a cache thread, within `rebuild_timeout`, while reads and puts go on. True when done (or
        nothing was pending); a failure moves the state like any cache failure and it is tried again later."""
        if not self.cas.reconcile_pending:
            self.reconciled.set()
            return True
        if not self.usable:
            return False
        stop = threading.Event()
        try:
            done, report = await self._deferred("the index reconciliation", self.cas.reconcile, stop.is_set)
        finally:
            stop.set()
        if not done:
            return False
        self.last_reconcile = report
        log.info("cache: index reconciled with the chunk files: %s", report.summary())
        self.reconciled.set()
        return True

    async def run(self, after: trio.Event | None = None, after_timeout: float = 30.0,
                  started: Callable[[], Awaitable[None]] | None = None) -> None:
        """The health task (`started`, if given, runs first, once): load the LRU and reconcile the index with the chunk files after a clean start,
        probe on a schedule (often while unstable), rebuild a failed index at once, save access times while
        normal. With `after` (the daemon's READY sent) it starts once that is set, or after `after_timeout`
        at most: its start-up work stays out of the way to READY. Runs until cancelled."""
        if after is not None:
            with trio.move_on_after(after_timeout):
                await after.wait()
        if started is not None:
            await started()
        first = True
        while True:
            if not self.loaded.is_set() and self.state == NORMAL:
                await self.load()
            if not self.reconciled.is_set() and self.state == NORMAL and self.loaded.is_set():
                await self.reconcile()
            interval = {NORMAL: self.probe_interval, UNSTABLE: self.retry_interval}.get(self.state, self.down_interval)
            self._wake = trio.Event()
            if not (first and self._rebuild_wanted):
                with trio.move_on_after(interval) as waited:
                    await self._wake.wait()  # a state change or an index failure (see _set and failed)
                if not waited.cancelled_caught and not self._rebuild_wanted:
                    continue  # the state changed: wait the interval of the new state before probing
            first = False
            await self.probe_once()
            if self.state == NORMAL:
                try:
                    await self.run_io(self.cas.flush_atimes)
                except CacheUnavailable:
                    pass
                except CasError as exc:
                    self.failed(exc)
