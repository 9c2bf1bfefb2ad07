"""pyfuse3 Operations over the VirtualTree and the FileReader. Read-only; never hangs, never raises."""

from __future__ import annotations

import bisect
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections import Counter
from dataclasses import dataclass

import pyfuse3
import trio

from ..library import ROOT_INO, Node, VirtualTree
from ..read import FileReader
from ..shared import HistogramStatistics, LatencyHistogram, MusicFSError, points

log = logging.getLogger(__name__)

ENTRY_TIMEOUT = 300.0
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444


def _to_errno(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        return errno.EIO
    if isinstance(exc, MusicFSError):
        return exc.errno
    return errno.EIO


def handler(fn):
    """Every FUSE handler: FUSEError passes, anything else is logged once and becomes an errno."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            await points.hit_async(points.FUSE_HANDLER)
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except trio.TooSlowError:
            self.errors[fn.__name__] += 1
            log.error("fuse %s%r: timed out; answering EIO", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:
            self.errors[fn.__name__] += 1
            code = _to_errno(exc)
            if isinstance(exc, MusicFSError):
                log.error("fuse %s: %s", fn.__name__, exc)
            else:
                log.exception("fuse %s%r failed unexpectedly; answering %s", fn.__name__, args[:2], errno.errorcode[code])
            raise pyfuse3.FUSEError(code) from None

    return wrapper


def read_only(name: str):
    """A handler for a write-type request: the mount is read-only, always."""

    async def refuse(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    refuse.__name__ = name
    return refuse


@dataclass(frozen=True)
class OperationsStatistics:
    """`MusicOperations.statistics()`: the FUSE requests served."""

    requests: int
    errors: int  # requests that failed or timed out (an ENOENT lookup or an EROFS write is an answer, not one)
    errors_by_handler: dict[str, int]
    open_files: int  # file handles the kernel holds
    open_dirs: int  # directory streams the kernel holds
    known_inodes: int  # inodes the kernel holds a lookup reference to
    retired_inodes: int  # of those, inodes no longer in the tree (answered until forgotten)
    read_seconds: HistogramStatistics | None = None  # latency of read requests, answered or failed (metrics)


class MusicOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, tree: VirtualTree, reader: FileReader):
        super().__init__()
        self.tree = tree
        self.reader = reader
        self.lookups: Counter[int] = Counter()
        self.retired: dict[int, Node] = {}
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self._open_files = 0
        self._dir_handles: dict[int, list[tuple[bytes, int]]] = {}
        self._next_dir = itertools.count(1)
        self.uid, self.gid = os.getuid(), os.getgid()
        self.read_latency = LatencyHistogram()

    # -- tree swap ----------------------------------------------------------------
    def swap_tree(self, new: VirtualTree) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Serve `new` from now on. Returns the (parent, name) entries the kernel should forget, and the file
        inodes `new` no longer has (their pages are the old version's: retired from the page cache).

        A file whose content changed has a new inode number in `new` (tree.file_key), so its old inode is
        retired like a removed one: the kernel's page cache of the old version stays with the old inode,
        which only handles opened before the change still reach.
        """
        old, self.tree = self.tree, new
        stale, gone = [], []
        for ino, node in old.nodes.items():
            fresh = new.get(ino)
            moved = fresh is None or fresh.name != node.name or fresh.parent != node.parent
            if moved and ino != ROOT_INO:
                stale.append((node.parent, node.name))
                if fresh is None and not node.is_dir:
                    gone.append(ino)
                if fresh is None and self.lookups[ino] > 0:
                    self.retired[ino] = node  # the kernel still holds it: answer until forget
        return stale, gone

    def _node(self, ino: int) -> Node:
        node = self.tree.get(ino) or self.retired.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ENTRY_TIMEOUT
        a.st_mode = DIR_MODE if node.is_dir else FILE_MODE
        a.st_nlink = 2 if node.is_dir else 1
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_size = node.size
        a.st_blksize = 128 << 10
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        return a

    def _ref(self, node: Node) -> pyfuse3.EntryAttributes:
        self.lookups[node.ino] += 1
        return self._attr(node)

    # -- lookups ---------------------------------------------------------------------
    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        self.requests += 1
        node = self.tree.lookup(parent_inode, name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._ref(node)

    @handler
    async def getattr(self, inode, ctx=None):
        self.requests += 1
        return self._attr(self._node(inode))

    async def forget(self, inode_list):
        # Never raises: a failing forget would take pyfuse3.main down.
        for ino, n in inode_list:
            left = self.lookups[ino] - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                self.retired.pop(ino, None)

    # -- directories ---------------------------------------------------------------------
    @handler
    async def opendir(self, inode, ctx):
        self.requests += 1
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._next_dir)
        self._dir_handles[fh] = self.tree.listings.get(inode, [])  # one snapshot per directory stream
        return fh

    @handler
    async def readdir(self, fh, start_id, token):
        self.requests += 1
        listing = self._dir_handles.get(fh, [])
        for i in range(start_id, len(listing)):
            name, ino = listing[i]
            node = self.tree.get(ino)
            if node is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(node), i + 1):
                return
            self.lookups[ino] += 1  # readdirplus replies add a kernel reference

    @handler
    async def releasedir(self, fh):
        self._dir_handles.pop(fh, None)

    # -- files --------------------------------------------------------------------------------
    @handler
    async def open(self, inode, flags, ctx):
        self.requests += 1
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        if node.is_dir or node.file is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = await self.reader.open(node.file, functools.partial(self._next_track, node), inode=inode)
        self._open_files += 1
        # A version that may still change unseen (racy, origins/base.py) is read past the page cache: its bytes
        # serve this handle only, and the kernel never keeps them for a later open.
        settled = self.reader.settled(fh)
        return pyfuse3.FileInfo(fh=fh, keep_cache=settled, direct_io=not settled)

    def _next_track(self, node: Node):
        """The track after `node` in its album folder (tree order), in the tree served now; None at the end."""
        listing = self.tree.listings.get(node.parent, [])
        names = [name for name, _ in listing]
        at = bisect.bisect_right(names, node.name)
        for _, ino in listing[at:]:
            after = self.tree.get(ino)
            if after is not None and after.file is not None and after.file.kind == "track":
                return after.file
        return None

    @handler
    async def read(self, fh, off, size):
        self.requests += 1
        started = time.perf_counter()
        try:
            await points.hit_async(points.FUSE_READ)
            return await self.reader.read_buffer(fh, off, size)
        finally:
            self.read_latency.observe(time.perf_counter() - started)

    @handler
    async def release(self, fh):
        self._open_files -= 1
        self.reader.release(fh)
        await self.reader.after_release()

    def statistics(self) -> OperationsStatistics:
        return OperationsStatistics(requests=self.requests, errors=sum(self.errors.values()),
                                    errors_by_handler=dict(self.errors), open_files=self._open_files,
                                    open_dirs=len(self._dir_handles), known_inodes=len(self.lookups),
                                    retired_inodes=len(self.retired), read_seconds=self.read_latency.statistics())

    @handler
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = self.tree.total_size // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree.nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @handler
    async def access(self, inode, mode, ctx):
        self._node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True


#: every request that would write answers EROFS
WRITE_REQUESTS = ("setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "write", "create",
                  "setxattr", "removexattr")
for _name in WRITE_REQUESTS:
    setattr(MusicOperations, _name, read_only(_name))
del _name
