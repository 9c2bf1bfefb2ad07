"""TaskSupervisor: owns the daemon's nursery; supervised and critical (restarted) tasks."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..shared import TaskFn

log = logging.getLogger(__name__)


@dataclass
class TaskState:
    name: str
    critical: bool
    essential: bool = False  # restarted for the daemon's life, never given up
    state: str = "running"  # running | done | restarting | failed | cancelled
    failures: int = 0
    restarts: int = 0
    last_error: str = ""
    failure_times: list[float] = field(default_factory=list)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)  # set when the task is over, however it ended


@dataclass(frozen=True)
class TaskStatistics:
    """One supervised task, as `musicfs status` shows it."""

    name: str
    critical: bool
    state: str
    failures: int
    restarts: int
    last_error: str


@dataclass(frozen=True)
class SupervisorStatistics:
    """`TaskSupervisor.statistics()`: every task by name, and the failed (degraded) ones."""

    tasks: dict[str, TaskStatistics]
    degraded: tuple[str, ...]


class TaskSupervisor:
    """Use as `async with TaskSupervisor() as sup:`; the block waits for every task (or cancel_all)."""

    def __init__(self, *, max_failures: int = 5, window: float = 60.0, backoff: float = 0.5, max_backoff: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.tasks: dict[str, TaskState] = {}
        self.max_failures = max_failures
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._nursery: trio.Nursery | None = None
        self._cm = None

    async def __aenter__(self) -> "TaskSupervisor":
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self._cm.__aexit__(*exc)

    @property
    def degraded(self) -> list[str]:
        return sorted(name for name, t in self.tasks.items() if t.state == "failed")

    def task_status(self, name: str) -> TaskState | None:
        return self.tasks.get(name)

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            tasks={name: TaskStatistics(name, t.critical, t.state, t.failures, t.restarts, t.last_error)
                   for name, t in self.tasks.items()},
            degraded=tuple(self.degraded))

    def cancel_all(self) -> None:
        self._nursery.cancel_scope.cancel()

    def cancel(self, name: str) -> None:
        """Stop one task (it is not restarted)."""
        state = self.tasks.get(name)
        if state is not None:
            state.scope.cancel()

    async def stop(self, names, timeout: float) -> list[str]:
        """Cancel the named tasks and wait, up to `timeout`, until they are over (a task in a worker thread
        that cannot be abandoned ends when its thread returns). The names of those still running after it."""
        states = [self.tasks[name] for name in names if name in self.tasks]
        for state in states:
            state.scope.cancel()
        with trio.move_on_after(timeout):
            for state in states:
                await state.ended.wait()
        return [state.name for state in states if not state.ended.is_set()]

    def spawn_supervised(self, name: str, fn: TaskFn) -> None:
        """Run once; a crash is logged with the task's name and recorded, nothing else stops."""
        state = self.tasks[name] = TaskState(name, critical=False)
        self._nursery.start_soon(self._run_once, state, fn, name=name)

    def spawn_critical(self, name: str, fn: TaskFn) -> None:
        """Run and restart on failure with exponential backoff; too many failures -> failed (degraded)."""
        state = self.tasks[name] = TaskState(name, critical=True)
        self._nursery.start_soon(self._run_forever, state, fn, name=name)

    def spawn_essential(self, name: str, fn: TaskFn) -> None:
        """A service the mount cannot do without (the control socket, origin health, the cache): restarted on
        failure with exponential backoff (at most max_backoff apart) for as long as the daemon runs; too many
        failures in the window make it degraded in the status, never given up."""
        state = self.tasks[name] = TaskState(name, critical=True, essential=True)
        self._nursery.start_soon(self._run_forever, state, fn, name=name)

    async def _attempt(self, state: TaskState, fn: TaskFn) -> bool:
        """True when fn returned normally."""
        try:
            await fn()
            return True
        except Exception as exc:
            state.failures += 1
            state.last_error = f"{type(exc).__name__}: {exc}"
            state.failure_times.append(self._clock())
            log.error("task %s failed", state.name, exc_info=exc)
            return False

    async def _run_once(self, state: TaskState, fn: TaskFn) -> None:
        try:
            with state.scope:
                state.state = "done" if await self._attempt(state, fn) else "failed"
            if state.scope.cancelled_caught:
                state.state = "cancelled"
        finally:
            state.ended.set()

    async def _run_forever(self, state: TaskState, fn: TaskFn) -> None:
        try:
            with state.scope:
                await self._restart_loop(state, fn)
            if state.scope.cancelled_caught:
                state.state = "cancelled"
        finally:
            state.ended.set()

    async def _restart_loop(self, state: TaskState, fn: TaskFn) -> None:
        while True:
            if await self._attempt(state, fn):
                state.state = "done"
                return
            now = self._clock()
            state.failure_times = [t for t in state.failure_times if now - t <= self.window]
            if len(state.failure_times) >= self.max_failures and not state.essential:
                state.state = "failed"
                log.error("task %s failed %d times in %.0fs; giving up (status: degraded)",
                          state.name, len(state.failure_times), self.window)
                return
            delay = min(self.max_backoff, self.backoff * math.pow(2, len(state.failure_times) - 1))
            state.state = "restarting"
            if state.essential and len(state.failure_times) >= self.max_failures:
                state.state = "failed"  # degraded in the status while it keeps failing; restarted all the same
                log.error("task %s failed %d times in %.0fs; restarting it in %.1fs (it is never given up)",
                          state.name, len(state.failure_times), self.window, delay)
            await trio.sleep(delay)
            state.restarts += 1
            state.state = "running"
