"""LatencyHistogram: durations counted into fixed buckets, read as a frozen record (HistogramStatistics).

Trio-free and without prometheus_client: the FUSE layer observes its read latency here (on the trio loop) and
shows it in its statistics record; metrics.py turns the record into a Prometheus histogram at scrape time.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# Upper bounds in seconds: a read from the memory LRU takes well under a millisecond, a cold one over the
# network tens to hundreds of milliseconds, and read_timeout (30 s by default) bounds them all.
READ_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class HistogramStatistics:
    """Observations by bucket: `counts[i]` fell in (bounds[i-1], bounds[i]]; the last one above bounds[-1]."""

    bounds: tuple[float, ...] = READ_BUCKETS
    counts: tuple[int, ...] = (0,) * (len(READ_BUCKETS) + 1)  # not cumulative; one more than bounds (+Inf)
    count: int = 0
    sum_s: float = 0.0

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for every bound and +Inf, as Prometheus' `le` buckets."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


class LatencyHistogram:
    def __init__(self, bounds: tuple[float, ...] = READ_BUCKETS):
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be ascending and distinct")
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1  # le: a value equal to a bound is in it
        self._sum += seconds

    def statistics(self) -> HistogramStatistics:
        counts = tuple(self._counts)
        return HistogramStatistics(bounds=self.bounds, counts=counts, count=sum(counts), sum_s=self._sum)
