"""Origin calls in progress, and those found still running past their read's deadline (row 4.7).

An origin call that never returns (a hung NFS share) costs only itself. A read's thread counts against the
registry's fetch limit only until the read gives up at its deadline; the thread itself is left to finish, counted
as stuck, and its origin is marked unhealthy at once ("N calls stuck ..."), so the kernel's retry of that read
and the reads after it fail over or fail fast instead of waiting again. While STUCK_LIMIT calls of an origin are
stuck, no probe makes it healthy again; stuck threads are bounded by that limit per origin.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Callable, Iterator

from .base import Origin

STUCK_LIMIT = 4  # stuck calls of one origin that keep it unhealthy whatever its probes say
# a deadline passes on the registry's clock a moment after trio's: a call this close to it counts as past it
LATE = 0.05


class CallTracker:
    """Each origin call runs inside `running`; `find_stuck`, called when a read gave up at its deadline, counts
    the calls still running past theirs (once each) until they return. Thread-safe."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[object, tuple[Origin, float | None]] = {}
        self._stuck: set[object] = set()
        self._counts: collections.Counter[int] = collections.Counter()  # id(origin) -> its stuck calls

    @contextlib.contextmanager
    def running(self, origin: Origin, deadline: float | None) -> Iterator[None]:
        token = object()
        with self._lock:
            self._running[token] = (origin, deadline)
        try:
            yield
        finally:
            with self._lock:
                del self._running[token]
                if token in self._stuck:
                    self._stuck.discard(token)
                    self._counts[id(origin)] -= 1

    def find_stuck(self) -> list[Origin]:
        """The origins with calls newly found running past their deadline."""
        now = self._clock()
        found: dict[int, Origin] = {}
        with self._lock:
            for token, (origin, deadline) in self._running.items():
                if deadline is not None and now >= deadline - LATE and token not in self._stuck:
                    self._stuck.add(token)
                    self._counts[id(origin)] += 1
                    found[id(origin)] = origin
        return list(found.values())

    def stuck(self, origin: Origin) -> int:
        """Calls of `origin` still running past their deadline."""
        return self._counts[id(origin)]
