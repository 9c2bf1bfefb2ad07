"""The mount daemon: open the library, scan if new, mount, serve, rescan, stop cleanly on a signal."""

from __future__ import annotations

import logging
import os
import signal

import pyfuse3
import trio

from . import failpoints, points
from .config import Config
from .errors import ConfigError, OriginError
from .failpoints import fail_point
from .fuse_ops import MusicOperations
from .library import Library
from .mounts import prepare_mountpoint, unmount
from .notify import Notifier
from .reader import FileReader
from .supervisor import TaskSupervisor
from .tree import VirtualTree

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0


def fuse_options(cfg: Config) -> set[str]:
    # Our own option set replaces pyfuse3's defaults, so default_permissions is added back.
    opts = set(pyfuse3.default_options) | {"fsname=musicfs", "subtype=musicfs", "ro", "default_permissions"}
    if cfg.allow_other:
        opts.add("allow_other")
    return opts


def _human(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


class Daemon:
    def __init__(self, cfg: Config, lib: Library, notifier: Notifier):
        self.cfg = cfg
        self.lib = lib
        self.notifier = notifier
        self.ops: MusicOperations | None = None
        self.stopping = False
        self._wake_rescan = trio.Event()

    def status_line(self) -> str:
        used, _ = self.lib.cas.usage()
        tracks = self.ops.tree.track_count if self.ops else 0
        return f"{tracks} tracks, cache {_human(used)}/{_human(self.cfg.cache_size)}, origins {len(self.cfg.sources)}"

    # -- start ---------------------------------------------------------------------
    async def prepare(self) -> VirtualTree:
        """Scan first if this library was never scanned; build the tree from the catalog."""
        if self.lib.ever_scanned:
            self._wake_rescan.set()  # serve the persisted catalog now, rescan in the background
        else:
            log.info("first mount of %s: scanning before mounting", ", ".join(self.cfg.sources))
            self.notifier.extend_timeout(60, "scanning the library")
            on_progress = lambda done, total: self.notifier.extend_timeout(60, f"scanning: {done}/{total} files")  # noqa: E731
            await trio.to_thread.run_sync(self.lib.scan, on_progress)
        tree = await trio.to_thread.run_sync(self.lib.build_tree)
        if self.lib.index.count() != tree.track_count:
            await trio.to_thread.run_sync(self.lib.reindex, tree)
        return tree

    async def serve(self) -> None:
        tree = await self.prepare()
        reader = FileReader(self.lib.catalog, self.lib.cas, self.lib.registry, chunk_size=self.cfg.chunk_size,
                            memory_cache=self.cfg.memory_cache, read_timeout=self.cfg.read_timeout)
        self.ops = MusicOperations(tree, reader)
        prepare_mountpoint(self.cfg.mountpoint)
        pyfuse3.init(self.ops, self.cfg.mountpoint, fuse_options(self.cfg))
        try:
            async with TaskSupervisor() as sup:
                sup.spawn_supervised("fuse", lambda: self._fuse_main(sup))
                sup.spawn_supervised("signals", self._signals)
                sup.spawn_supervised("ready", self._announce_ready)
                sup.spawn_critical("rescan", self._rescan_loop)
        finally:
            self.notifier.stopping()
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", self.cfg.mountpoint)

    async def _fuse_main(self, sup: TaskSupervisor) -> None:
        try:
            await pyfuse3.main()
        finally:
            sup.cancel_all()  # FUSE is gone: nothing else has a reason to run

    async def _announce_ready(self) -> None:
        """READY=1 only once the mount answers a real request."""
        with trio.fail_after(READY_TIMEOUT):
            await trio.to_thread.run_sync(os.listdir, self.cfg.mountpoint, abandon_on_cancel=True)
        log.info("mounted %s on %s: %s", ", ".join(self.cfg.sources), self.cfg.mountpoint, self.status_line())
        self.notifier.ready(self.status_line())

    # -- signals ----------------------------------------------------------------------
    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: rescanning the origins")
                    self._wake_rescan.set()
                elif not self.stopping:
                    log.info("%s: unmounting and stopping", signal.Signals(signum).name)
                    self.stopping = True
                    self.notifier.stopping()
                    pyfuse3.terminate()
                else:
                    log.warning("second %s: exiting at once", signal.Signals(signum).name)
                    unmount(self.cfg.mountpoint, lazy=True)
                    os._exit(128 + signum)

    # -- rescans ------------------------------------------------------------------------
    async def _rescan_loop(self) -> None:
        """Rescan at the configured interval (and on SIGHUP); swap in a new tree when something changed."""
        while True:
            with trio.move_on_after(self.cfg.rescan_interval):
                await self._wake_rescan.wait()
            self._wake_rescan = trio.Event()
            await self.rescan()

    async def rescan(self) -> None:
        try:
            result = await trio.to_thread.run_sync(self.lib.scan)
        except OriginError as exc:
            log.warning("rescan skipped: %s", exc)
            return
        if not result.touched:
            return
        tree = await trio.to_thread.run_sync(self.lib.build_tree)
        fail_point(points.TREE_SWAP)
        old = self.ops.tree
        stale = self.ops.swap_tree(tree)
        for parent, name in stale:
            pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        for ino in self.ops.changed_inodes(old):
            await trio.to_thread.run_sync(_invalidate_inode, ino)
        await trio.to_thread.run_sync(self.lib.reindex, tree)
        self.notifier.status(self.status_line())


def _invalidate_inode(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino)
    except OSError:
        pass  # the kernel never saw it


async def _main(cfg: Config, notifier: Notifier) -> None:
    lib = await trio.to_thread.run_sync(Library.open, cfg)
    try:
        await Daemon(cfg, lib, notifier).serve()
    finally:
        await trio.to_thread.run_sync(lib.close)


def run(cfg: Config) -> int:
    try:
        failpoints.setup_from_env()  # lets tests arm a child daemon through FAILPOINTS
    except ValueError as exc:
        raise ConfigError("FAILPOINTS", str(exc)) from exc
    notifier = Notifier()
    try:
        trio.run(_main, cfg, notifier)
    except* KeyboardInterrupt:
        pass  # SIGINT before the signal receiver existed: nothing is mounted yet
    finally:
        notifier.close()
    return 0
