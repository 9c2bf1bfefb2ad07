"""What the registry records of each origin's health: states, counts, and the frozen statistics status shows."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from .. import shared as errors  # the origin error tree, by name
from .base import SessionStatistics

UNKNOWN = "unknown"


HEALTHY = "healthy"


UNHEALTHY = "unhealthy"


@dataclass
class OriginHealth:
    """What the registry knows about one origin; shown by `musicfs status`."""

    name: str
    state: str = UNKNOWN
    last_error: str = ""
    last_ok: float | None = None  # wall-clock time of the last success (probe or read)
    last_check: float | None = None  # wall-clock time of the last probe
    failures: int = 0  # consecutive failures
    recovered_at: float | None = None  # registry clock: when it last went unhealthy -> healthy
    retries: int = 0
    failovers: int = 0  # reads that gave up on this origin and went to the next one
    bytes_fetched: int = 0
    results: collections.Counter = field(default_factory=collections.Counter)  # read requests by result


@dataclass(frozen=True)
class OriginStatistics:
    """`OriginRegistry.statistics()`: one record per origin, in priority order (shown by `musicfs status`)."""

    name: str
    state: str = UNKNOWN  # unknown | healthy | unhealthy
    active: bool = False  # reads go here first right now
    last_error: str = ""
    last_ok: float | None = None  # wall-clock time of the last success (probe or read)
    last_check: float | None = None  # wall-clock time of the last probe
    failures: int = 0  # consecutive failures
    requests: int = 0  # read requests sent to this origin (each with its retries)
    results: dict[str, int] = field(default_factory=dict)  # requests by result: ok, not_found, timeout, ...
    bytes_fetched: int = 0
    retries: int = 0
    failovers: int = 0
    stuck: int = 0  # calls still running past their read's deadline: their threads, left to finish
    sessions: SessionStatistics | None = None  # the connections it keeps open itself (SFTP's ssh sessions)


_RESULTS = ((errors.OriginNotFound, "not_found"), (errors.OriginPermission, "permission"),
            (errors.OriginFileChanged, "changed"), (errors.OriginTimeout, "timeout"), (errors.ShortRead, "short_read"),
            (errors.LocalExhaustion, "exhausted"), (errors.OriginTransient, "transient"))


def result_of(exc: BaseException | None) -> str:
    """A read request's result, as counted per origin."""
    if exc is None:
        return "ok"
    for kind, name in _RESULTS:
        if isinstance(exc, kind):
            return name
    return "fatal"


def _counts_against_health(exc: errors.OriginError) -> bool:
    """A missing or forbidden file is the file's problem, and fd exhaustion ours, not the origin's."""
    return not isinstance(exc, (errors.OriginNotFound, errors.OriginPermission, errors.OriginFileChanged,
                                errors.LocalExhaustion))
