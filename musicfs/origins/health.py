"""HealthMonitor: probe every origin in parallel, each probe bounded by a timeout (rows 4.2.1, 4.2.2).

One round starts a trio task per origin (in a nursery that lives only for that round); each task runs
the blocking probe in a worker thread (`trio.to_thread.run_sync(abandon_on_cancel=True)`, with a
limiter) inside `move_on_after(timeout)`. A probe that does not answer in time marks its origin
unhealthy and its thread is abandoned; while that thread is still stuck, later rounds do not start
another one for the same origin (they report it as still hanging), so a dead origin costs one
thread, not one per round. A round therefore takes about one timeout however many origins hang.

Between rounds the monitor sleeps `interval` seconds, or less when a read reports a failing origin
(the registry's listener wakes it) so a dead primary is confirmed, and a recovered one noticed, fast.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Callable

import trio

from ..shared import OriginError, OriginTimeout, run_all
from .base import Origin
from .registry import OriginRegistry
from .registry import probe as registry_probe

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, registry: OriginRegistry, *, interval: float = 10.0, timeout: float = 5.0,
                 max_parallel: int = 8, min_gap: float | None = None,
                 probe: Callable[[Origin], None] = registry_probe,
                 on_change: Callable[[], None] | None = None):
        self.registry = registry
        self.interval = interval
        self.timeout = timeout
        self.min_gap = min(1.0, interval / 4) if min_gap is None else min_gap  # between woken rounds
        self.limiter = trio.CapacityLimiter(max(1, min(max_parallel, len(registry.origins))))
        self.rounds = 0
        self.last_round_s: float | None = None
        self._probe = probe
        self._on_change = on_change
        self._inflight: dict[int, float] = {}  # id(origin) -> time.monotonic() its probe thread started
        self._inflight_lock = threading.Lock()
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    # -- one round --------------------------------------------------------------------------------
    async def probe_all(self) -> None:
        """Probe every origin at once; returns when each has answered or timed out."""
        before = self._summary()
        started = trio.current_time()
        await run_all([(f"probe {o.name}", functools.partial(self._probe_one, o)) for o in self.registry.origins])
        self.last_round_s = trio.current_time() - started
        self.rounds += 1
        if self._on_change is not None and self._summary() != before:
            self._on_change()

    def _summary(self) -> tuple:
        return (self.registry.offline, tuple(h.state for h in self.registry.health))

    async def _probe_one(self, origin: Origin) -> None:
        key = id(origin)
        with self._inflight_lock:
            stuck_since = self._inflight.get(key)
        if stuck_since is not None:
            self.registry.record_failure(origin, OriginTimeout(
                f"{origin.name}: health probe still hanging after {time.monotonic() - stuck_since:.1f}s",
                origin=origin.name), probe=True)
            return

        def run() -> None:
            with self._inflight_lock:
                self._inflight[key] = time.monotonic()
            try:
                self._probe(origin)
            finally:
                with self._inflight_lock:
                    self._inflight.pop(key, None)

        with trio.move_on_after(self.timeout):
            try:
                await trio.to_thread.run_sync(run, limiter=self.limiter, abandon_on_cancel=True)
            except OriginError as exc:
                self.registry.record_failure(origin, exc, probe=True)
            except Exception as exc:  # a probe must never take the monitor down
                self.registry.record_failure(origin, exc, probe=True)
            else:
                self.registry.record_ok(origin, probe=True)
            return
        self.registry.record_failure(origin, OriginTimeout(
            f"{origin.name}: health probe timed out after {self.timeout:g}s", origin=origin.name), probe=True)

    # -- the loop -----------------------------------------------------------------------------------
    def wake(self) -> None:
        """Probe again soon (thread-safe)."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._wake.set)
        except trio.RunFinishedError:
            pass

    def _on_registry_event(self, origin: Origin, source: str) -> None:
        if source == "read":
            self.wake()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Probe rounds until cancelled; `started` after the first round, so states are known."""
        self._token = trio.lowlevel.current_trio_token()
        remove = self.registry.add_listener(self._on_registry_event)
        self.registry.monitored = True
        try:
            await self.probe_all()
            task_status.started()
            while True:
                self._wake = trio.Event()
                with trio.move_on_after(self.interval):
                    await self._wake.wait()
                    await trio.sleep(self.min_gap)  # a burst of failing reads makes one early round
                await self.probe_all()
        finally:
            self.registry.monitored = False
            remove()
            self._token = None
