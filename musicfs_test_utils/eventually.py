"""The harness's one way to wait for state that has no event of its own: poll a predicate within a deadline.

`eventually` from plain code (a test driving a child daemon), `eventually_async` from trio (in-process rigs);
both return the predicate's first truthy value and fail naming `what` when the deadline passes.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

__all__ = ["eventually", "eventually_async"]


def eventually(predicate: Callable[[], T], timeout: float, what: str, step: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(step)


async def eventually_async(predicate: Callable[[], T], timeout: float, what: str, step: float = 0.01) -> T:
    import trio

    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(step)
    raise TimeoutError(f"{what}: not within {timeout}s")
