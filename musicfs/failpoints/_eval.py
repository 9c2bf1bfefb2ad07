"""Evaluating a failpoint: the sync and the trio flavour."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import NamedTuple

from . import _registry
from ._parse import Action
from ._registry import points

log = logging.getLogger("musicfs.failpoints")


class FailPointPanic(Exception):
    """Raised by the `panic` task."""


def fail_point(name: str) -> str | None:
    """Run the configured action of `name`; return the `return` value or None."""
    step = _step(name)
    if not isinstance(step, _Wait):
        return step
    if step.pause:
        _registry.pause(name, step.point)
    else:
        time.sleep(step.seconds)
    return None


async def fail_point_async(name: str) -> str | None:
    """Like fail_point, but sleeps, pauses and yields without blocking trio."""
    step = _step(name)
    if not isinstance(step, _Wait):
        return step
    import trio  # lazily: the sync API must work without trio installed

    if step.pause:
        await _pause_async(name, step.point)
    else:
        await trio.sleep(step.seconds)  # 0 for `yield`: a checkpoint
    return None


class _Wait(NamedTuple):
    """A task that waits: for `seconds` (0 to yield), or paused at `point` until released."""

    point: object
    seconds: float = 0.0
    pause: bool = False


def _step(name: str) -> str | None | _Wait:
    """The armed action of `name`, run up to its wait: its result, or how it waits."""
    if not points:  # the disarmed fast path: one global check
        return None
    picked = _registry.select(name)
    if picked is None:
        return None
    point, action = picked
    if action.task in ("sleep", "delay"):
        log.info("failpoint %s sleeping %s ms", name, action.arg)  # as for pause: another process may watch
        return _Wait(point, seconds=int(action.arg) / 1000)
    if action.task == "yield":
        return _Wait(point)
    if action.task == "pause":
        log.info("failpoint %s paused", name)  # tells a test watching another process's log
        return _Wait(point, pause=True)
    return _run_common(name, action)


def _run_common(name: str, action: Action) -> str | None:
    """Tasks that behave the same in sync and async code."""
    task = action.task
    if task == "return":
        return action.arg if action.arg is not None else ""
    if task == "panic":
        raise FailPointPanic(
            action.arg if action.arg is not None else f"failpoint {name} panic"
        )
    if task == "print":
        log.info("%s", action.arg if action.arg is not None else f"failpoint {name} executed.")
    elif task == "crash":
        # No cleanup on purpose: this simulates power loss / OOM kill.
        os.kill(os.getpid(), signal.SIGKILL)
    return None  # "off"


async def _pause_async(name: str, point: _registry.Point) -> None:
    """Wait until `point` is replaced or removed, without a blocked thread.

    cfg()/remove() may run in any thread, so the wake-up goes through
    run_sync_soon, which is thread-safe.
    """
    import trio

    released = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake() -> None:
        try:
            token.run_sync_soon(released.set)
        except trio.RunFinishedError:
            pass

    if not _registry.register_waker(name, point, wake):
        return
    try:
        await released.wait()
    finally:
        _registry.unregister_waker(name, point, wake)
