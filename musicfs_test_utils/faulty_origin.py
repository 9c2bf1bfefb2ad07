"""Faults: a MemoryOrigin handler that wraps another handler (or, through `forward`, a real origin) and injects
failures by mode, counting calls per operation. FaultyOrigin is a MemoryOrigin over Faults(forward(inner))."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from musicfs.origins.base import Identity, Origin
from musicfs.origins.memory import READ, Handler, MemoryOrigin, Request, forward
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


class Faults:
    """A handler: counts every request in `calls[op]` and `paths[op]`, then fails it as the mode says (read, stat,
    walk and probe alike) or passes it to `inner`. `set_mode` switches at any time (and wakes calls hanging in
    an old TimeoutMs)."""

    def __init__(self, inner: Handler, mode: FailMode = Healthy(), name: str = "faulty"):
        self.inner = inner
        self.name = name
        self.calls: Counter[str] = Counter()
        self.paths: dict[str, set[str]] = {}
        self._mode = mode
        self._lock = threading.Lock()
        self._released = threading.Event()

    @property
    def mode(self) -> FailMode:
        return self._mode

    def set_mode(self, mode: FailMode) -> None:
        with self._lock:
            self._mode = mode
            self.calls.clear()
        self._released.set()
        self._released = threading.Event()

    def reset(self) -> None:
        """Forget the calls and paths counted so far."""
        with self._lock:
            self.calls.clear()
            self.paths.clear()

    def __call__(self, request: Request):
        with self._lock:
            self.calls[request.op] += 1
            if request.path:
                self.paths.setdefault(request.op, set()).add(request.path)
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
        result = self.inner(request)
        if request.op == READ and isinstance(self._mode, PartialRead):
            return result[: self._mode.max_bytes]
        return result


class FaultyOrigin(MemoryOrigin):
    """A MemoryOrigin whose handler is Faults over a real origin (`inner`): the real origin's files, versions and
    timestamp rules, with faults on demand. `calls`, `mode`, `set_mode`, `paths_of` and `reset` are the Faults'."""

    def __init__(self, inner: Origin, mode: FailMode = Healthy()):
        self.inner = inner
        self.faults = Faults(forward(inner), mode, name=f"faulty({inner.name})")
        super().__init__(self.faults, name=self.faults.name)
        self.ordered_streams = inner.ordered_streams  # how its streams are read is the inner origin's

    @property
    def calls(self) -> Counter[str]:
        return self.faults.calls

    @property
    def mode(self) -> FailMode:
        return self.faults.mode

    def set_mode(self, mode: FailMode) -> None:
        self.faults.set_mode(mode)

    def paths_of(self, op: str) -> set[str]:
        """The paths requests of `op` named since the last reset (READ: a scan's tag reads)."""
        return set(self.faults.paths.get(op, ()))

    def reset(self) -> None:
        self.faults.reset()

    def timestamp_resolution(self, identity: Identity) -> float:
        return self.inner.timestamp_resolution(identity)

    def changed_before(self, identity: Identity, when: float) -> bool:
        return self.inner.changed_before(identity, when)

    def close(self) -> None:
        self.inner.close()
