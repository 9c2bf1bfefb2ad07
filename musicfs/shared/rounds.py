"""run_all: one round of jobs at once, in a nursery that lives only for the call.

Below origins/ (the health monitor's probe rounds use it) and beside supervisor.py, which owns the
daemon's long-lived nursery; neither imports the other.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import trio

TaskFn = Callable[[], Awaitable[None]]


async def run_all(jobs: list[tuple[str, TaskFn]]) -> None:
    """Run named jobs at once and return when every one has finished (a round of health probes).

    The nursery lives and dies inside this call: nothing outlives it. Each job handles its own errors.
    """
    async with trio.open_nursery() as nursery:
        for name, fn in jobs:
            nursery.start_soon(fn, name=name)
