"""FaultyOrigin: wraps any Origin and injects failures by mode; counts calls per operation."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from musicfs.origins.base import FileStat, Origin
from musicfs.shared.errors import (
    OriginFatal,
    OriginNotFound,
    OriginPermission,
    OriginTimeout,
    OriginTransient,
)


@dataclass(frozen=True)
class Healthy:
    pass


@dataclass(frozen=True)
class FailEveryNth:
    n: int


@dataclass(frozen=True)
class FailAfterN:
    n: int


@dataclass(frozen=True)
class TimeoutMs:
    ms: int


@dataclass(frozen=True)
class PartialRead:
    max_bytes: int


@dataclass(frozen=True)
class ReturnError:
    kind: str  # transient | timeout | not_found | permission | fatal


_ERRORS = {"transient": OriginTransient, "timeout": OriginTimeout, "not_found": OriginNotFound,
           "permission": OriginPermission, "fatal": OriginFatal}

FailMode = Healthy | FailEveryNth | FailAfterN | TimeoutMs | PartialRead | ReturnError


class FaultyOrigin(Origin):
    """Counts every call in `calls[op]`; faults apply to read, stat, walk and probe."""

    def __init__(self, inner: Origin, mode: FailMode = Healthy()):
        self.inner = inner
        self.name = f"faulty({inner.name})"
        self.ordered_streams = inner.ordered_streams  # how its streams are read is the inner origin's
        self.calls: Counter[str] = Counter()
        self._mode = mode
        self._lock = threading.Lock()
        self._released = threading.Event()

    def set_mode(self, mode: FailMode) -> None:
        with self._lock:
            self._mode = mode
            self.calls.clear()
        self._released.set()  # wake callers stuck in an old TimeoutMs
        self._released = threading.Event()

    @property
    def mode(self) -> FailMode:
        return self._mode

    def _enter(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1
            n, mode, released = sum(self.calls.values()), self._mode, self._released
        if isinstance(mode, FailEveryNth) and n % mode.n == 0:
            raise OriginTransient(f"{self.name}: injected failure on call {n}", origin=self.name)
        if isinstance(mode, FailAfterN) and n > mode.n:
            raise OriginTransient(f"{self.name}: injected failure after {mode.n} calls", origin=self.name)
        if isinstance(mode, TimeoutMs):
            released.wait(mode.ms / 1000)
            raise OriginTimeout(f"{self.name}: injected hang of {mode.ms} ms", origin=self.name)
        if isinstance(mode, ReturnError):
            raise _ERRORS[mode.kind](f"{self.name}: injected {mode.kind} error", origin=self.name)

    def walk(self) -> Iterator[FileStat]:
        self._enter("walk")
        return self.inner.walk()

    def stat(self, path: str) -> FileStat:
        self._enter("stat")
        return self.inner.stat(path)

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        self._enter("read")
        data = self.inner.read(path, offset, length, expect)
        mode = self._mode
        return data[: mode.max_bytes] if isinstance(mode, PartialRead) else data

    def probe(self) -> None:
        self._enter("probe")
        self.inner.probe()

    def close(self) -> None:
        self.inner.close()
