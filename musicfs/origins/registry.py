"""OriginRegistry: the library's replicas in priority order, with retry and failover."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

from ..errors import OriginError, OriginFileChanged, OriginTransient, ShortRead
from .. import points
from ..failpoints import fail_point
from .base import FileStat, Origin


def probe(origin: Origin) -> None:
    """One health probe (the failpoint lets tests make it hang)."""
    fail_point(points.HEALTH_CHECK_HANG)
    origin.probe()

log = logging.getLogger(__name__)


class OriginRegistry:
    """Reads go to the first origin that answers; transient errors are retried with backoff.

    Blocking, like the origins themselves: call from worker threads.
    """

    def __init__(self, origins: list[Origin], retries: int = 2, backoff: float = 0.05, seed: int | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if not origins:
            raise ValueError("at least one origin is needed")
        self.origins = origins
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    @property
    def primary(self) -> Origin:
        return self.origins[0]

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        with self._rng_lock:
            return self._rng.uniform(0, self.backoff * (2**attempt))

    def call(self, origin: Origin, op: Callable[[Origin], object]):
        """Run op against one origin, retrying transient errors only."""
        for attempt in range(self.retries + 1):
            try:
                return op(origin)
            except OriginTransient:
                if attempt == self.retries:
                    raise
                self._sleep(self._delay(attempt))

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None, exact: bool = False) -> bytes:
        """Bytes from the first origin that delivers; with exact, fewer than length is a (retried) error."""

        def op(origin: Origin) -> bytes:
            data = origin.read(path, offset, length, expect)
            if exact and len(data) != length:
                raise ShortRead(f"{origin.name}: {path}: got {len(data)} of {length} bytes at {offset}",
                                origin=origin.name, path=path)
            return data

        last: OriginError | None = None
        for origin in self.origins:
            try:
                return self.call(origin, op)
            except OriginFileChanged:
                raise  # every replica should agree; a rescan sorts it out
            except OriginError as exc:
                last = exc
                if len(self.origins) > 1:
                    log.warning("origin %s failed for %s (%s); trying the next one", origin.name, path, exc)
        assert last is not None
        raise last

    def first_healthy(self) -> Origin:
        """The highest-priority origin whose probe passes (for scanning)."""
        last: OriginError | None = None
        for origin in self.origins:
            try:
                self.call(origin, probe)
                return origin
            except OriginError as exc:
                last = exc
        assert last is not None
        raise last

    def close(self) -> None:
        for origin in self.origins:
            origin.close()
