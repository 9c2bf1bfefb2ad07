"""Prometheus metrics (`musicfs mount --metrics HOST:PORT`, config `metrics`): text format at /metrics.

Nothing is counted twice: at each scrape, `MusicFSCollector` reads the components' frozen statistics records
(OriginRegistry, ChunkCache, FileReader, MusicOperations, ReadAhead: docs/architecture.md) and turns them into
metric families. The records are taken on the trio loop (`on_loop`): the HTTP server's thread never touches a
component itself, it waits (bounded) for the loop to hand it a `MetricsRecords`. While the daemon is starting,
stopping or its loop does not answer, a scrape still serves the process metrics and `musicfs_up 0`.

Lifetime: `MetricsServer.start` binds, before the library is opened (a taken port refuses the start, exit 1), and
serves from a bounded pool: one accepting thread and MAX_CONNECTIONS handler threads. A connection is accepted
only when a handler is free (the others wait in the kernel's backlog, costing this process no descriptor), and
each gets REQUEST_TIMEOUT in all to send its request: thousands of idle connections cost at most
MAX_CONNECTIONS descriptors and threads, never the mount's. `stop` closes the socket and joins the threads. Both
are called by daemon.run, which owns the server for the daemon's life. Label values that name an origin are
redacted. docs/metrics.md describes every metric.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..shared import MusicFSError, is_loopback, parse_address, redact

if TYPE_CHECKING:
    from ..cache import CacheStatistics
    from ..library import PinsStatistics, PublishedStatistics
    from ..origins import OriginStatistics
    from ..read import PagePushStatistics, ReadAheadStatistics, ReaderStatistics
    from .fuse_ops import OperationsStatistics

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the trio loop to hand over the records
MAX_CONNECTIONS = 4  # connections served at once (a thread and a descriptor each); more wait in the backlog
REQUEST_TIMEOUT = 5.0  # seconds a connection has, in all, to send its request line and headers
MAX_REQUEST = 8192  # bytes of request line and headers read at most
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
    pages: PagePushStatistics | None = None  # None while page pushes are off: no page series
    pins: PinsStatistics | None = None  # pin progress
    published: PublishedStatistics | None = None  # the published catalog this library's catalog came from


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
    stuck = GaugeMetricFamily("musicfs_origin_stuck_calls", "Calls to the origin still running past their read's "
                              "deadline (a hung file or share); their threads are left to finish", labels=["origin"])
    sessions = GaugeMetricFamily("musicfs_origin_sessions", "Connections the origin keeps open itself (SFTP: ssh "
                                 "sessions), live now", labels=["origin"])
    started = CounterMetricFamily("musicfs_origin_sessions_started", "Connections the origin started (SFTP: ssh "
                                  "processes)", labels=["origin"])
    replaced = CounterMetricFamily("musicfs_origin_sessions_replaced", "Connections found dead and started again",
                                   labels=["origin"])
    waiting = GaugeMetricFamily("musicfs_origin_requests_waiting", "Requests sent on the origin's connections and "
                                "not answered yet", labels=["origin"])
    for o in origins:
        name = redact(o.name)  # never a credential in a label
        if o.sessions is not None:  # only origins that keep connections of their own
            sessions.add_metric([name], o.sessions.sessions)
            started.add_metric([name], o.sessions.started)
            replaced.add_metric([name], o.sessions.replaced)
            waiting.add_metric([name], o.sessions.requests_waiting)
        nbytes.add_metric([name], o.bytes_fetched)
        for result in (*ORIGIN_RESULTS, *sorted(set(o.results) - set(ORIGIN_RESULTS))):
            requests.add_metric([name, result], o.results.get(result, 0))
        up.add_metric([name], 1 if o.state == "healthy" else 0)
        for s in (*ORIGIN_STATES, *([o.state] if o.state not in ORIGIN_STATES else [])):
            state.add_metric([name, s], 1 if o.state == s else 0)
        active.add_metric([name], 1 if o.active else 0)
        retries.add_metric([name], o.retries)
        failovers.add_metric([name], o.failovers)
        stuck.add_metric([name], o.stuck)
    return [nbytes, requests, up, state, active, retries, failovers, stuck, sessions, started, replaced, waiting]


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
                                  value=reader.memory_bytes),
                CounterMetricFamily("musicfs_racy_fetches", "Fetches of file versions that could still change "
                                    "unseen (written within their source's timestamp resolution): served, never "
                                    "kept", value=reader.racy_fetches)]
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


def page_families(pages: PagePushStatistics | None) -> list[Metric]:
    """Chunks pushed into the kernel's page cache (pages.py); absent while pushing is off."""
    if pages is None:
        return []
    pushes = CounterMetricFamily("musicfs_page_pushes", "Verified chunks offered to the kernel's page cache, by what "
                                 "became of them: pushed, dropped_full (queue full), dropped_stale (their inode was "
                                 "released or retired first), failed (the kernel refused)", labels=["result"])
    for result, value in (("pushed", pages.pushes), ("dropped_full", pages.dropped_full),
                          ("dropped_stale", pages.dropped_stale), ("failed", pages.failed)):
        pushes.add_metric([result], value)
    failed = CounterMetricFamily("musicfs_page_push_failures", "Pushes the kernel refused, by errno",
                                 labels=["errno"])
    for name, value in sorted(pages.failed_by_errno.items()):
        failed.add_metric([name], value)
    return [
        pushes, failed,
        CounterMetricFamily("musicfs_page_pushed_bytes", "Bytes stored into the kernel's page cache",
                            value=pages.pushed_bytes),
        GaugeMetricFamily("musicfs_page_push_queued_bytes", "Bytes waiting to be pushed", value=pages.queued_bytes),
        CounterMetricFamily("musicfs_page_retired_inodes", "Inodes retired from the page cache by rescans",
                            value=pages.retired),
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


def published_families(published: PublishedStatistics | None) -> list[Metric]:
    """Where a catalog came from when a published snapshot made it (`musicfs publish`), and its revalidation."""
    if published is None:
        return []
    info = GaugeMetricFamily("musicfs_published_catalog_info", "The published catalog snapshot this library's catalog "
                             "came from (1)", labels=["snapshot", "origin"])
    info.add_metric([published.snapshot, redact(published.origin)], 1)
    return [info,
            GaugeMetricFamily("musicfs_published_catalog_files", "Files the published snapshot listed",
                              value=published.files),
            GaugeMetricFamily("musicfs_published_catalog_revalidated", "1 once the first rescan after it has "
                              "revalidated the snapshot", value=int(published.revalidated)),
            GaugeMetricFamily("musicfs_published_catalog_reread_files", "Files whose tags that revalidation read "
                              "again (new or changed since the publish)", value=published.reread)]


def families(records: MetricsRecords) -> list[Metric]:
    return [*origin_families(records.origins), *cache_families(records.cache, records.reader),
            *fuse_families(records.fuse), *readahead_families(records.readahead), *page_families(records.pages),
            *pin_families(records.pins), *published_families(records.published)]


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
    """The /metrics endpoint: a private registry with our collector and the process, platform and GC collectors,
    served by a bounded pool (module doc)."""

    def __init__(self, address: str):
        self.host, self.port = parse_address(address)
        self.registry = CollectorRegistry()
        self.collector = MusicFSCollector()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._stopping = threading.Event()

    @property
    def address(self) -> str:
        """Where it listens (the real port when 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._sock.getsockname()[1] if self._sock else self.port}"

    def start(self) -> None:
        """Bind and serve. A taken or foreign address: MetricsUnavailable."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(16)
            sock.settimeout(0.2)  # accept() wakes to see `stop`
        except OSError as exc:
            sock.close()
            raise MetricsUnavailable(f"metrics: cannot listen on {self.address}: {exc.strerror or exc}") from None
        self._sock = sock
        self._pool = ThreadPoolExecutor(MAX_CONNECTIONS, thread_name_prefix="metrics")
        self._thread = threading.Thread(target=self._accept_loop, name="metrics-accept", daemon=True)
        self._thread.start()
        log.info("metrics: serving http://%s/metrics", self.address)
        if not is_loopback(self.host):
            log.warning("metrics: %s is reachable from other machines (metrics_public = true): anyone who can "
                        "reach it reads this daemon's figures and origin names", self.address)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue  # every handler busy: connections wait in the backlog, not in our descriptors
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError) as exc:
                self._slots.release()
                if isinstance(exc, OSError) and not isinstance(exc, socket.timeout) and not self._stopping.is_set():
                    log.debug("metrics: accept failed: %s", exc)  # EMFILE and the like: the next try may work
                    self._stopping.wait(0.1)
                continue
            try:
                self._pool.submit(self._serve, conn)
            except RuntimeError:  # the pool is shut down: stopping
                conn.close()
                self._slots.release()

    def _serve(self, conn: socket.socket) -> None:
        """One request, within REQUEST_TIMEOUT; the connection is closed after the answer."""
        try:
            with conn:
                request = self._read_request(conn)
                if request is None:
                    return  # nothing within REQUEST_TIMEOUT: closed
                method, _, rest = request.partition(b" ")
                path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
                if method != b"GET":
                    status, body, ctype = "405 Method Not Allowed", b"only GET\n", "text/plain"
                elif path not in (b"/metrics", b"/"):
                    status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
                else:
                    status, body, ctype = "200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST
                conn.settimeout(REQUEST_TIMEOUT)
                conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                             "Connection: close\r\n\r\n".encode() + body)
        except OSError as exc:
            log.debug("metrics: a connection failed: %s", exc)
        except Exception:  # a scrape must never take the server down
            log.exception("metrics: answering a scrape failed")
        finally:
            self._slots.release()

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        """The request line, once the headers are in; None if they do not come within REQUEST_TIMEOUT."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            conn.settimeout(left)
            try:
                part = conn.recv(MAX_REQUEST - len(data))
            except socket.timeout:
                return None
            if not part:
                return None
            data += part
        return data.split(b"\n", 1)[0].rstrip(b"\r")

    def stop(self) -> None:
        """Stop serving: close the socket, let handlers in flight finish (each within its timeouts; a scrape
        waits at most SCRAPE_TIMEOUT for a loop that is gone: on_loop returns None then) and join the threads."""
        self.collector.detach()
        if self._sock is None:
            return
        self._stopping.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._sock.close()
        self._sock = self._thread = self._pool = None
