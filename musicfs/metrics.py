"""Prometheus metrics (`musicfs mount --metrics HOST:PORT`, config `metrics`): text format at /metrics.

Nothing is counted twice: at each scrape, `MusicFSCollector` reads the components' frozen statistics records
(OriginRegistry, ChunkCache, FileReader, MusicOperations, ReadAhead: docs/architecture.md) and turns them into
metric families. The records are taken on the trio loop (`on_loop`): the HTTP server's thread never touches a
component itself, it waits (bounded) for the loop to hand it a `MetricsRecords`. While the daemon is starting,
stopping or its loop does not answer, a scrape still serves the process metrics and `musicfs_up 0`.

Lifetime: `MetricsServer.start` binds and serves from prometheus_client's server thread, before the library is
opened (a taken port refuses the start, exit 1); `stop` shuts the server down and joins its thread. Both are
called by daemon.run, which owns the server for the daemon's life. Label values that name an origin are redacted.
docs/metrics.md describes every metric.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import trio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import parse_address
from .errors import MusicFSError
from .redact import redact

if TYPE_CHECKING:
    from .chunk_cache import CacheStatistics
    from .fuse_ops import OperationsStatistics
    from .origins.registry import OriginStatistics
    from .pins import PinsStatistics
    from .readahead import ReadAheadStatistics
    from .reader import ReaderStatistics

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the trio loop to hand over the records
CACHE_STATES = ("normal", "unstable", "down")
ORIGIN_STATES = ("unknown", "healthy", "unhealthy")
# registry.result_of's results: each origin always has a series for each (0 until it happens)
ORIGIN_RESULTS = ("ok", "not_found", "permission", "changed", "timeout", "short_read", "exhausted", "transient",
                  "fatal")


class MetricsUnavailable(MusicFSError):
    """The metrics address cannot be served (taken, not this machine's): the daemon does not start (exit 1)."""


@dataclass(frozen=True)
class MetricsRecords:
    """One scrape's statistics records, all taken at once on the trio loop. None: that part is not there (yet)."""

    origins: tuple[OriginStatistics, ...] = ()
    cache: CacheStatistics | None = None
    reader: ReaderStatistics | None = None
    fuse: OperationsStatistics | None = None
    readahead: ReadAheadStatistics | None = None  # None while read-ahead is off or not wired: no readahead series
    pins: PinsStatistics | None = None  # pin progress


RecordsSource = Callable[[], "MetricsRecords | None"]


class LoopTimeout(Exception):
    """The trio loop did not hand over the records within SCRAPE_TIMEOUT."""


def on_loop(token: trio.lowlevel.TrioToken, records: Callable[[], MetricsRecords],
            timeout: float = SCRAPE_TIMEOUT) -> RecordsSource:
    """A RecordsSource for another thread: `records()` runs on the loop of `token`; None once that loop ended.

    Unlike trio.from_thread.run_sync, the wait is bounded: a loop that is stuck must not hold a scrape forever
    (the process metrics are what tells why it is stuck)."""
    def source() -> MetricsRecords | None:
        done = threading.Event()
        box: dict = {}

        def call() -> None:
            try:
                box["value"] = records()
            except BaseException as exc:  # handed to the scraping thread, never raised on the loop
                box["error"] = exc
            finally:
                done.set()

        try:
            token.run_sync_soon(call)
        except trio.RunFinishedError:
            return None
        if not done.wait(timeout):
            raise LoopTimeout(f"the daemon's loop did not answer within {timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    return source


# -- records -> metric families -----------------------------------------------------------------------------------
def origin_families(origins: Iterable[OriginStatistics]) -> list[Metric]:
    nbytes = CounterMetricFamily("musicfs_origin_bytes", "Bytes fetched from the origin (chunks read)",
                                 labels=["origin"])
    requests = CounterMetricFamily("musicfs_origin_requests", "Read requests sent to the origin, by result "
                                   "(each with its retries)", labels=["origin", "result"])
    up = GaugeMetricFamily("musicfs_origin_up", "1 while the origin is healthy, 0 while unhealthy or not yet "
                           "checked", labels=["origin"])
    state = GaugeMetricFamily("musicfs_origin_state", "1 for the origin's current health state",
                              labels=["origin", "state"])
    active = GaugeMetricFamily("musicfs_origin_active", "1 for the origin reads go to first right now",
                               labels=["origin"])
    retries = CounterMetricFamily("musicfs_origin_retries", "Retries of read requests on the origin",
                                  labels=["origin"])
    failovers = CounterMetricFamily("musicfs_origin_failovers", "Reads that gave up on the origin and went to "
                                    "the next one", labels=["origin"])
    for o in origins:
        name = redact(o.name)  # never a credential in a label
        nbytes.add_metric([name], o.bytes_fetched)
        for result in (*ORIGIN_RESULTS, *sorted(set(o.results) - set(ORIGIN_RESULTS))):
            requests.add_metric([name, result], o.results.get(result, 0))
        up.add_metric([name], 1 if o.state == "healthy" else 0)
        for s in (*ORIGIN_STATES, *([o.state] if o.state not in ORIGIN_STATES else [])):
            state.add_metric([name, s], 1 if o.state == s else 0)
        active.add_metric([name], 1 if o.active else 0)
        retries.add_metric([name], o.retries)
        failovers.add_metric([name], o.failovers)
    return [nbytes, requests, up, state, active, retries, failovers]


def cache_families(cache: CacheStatistics | None, reader: ReaderStatistics | None) -> list[Metric]:
    out: list[Metric] = []
    if reader is not None:
        hits = CounterMetricFamily("musicfs_cache_hits", "Chunks served without the origins, by tier: memory "
                                   "(verified chunks in RAM) or disk (the chunk cache)", labels=["tier"])
        hits.add_metric(["memory"], reader.memory_hits)
        hits.add_metric(["disk"], reader.cache_hits)
        out += [hits,
                CounterMetricFamily("musicfs_cache_misses", "Chunks that had to be fetched from the origins",
                                    value=reader.origin_fetches),
                GaugeMetricFamily("musicfs_memory_cache_bytes", "Bytes of verified chunks kept in RAM",
                                  value=reader.memory_bytes)]
    if cache is not None:
        state = GaugeMetricFamily("musicfs_cache_state", "1 for the cache's current state: normal, unstable or "
                                  "down (bypassed: reads go to the origins)", labels=["state"])
        for s in (*CACHE_STATES, *([cache.state] if cache.state not in CACHE_STATES else [])):
            state.add_metric([s], 1 if cache.state == s else 0)
        out += [
            GaugeMetricFamily("musicfs_cache_bytes", "Bytes of chunks in the disk cache", value=cache.used_bytes),
            GaugeMetricFamily("musicfs_cache_quota_bytes", "The disk cache's quota (cache_size)",
                              value=cache.quota_bytes),
            GaugeMetricFamily("musicfs_cache_chunks", "Chunks in the disk cache", value=cache.chunks),
            GaugeMetricFamily("musicfs_cache_pinned_chunks", "Chunks pinned against eviction (open files)",
                              value=cache.pinned),
            GaugeMetricFamily("musicfs_cache_protected_chunks", "Chunks evicted only after every other unpinned "
                              "one (the track being played, the next track's head)", value=cache.protected),
            GaugeMetricFamily("musicfs_cache_quarantine_bytes", "Bytes of bad chunks kept in quarantine",
                              value=cache.quarantine_bytes),
            state,
            CounterMetricFamily("musicfs_cache_bad_chunks", "Chunks found corrupt or missing on a read",
                                value=cache.bad_chunks),
            CounterMetricFamily("musicfs_cache_passthrough_reads", "Chunks not stored because the cache was "
                                "bypassed (unstable or down)", value=cache.passthrough_reads),
            CounterMetricFamily("musicfs_cache_uncached_reads", "Chunks that could not be stored (disk full, "
                                "EMFILE, a failing disk)", value=cache.uncached_reads),
        ]
    return out


def fuse_families(fuse: OperationsStatistics | None) -> list[Metric]:
    if fuse is None:
        return []
    errors = CounterMetricFamily("musicfs_fuse_errors", "FUSE requests that failed or timed out, by handler",
                                 labels=["handler"])
    for handler, n in sorted(fuse.errors_by_handler.items()):
        errors.add_metric([handler], n)
    out: list[Metric] = [
        CounterMetricFamily("musicfs_fuse_requests", "FUSE requests served", value=fuse.requests),
        errors,
        GaugeMetricFamily("musicfs_open_files", "File handles the kernel holds", value=fuse.open_files),
    ]
    hist = fuse.read_seconds
    if hist is not None:
        read = HistogramMetricFamily("musicfs_read_seconds", "Latency of FUSE read requests (answered or failed)")
        read.add_metric([], [(_le(bound), n) for bound, n in hist.cumulative()], sum_value=hist.sum_s)
        out.append(read)
    return out


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def readahead_families(ra: ReadAheadStatistics | None) -> list[Metric]:
    """Absent (no series at all) while read-ahead is off or not wired into the reader."""
    if ra is None:
        return []
    jobs = CounterMetricFamily("musicfs_readahead_jobs", "Chunks queued ahead of readers, by what became of "
                               "them: started, dropped (the reader seeked or closed first), failed",
                               labels=["event"])
    jobs.add_metric(["started"], ra.started)
    jobs.add_metric(["dropped"], ra.dropped)
    jobs.add_metric(["failed"], ra.failed)
    return [
        GaugeMetricFamily("musicfs_readahead_bytes", "Bytes of chunks being fetched ahead of readers right now",
                          value=ra.inflight_bytes),
        GaugeMetricFamily("musicfs_readahead_budget_bytes", "Bytes of chunks that may be in flight ahead "
                          "(config readahead)", value=ra.budget_bytes),
        GaugeMetricFamily("musicfs_readahead_streams", "Open files being read ahead", value=ra.streams),
        jobs,
    ]


def pin_families(pins: PinsStatistics | None) -> list[Metric]:
    """Pin progress (`musicfs pin`): what the pins want kept and how much of it is cached."""
    if pins is None:
        return []
    wanted = GaugeMetricFamily("musicfs_pin_bytes", "Bytes of pinned tracks, by whether they are cached yet",
                               labels=["state"])
    wanted.add_metric(["wanted"], pins.bytes)
    wanted.add_metric(["cached"], pins.cached_bytes)
    return [
        wanted,
        GaugeMetricFamily("musicfs_pinned_files", "Tracks the pins keep whole in the cache", value=pins.files),
        GaugeMetricFamily("musicfs_pins", "Pins (`musicfs pin` paths)", value=len(pins.pins)),
        CounterMetricFamily("musicfs_pin_fetched_chunks", "Chunks the pin worker loaded since start",
                            value=pins.fetched_chunks),
        CounterMetricFamily("musicfs_pin_failures", "Failed chunk loads of the pin worker since start",
                            value=pins.failures),
    ]


def families(records: MetricsRecords) -> list[Metric]:
    return [*origin_families(records.origins), *cache_families(records.cache, records.reader),
            *fuse_families(records.fuse), *readahead_families(records.readahead), *pin_families(records.pins)]


class MusicFSCollector(Collector):
    """Reads a RecordsSource at each scrape; without one (not attached, or detached at stop) only `musicfs_up 0`."""

    def __init__(self, source: RecordsSource | None = None):
        self._lock = threading.Lock()
        self._source = source

    def attach(self, source: RecordsSource) -> None:
        with self._lock:
            self._source = source

    def detach(self) -> None:
        with self._lock:
            self._source = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            source = self._source
        records = None
        if source is not None:
            try:
                records = source()
            except Exception as exc:  # a scrape answers (process metrics, musicfs_up 0), never a traceback
                log.warning("metrics: could not read the statistics: %s", exc)
        yield GaugeMetricFamily("musicfs_up", "1 when this scrape read the daemon's statistics (0: starting, "
                                "stopping, or its loop did not answer)", value=1 if records is not None else 0)
        if records is not None:
            yield from families(records)


class MetricsServer:
    """The /metrics endpoint: a private registry with our collector and the process, platform and GC collectors."""

    def __init__(self, address: str):
        self.host, self.port = parse_address(address)
        self.registry = CollectorRegistry()
        self.collector = MusicFSCollector()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """Where it listens (the real port when 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._server.server_address[1] if self._server else self.port}"

    def start(self) -> None:
        """Bind and serve (prometheus_client's server thread). A taken or foreign address: MetricsUnavailable."""
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise MetricsUnavailable(f"metrics: cannot listen on {self.address}: {exc.strerror or exc}") from None
        log.info("metrics: serving http://%s/metrics", self.address)

    def stop(self) -> None:
        """Stop serving and join the server thread (a scrape in flight finishes first; it waits at most
        SCRAPE_TIMEOUT for a loop that is gone: on_loop returns None then)."""
        self.collector.detach()
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None
