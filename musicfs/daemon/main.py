"""The mount daemon: open the library, scan if new, mount, serve, rescan, and stop in order.

Shutdown order (row 2.3): stop FUSE intake, drain in-flight requests (bounded by drain_timeout),
unmount, stop background tasks and wait for them (rescan, watchdog, status), commit the index, close catalog and
cache, STOPPING=1. A second signal exits at once after a lazy unmount; a stop that overruns its
bound does the same.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time
from dataclasses import asdict

import psutil
import pyfuse3
import trio

from .. import __version__, failpoints
from ..library import Library, PinSet, ScanCancelled
from ..origins import OriginStatistics
from ..shared import (
    Config,
    ConfigError,
    EmptyLibrary,
    LibraryLock,
    MusicFSError,
    OriginError,
    cap_arenas,
    flush_summaries,
    forget_folders,
    fsname,
    holds_nothing,
    human_size,
    points,
    private_state,
    redact_all,
    trim_heap,
)
from . import guard
from .build import Services, build
from .control import serve_status, write_state_file
from .fuse_ops import MusicOperations
from .metrics import MetricsRecords, MetricsServer, on_loop
from .mounts import prepare_mountpoint, remove_created, unmount
from .notify import Notifier, watchdog_interval
from .supervisor import TaskSupervisor
from .watchdog import watchdog

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
SCAN_EXTEND = 60.0  # seconds of start timeout asked of systemd at each progress step of a first scan
CLOSE_BOUND = 10.0  # beyond the drain, the rest of shutdown gets this long before a forced exit
BACKGROUND = ("ready", "rescan", "watchdog", "status", "health", "cache", "readahead", "pages", "pins", "memory")
MEMORY_CHECK = 2.0  # seconds between looks at whether reads went quiet (then freed memory goes back: memory.py)


def fuse_options(cfg: Config) -> set[str]:
    # Our own option set replaces pyfuse3's defaults, so default_permissions is added back.
    # the mount table names the state folder (statefiles.mounted_library): `musicfs pin PATH` finds any library
    opts = set(pyfuse3.default_options) | {f"fsname={fsname(cfg.state_dir)}", "subtype=musicfs", "ro",
                                           "default_permissions"}
    if cfg.allow_other:
        opts.add("allow_other")
    return opts


def process_figures() -> dict:
    """RSS, open descriptors and threads of this process (psutil); None each when /proc cannot be read
    (a daemon out of descriptors still answers its status)."""
    try:
        proc = psutil.Process()
        with proc.oneshot():
            return {"rss_bytes": proc.memory_info().rss, "open_fds": proc.num_fds(), "threads": proc.num_threads()}
    except (psutil.Error, OSError):
        return {"rss_bytes": None, "open_fds": None, "threads": None}


class Daemon:
    def __init__(self, cfg: Config, notifier: Notifier, metrics: MetricsServer | None = None):
        self.cfg = cfg
        self.notifier = notifier
        self.metrics = metrics  # serving already (run); fed from this loop's records while main runs
        self.lib: Library | None = None
        self.ops: MusicOperations | None = None
        self.services: Services | None = None  # cache, reader, origin health monitor (build.build)
        self.pins: PinSet | None = None  # pinned folders and tracks, kept whole in the cache (musicfs.library.pins)
        self.sup = TaskSupervisor()  # entered by _main before anything else runs
        self.stopping = threading.Event()  # also read by scan threads
        self.steps: list[str] = []  # shutdown steps, in the order they happened
        self.started = time.monotonic()
        self.mounted = False
        self.guard = None  # the watcher process (guard.py) while pages are pushed
        self.created_mountpoint: list[str] = []  # folders prepare_mountpoint made, removed again at stop
        self._tree_stale = False  # the catalog changed but the tree/index do not show it yet
        self.error: MusicFSError | None = None
        self._wake_rescan = trio.Event()
        self.ready_sent = trio.Event()  # READY=1 went out: deferred start-up work (the cache's) may begin
        self._fuse_scope = trio.CancelScope()

    # -- status ---------------------------------------------------------------------
    def status_line(self) -> str:
        cache = self.services.cache.statistics() if self.services else None
        tracks = self.ops.tree.track_count if self.ops else 0
        used = cache.used_bytes if cache else 0
        held = human_size(used) if cache is None or cache.loaded else "(loading)"
        line = f"{tracks} tracks, cache {held}/{human_size(self.cfg.cache_size)}, origins {len(self.cfg.sources)}"
        if self.lib is not None and self.lib.registry.offline:
            line += ", OFFLINE (cached files only)"
        if cache is not None and cache.state != "normal":
            line += f", cache {cache.state} (reading from origins)"
        degraded = self.sup.statistics().degraded
        return line + (f", degraded: {', '.join(degraded)}" if degraded else "")

    def snapshot(self) -> dict:
        """The document `musicfs status` shows: the components' statistics records (docs/architecture.md)."""
        tasks = self.sup.statistics()
        origins = self.lib.registry.statistics() if self.lib else tuple(OriginStatistics(s) for s in self.cfg.sources)
        return {
            "pid": os.getpid(), "version": __version__, "mountpoint": self.cfg.mountpoint,
            "sources": list(self.cfg.sources), "state": "stopping" if self.stopping.is_set() else "running",
            "offline": bool(self.lib and self.lib.registry.offline),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "tracks": self.ops.tree.track_count if self.ops else 0,
            "cache": asdict(self.services.cache.statistics()) if self.services else {"state": "normal"},
            "origins": [asdict(o) for o in origins],
            "process": process_figures(),
            "tasks": asdict(tasks)["tasks"], "degraded": list(tasks.degraded),
            "reader": asdict(self.services.reader.statistics()) if self.services else {},
            "fuse": self._fuse_figures(),
            "metrics": self.metrics.address if self.metrics else None,
            "pins": asdict(self.pins.statistics()) if self.pins else {},
            "published": asdict(self.lib.published_from) if self.lib and self.lib.published_from else None,
        }

    def _fuse_figures(self) -> dict:
        """OperationsStatistics for `musicfs status`: the read latency histogram as its count and total."""
        if not self.ops:
            return {}
        fuse = asdict(self.ops.statistics())
        hist = fuse.pop("read_seconds", None) or {}
        fuse["reads"], fuse["read_seconds_total"] = hist.get("count", 0), round(hist.get("sum_s", 0.0), 3)
        return fuse

    def metric_records(self) -> MetricsRecords:
        """The records a /metrics scrape turns into metrics (metrics.py); called on the trio loop (on_loop)."""
        services = self.services
        reader = services.reader.statistics() if services else None
        return MetricsRecords(
            origins=self.lib.registry.statistics() if self.lib else (),
            cache=services.cache.statistics() if services else None,
            reader=reader,
            fuse=self.ops.statistics() if self.ops else None,
            readahead=reader.readahead if reader is not None else None,
            pages=reader.pages if reader is not None else None,
            pins=self.pins.statistics() if self.pins else None,
            published=self.lib.published_from if self.lib else None)

    # -- signals ---------------------------------------------------------------------
    async def signals(self) -> None:
        """First SIGTERM/SIGINT: orderly stop. Second (or an overrun stop): lazy unmount, exit now."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            async for signum in received:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: rescanning the origins")
                    self._wake_rescan.set()
                elif not self.stopping.is_set():
                    log.info("%s: stopping", signal.Signals(signum).name)
                    self.begin_stop()
                    self.sup.spawn_supervised("stop-deadline", self._stop_deadline)
                else:
                    self._exit_now(f"second {signal.Signals(signum).name}", 128 + signum)

    def begin_stop(self) -> None:
        self.stopping.set()
        if self.mounted:
            pyfuse3.terminate()  # no new requests; main returns once in-flight ones finish
            self._fuse_scope.deadline = trio.current_time() + self.cfg.drain_timeout
            self.steps.append("fuse intake stopped")
        else:
            self.sup.cancel_all()  # still starting: nothing mounted, nothing to drain

    async def _stop_deadline(self) -> None:
        await trio.sleep(self.cfg.drain_timeout + CLOSE_BOUND)
        self._exit_now("shutdown overran its bound", 1)

    def _exit_now(self, why: str, code: int) -> None:
        log.warning("%s: detaching the mount and exiting at once", why)
        flush_summaries()  # os._exit skips atexit: counted log storms would be lost
        unmount(self.cfg.mountpoint, lazy=True)
        os._exit(code)

    # -- start -------------------------------------------------------------------------
    async def main(self) -> None:
        """The daemon's life; whatever ends it, every other task ends too."""
        if self.metrics is not None:
            self.metrics.collector.attach(on_loop(trio.lowlevel.current_trio_token(), self.metric_records))
        try:
            await self.run()
        except MusicFSError as exc:
            self.error = exc  # a clear message for the user, not a traceback
        finally:
            self.sup.cancel_all()

    async def run(self) -> None:
        self.lib = await trio.to_thread.run_sync(Library.open, self.cfg)
        try:
            tree = await self.prepare()
            if self.stopping.is_set():
                return
            self.services = build(self.cfg, self.lib, tree=lambda: self.ops.tree, on_file_changed=self._file_changed,
                                  on_origin_change=lambda: self.notifier.status(self.status_line()))
            self.ops = MusicOperations(tree, self.services.reader)
            self.pins = self.services.pins
            await self.pins.load()  # pinned chunks are pinned again before any read can evict them
            self.created_mountpoint = prepare_mountpoint(self.cfg.mountpoint)
            write_state_file(self.cfg.state_dir, {"mountpoint": self.cfg.mountpoint,
                                                  "sources": redact_all(list(self.cfg.sources)),
                                                  "cache_dir": self.cfg.cache_dir, "cache_size": self.cfg.cache_size})
            pyfuse3.init(self.ops, self.cfg.mountpoint, fuse_options(self.cfg))
            self.mounted = True
            # a kill during a page store would leave the mount hung: a watcher process aborts it then
            self.guard = guard.start(self.cfg.mountpoint) if self.services.reader.pages is not None else None
            try:
                self._spawn_background()
                with self._fuse_scope:
                    await pyfuse3.main()
                self._after_drain()
            finally:
                pyfuse3.close(unmount=True)
                guard.stop(self.guard)
                self.steps.append("unmounted")
                log.info("unmounted %s", self.cfg.mountpoint)
            await self._stop_background()
        finally:
            with trio.CancelScope(shield=True):  # closing must finish even when start-up was cancelled
                await self._close()
            remove_created(self.created_mountpoint)  # unmounted by now (or never mounted)

    async def prepare(self):
        """Scan first if this library was never scanned; build the tree from the catalog. A first scan that finds no
        audio refuses the mount (EmptyLibrary) unless allow_empty."""
        result = None
        if self.lib.ever_scanned:
            self._wake_rescan.set()  # serve the persisted catalog now, rescan in the background
        elif self.cfg.published_catalog and await self._adopt_published():
            self._wake_rescan.set()  # the published catalog now; the rescan revalidates it
        else:
            log.info("first mount of %s: scanning before mounting", ", ".join(self.cfg.sources))
            self.notifier.extend_timeout(SCAN_EXTEND, "scanning the library")
            on_progress = lambda done, total: self.notifier.extend_timeout(SCAN_EXTEND, f"scanning: {done}/{total} files")  # noqa: E731
            try:
                result = await trio.to_thread.run_sync(self.lib.scan, on_progress, self.stopping.is_set, True)
            except ScanCancelled as exc:
                log.info("%s", exc)
                return None
        tree = await trio.to_thread.run_sync(self.lib.build_tree)
        if result is not None and not tree.track_count and not self.cfg.allow_empty:
            listed = result.unchanged + result.not_audio + result.hidden + result.skipped
            raise EmptyLibrary(f"no audio files under {', '.join(self.cfg.sources)} ({listed} files listed: "
                               f"{result.not_audio} not audio, {result.hidden} hidden, {result.skipped} "
                               "unreadable); check the source, or mount it with --allow-empty")
        if self.lib.index.count() != tree.track_count:
            await trio.to_thread.run_sync(self.lib.reindex, tree)
        return tree

    async def _adopt_published(self) -> bool:
        """Whether a catalog published at an origin filled this new library's catalog (library/published.py)."""
        self.notifier.extend_timeout(SCAN_EXTEND, "fetching the published catalog")
        return await trio.to_thread.run_sync(self.lib.adopt_published) is not None

    def _spawn_background(self) -> None:
        self.sup.spawn_essential("health", self.services.health.run)
        # cache probes, index rebuild (6.3, 6.6); its start-up work (LRU load, reconciliation) after READY
        self.sup.spawn_essential("cache", lambda: self.services.cache.run(after=self.ready_sent))
        if self.services.reader.readahead is not None:
            self.sup.spawn_critical("readahead", self.services.reader.readahead.run)  # chunks ahead of readers
        if self.services.reader.pages is not None:
            self.sup.spawn_critical("pages", self.services.reader.pages.run)  # verified chunks into the page cache
        self.sup.spawn_supervised("ready", self._announce_ready)
        self.sup.spawn_critical("rescan", self._rescan_loop)
        self.sup.spawn_essential("status", lambda: serve_status(self.cfg.state_dir, self.snapshot, self.pins.handle))
        self.sup.spawn_critical("pins", self.pins.run)  # background fetches of pinned files, one chunk at a time
        self.sup.spawn_critical("memory", self._give_memory_back)
        interval = watchdog_interval()
        if interval:
            self.sup.spawn_supervised("watchdog", lambda: watchdog(self.notifier, self.cfg.mountpoint, interval))

    async def _give_memory_back(self) -> None:
        """Once FUSE requests stop for MEMORY_CHECK seconds after a busy spell, free heap goes back to the system
        (malloc_trim, in a thread: it walks every arena)."""
        seen = trimmed = self.ops.requests
        while True:
            await trio.sleep(MEMORY_CHECK)
            now = self.ops.requests
            if now == seen and now != trimmed:
                with trio.move_on_after(MEMORY_CHECK):
                    await trio.to_thread.run_sync(trim_heap, abandon_on_cancel=True)
                trimmed = now
            seen = now

    async def _announce_ready(self) -> None:
        """READY=1 only once the mount answers a real request."""
        with trio.fail_after(READY_TIMEOUT):
            await trio.to_thread.run_sync(os.listdir, self.cfg.mountpoint, abandon_on_cancel=True)
        log.info("mounted %s on %s: %s", ", ".join(self.cfg.sources), self.cfg.mountpoint, self.status_line())
        self.notifier.ready(self.status_line())
        self.ready_sent.set()

    # -- stop ---------------------------------------------------------------------------
    def _after_drain(self) -> None:
        if self._fuse_scope.cancelled_caught:
            log.warning("drain: requests still running after %.1fs; abandoning them", self.cfg.drain_timeout)
            self.steps.append("drain timed out")
        else:
            self.steps.append("in-flight requests drained")

    async def _stop_background(self) -> None:
        """Cancel the background tasks and wait for them (a rescan's thread sees `stopping` between files):
        none may still use the catalog or the cache when they are closed."""
        self.stopping.set()
        left = await self.sup.stop(BACKGROUND, timeout=CLOSE_BOUND / 2)
        if left:
            log.warning("shutdown: %s still running after %gs; closing anyway", ", ".join(left), CLOSE_BOUND / 2)
            self.steps.append(f"background tasks stopped ({', '.join(left)} still running)")
        else:
            self.steps.append("background tasks stopped")

    async def _close(self) -> None:
        """Catalog and cache are closed even when start-up failed half way (every index rebuild commits
        before it returns: the index has nothing pending to close)."""
        if self.metrics is not None:
            self.metrics.collector.detach()  # scrapes no longer read what is being closed
        await trio.to_thread.run_sync(self.lib.close)
        self.steps.append("catalog and cache closed")
        self.notifier.stopping()
        self.steps.append("STOPPING=1")
        log.info("shutdown: %s", " -> ".join(self.steps))

    # -- rescans -------------------------------------------------------------------------
    async def _rescan_loop(self) -> None:
        """Rescan at the configured interval (and on SIGHUP); swap in a new tree when something changed."""
        while True:
            with trio.move_on_after(self.cfg.rescan_interval):
                await self._wake_rescan.wait()
            self._wake_rescan = trio.Event()
            await self.rescan()

    def _file_changed(self, path: str) -> None:
        """A read found an origin file changed since the scan: rescan now, not at the next interval."""
        if not self._wake_rescan.is_set():
            log.info("origin file %s changed under a read: rescanning", path)
        self._wake_rescan.set()

    async def rescan(self) -> None:
        try:
            result = await trio.to_thread.run_sync(self.lib.scan, None, self.stopping.is_set)
        except (OriginError, ScanCancelled) as exc:
            log.warning("rescan skipped: %s", exc)
            return
        self._tree_stale |= result.touched
        if not self._tree_stale:
            return
        tree = await trio.to_thread.run_sync(self.lib.build_tree)
        points.hit(points.TREE_SWAP)
        stale, gone = self.ops.swap_tree(tree)
        for parent, name in stale:  # a changed file is a new inode: its name is stale
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        pages = self.ops.reader.pages
        if pages is not None:
            await pages.retire(gone)  # no page of an old version is pushed from now on
        if self.pins is not None:
            await self.pins.refresh(tree)  # a track added to a pinned album is pinned too
        await trio.to_thread.run_sync(self.lib.reindex, tree)
        self._tree_stale = False  # only now: a swap or reindex that failed is retried next time
        self.notifier.status(self.status_line())


async def _main(cfg: Config, notifier: Notifier, metrics: MetricsServer | None = None) -> None:
    daemon = Daemon(cfg, notifier, metrics)
    async with daemon.sup as sup:
        sup.spawn_supervised("signals", daemon.signals)  # first, so a signal during the first scan is ours
        sup.spawn_supervised("main", daemon.main)
    if daemon.error is not None:
        raise daemon.error
    if sup.task_status("main").state == "failed":
        raise DaemonFailed(f"stopped by an unexpected error: {sup.task_status('main').last_error}")


class DaemonFailed(MusicFSError):
    """The daemon could not start or serve; the log has the traceback."""


def raise_fd_limit() -> tuple[int, int]:
    """The soft limit of open descriptors raised to the hard one (1024 is many systems' soft default, too few for a
    cache under load); the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.info("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


def run(cfg: Config) -> int:
    try:
        failpoints.setup_from_env()  # lets tests arm a child daemon through FAILPOINTS
    except ValueError as exc:
        raise ConfigError("FAILPOINTS", str(exc)) from exc
    raise_fd_limit()
    cap_arenas()  # before the worker threads exist: each would take an arena of its own
    # one daemon per library: a second one is refused here, before it touches anything of the first's
    fresh = [d for d in (cfg.state_dir, cfg.cache_dir) if not os.path.exists(d)]
    lock = LibraryLock(cfg.state_dir).acquire({"mountpoint": cfg.mountpoint, "sources": redact_all(list(cfg.sources))})
    metrics = MetricsServer(cfg.metrics) if cfg.metrics else None
    try:
        if metrics is not None:
            metrics.start()  # a taken port refuses the start here, before the library is opened or mounted
        private_state(cfg.state_dir, cfg.cache_dir)  # before anything is created: folders 0700, files 0600
        notifier = Notifier()
        try:
            trio.run(_main, cfg, notifier, metrics)
        finally:
            notifier.close()
    except BaseException:
        if cfg.state_dir in fresh and holds_nothing(cfg.state_dir):
            forget_folders(fresh)  # a library never mounted leaves no trace of its failed first mount
        raise
    finally:
        if metrics is not None:
            metrics.stop()  # the server thread ends with the daemon
        lock.release()
    return 0
