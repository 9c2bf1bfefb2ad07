"""PagePusher: verified chunks of sequentially read files pushed into the kernel's page cache (FUSE notify_store).

The kernel asks a FUSE filesystem for at most 128 KiB a READ; a chunk pushed ahead of a sequential reader is
read from the page cache instead, with no request at all. What is pushed and how:
* only chunks the loader verified and kept: of a settled version (origins/base.py), never racy bytes;
* only to an inode bound to that version (`bind`, at open): a push for an inode unbound since (its last
  handle released) or retired (`retire`: the tree no longer has it, its file changed) is dropped. Pushes and
  retirements take one lock in the worker threads, so no page is stored after its inode's retirement. The
  pages already there stay with the old inode, which only handles opened before the change can still reach
  (a new open looks up the new inode): they read their own version, whole, even once the origin and the cache
  have moved on, and the kernel drops those pages when it forgets the inode. The trio thread never takes that
  lock: a store may wait for a page that a READ holds locked until the trio thread answers it;
* never past the end of the file (a store past it would extend the file's size in the kernel);
* from a worker thread, never the trio thread: the kernel locks a page while it stores it, and a READ of that
  page waiting on the trio thread would deadlock it. The read path only queues (bounded in bytes: when the
  queue is full the push is dropped and the kernel simply asks for those pages);
* a failed push (the kernel forgot the inode, out of memory, any errno) is counted and forgotten: the reads
  are served the normal way. ENOSYS (a kernel without notify_store) turns pushing off.
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import trio

from ..library import FileVersion

log = logging.getLogger(__name__)

PIECE = 1 << 20  # bytes per notify_store call
QUEUE_BYTES = 64 << 20  # bytes waiting to be pushed, at most


@dataclass(frozen=True)
class PagePushStatistics:
    """`PagePusher.statistics()`."""

    enabled: bool = True
    pushed_bytes: int = 0  # bytes stored into the page cache
    pushes: int = 0  # chunks pushed
    queued_bytes: int = 0  # bytes waiting for the worker
    dropped_full: int = 0  # chunks not pushed: the queue was full
    dropped_stale: int = 0  # chunks not pushed: their inode was released or retired before their turn
    failed: int = 0  # pushes the kernel refused (the reads were served the normal way)
    failed_by_errno: dict[str, int] = field(default_factory=dict)
    retired: int = 0  # inodes retired (their pages invalidated)


@dataclass(frozen=True)
class _Push:
    inode: int
    version: FileVersion
    offset: int
    data: bytes


class PagePusher:
    def __init__(self, store: Callable[[int, int, memoryview], None], *,
                 queue_bytes: int = QUEUE_BYTES, piece: int = PIECE, threads: int = 1):
        """`store(inode, offset, data)`: the kernel's (pyfuse3.notify_store), called in worker threads only."""
        self._store = store
        self.queue_bytes = queue_bytes
        self.piece = piece
        self.enabled = True
        # inode -> the version pushes to it must be of (set and cleared on the trio thread: single dict operations)
        self._bound: dict[int, FileVersion] = {}
        self._lock = threading.Lock()  # orders pushes against retirements; worker threads only
        self._queue: collections.deque[_Push] = collections.deque()
        self._queued = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._limiter = trio.CapacityLimiter(threads)
        self._dropped_full = 0  # (trio thread)
        # (worker threads, under the lock)
        self._pushes = self._pushed_bytes = self._dropped_stale = self._failed_count = self._retired = 0
        self._errnos: dict[str, int] = {}

    # -- the trio thread ---------------------------------------------------------------------------------
    def bind(self, inode: int, version: FileVersion) -> None:
        """`inode` serves `version` (a file was opened): pushes of that version to it may go."""
        self._bound[inode] = version

    def unbind(self, inode: int) -> None:
        """The file's last handle was released: what is still queued for it is dropped."""
        self._bound.pop(inode, None)

    def offer(self, inode: int, version: FileVersion, offset: int, data: bytes, size: int) -> bool:
        """Queue a verified chunk of `version` at `offset` (the file is `size` bytes) for the page cache; False
        when it is not queued (pushing is off, the queue is full)."""
        data = data[: max(0, size - offset)]  # never past the end of the file
        if not self.enabled or not data:
            return False
        if self._queued + len(data) > self.queue_bytes:
            self._dropped_full += 1
            return False
        self._queue.append(_Push(inode, version, offset, data))
        self._queued += len(data)
        self._lot.unpark()
        return True

    async def run(self) -> None:
        """The worker: a supervisor task runs this for the daemon's life."""
        while True:
            while not self._queue:
                await self._lot.park()
            # everything queued goes in one thread call: a thread hop per chunk let a fast reader overtake its pushes
            pushes = list(self._queue)
            self._queue.clear()
            self._queued -= sum(len(push.data) for push in pushes)
            await trio.to_thread.run_sync(self._push_all, pushes, limiter=self._limiter, abandon_on_cancel=True)

    async def retire(self, inodes: list[int]) -> None:
        """The tree no longer has these inodes (their files changed or went): no push reaches them from now on (in a
        worker thread, after the push under way). Their pages stay for the handles opened before the change."""
        if inodes:
            for inode in inodes:  # the pushes still queued for them are dropped when their turn comes
                self._bound.pop(inode, None)
            with trio.move_on_after(10.0):  # (not behind the queued pushes: on a thread of its own)
                await trio.to_thread.run_sync(self._retire, list(inodes), abandon_on_cancel=True)

    def statistics(self) -> PagePushStatistics:
        return PagePushStatistics(enabled=self.enabled, pushed_bytes=self._pushed_bytes, pushes=self._pushes,
                                  queued_bytes=self._queued, dropped_full=self._dropped_full,
                                  dropped_stale=self._dropped_stale, failed=self._failed_count,
                                  failed_by_errno=dict(self._errnos), retired=self._retired)

    # -- worker threads ----------------------------------------------------------------------------------
    def _push_all(self, pushes: list[_Push]) -> None:
        for push in pushes:
            self._push(push)

    def _push(self, push: _Push) -> None:
        view = memoryview(push.data)
        with self._lock:
            if self._bound.get(push.inode) != push.version:
                self._dropped_stale += 1
                return
            try:
                for start in range(0, len(view), self.piece):
                    self._store(push.inode, push.offset + start, view[start:start + self.piece])
            except OSError as exc:
                self._failed(exc)
                return
            self._pushes += 1
            self._pushed_bytes += len(view)

    def _failed(self, exc: OSError) -> None:
        """(Under the lock.)"""
        self._failed_count += 1
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self._errnos = {**self._errnos, name: self._errnos.get(name, 0) + 1}  # a new dict: statistics() reads it
        if exc.errno == errno.ENOSYS:
            self.enabled = False
            log.info("page cache: this kernel cannot take pushed pages (notify_store: ENOSYS); reads go through "
                     "the daemon")
        else:
            log.debug("page cache: a push was refused (%s); its pages are read the normal way", name)

    def _retire(self, inodes: list[int]) -> None:
        with self._lock:  # after the store under way: none follows (unbound already, _push drops the rest)
            for inode in inodes:
                self._bound.pop(inode, None)
                self._retired += 1