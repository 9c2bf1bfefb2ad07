"""PagePusher on its own (pages.py), with the kernel's calls recorded: what is pushed, what is dropped, the order
of pushes and retirements, and failures counted, never raised."""

from __future__ import annotations

import errno
import threading

import pytest
import trio
import trio.testing

from musicfs.library import FileVersion
from musicfs.read.pages import PagePusher
from musicfs_test_utils.eventually import eventually_async

V1, V2 = FileVersion(1, "10:1:a"), FileVersion(1, "10:2:b")


class Kernel:
    """notify_store, recorded; `fail` makes stores raise that errno."""

    def __init__(self):
        self.stored: list[tuple[int, int, bytes]] = []
        self.events: list[str] = []
        self.fail: int | None = None
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()  # a store has begun

    def store(self, inode: int, offset: int, data) -> None:
        self.entered.set()
        self.hold.wait(10)
        if self.fail is not None:
            raise OSError(self.fail, "refused")
        self.stored.append((inode, offset, bytes(data)))
        self.events.append(f"store {inode}")



@pytest.fixture
async def pusher(nursery):
    kernel = Kernel()
    pages = PagePusher(kernel.store, queue_bytes=1 << 20, piece=4096)
    nursery.start_soon(pages.run)
    return pages, kernel


async def drained(pages: PagePusher, offers: int) -> None:
    """Until the worker has handled `offers` queued pushes (stored, dropped or failed)."""
    def handled():
        s = pages.statistics()
        return s.pushes + s.dropped_stale + s.failed >= offers
    await eventually_async(handled, 10, f"{offers} pushes handled")


async def test_a_bound_inode_gets_its_chunks_in_pieces_and_never_past_the_end_of_the_file(pusher):
    pages, kernel = pusher
    pages.bind(5, V1)
    assert pages.offer(5, V1, 8192, b"x" * 10000, size=12000)  # the file ends 3808 bytes into this chunk
    await drained(pages, 1)
    assert [(i, o, len(d)) for i, o, d in kernel.stored] == [(5, 8192, 3808)]
    assert not pages.offer(5, V1, 12000, b"y" * 100, size=12000)  # nothing left within the file
    stats = pages.statistics()
    assert stats.pushes == 1 and stats.pushed_bytes == 3808


async def test_a_push_for_an_unbound_or_other_version_inode_is_dropped(pusher):
    pages, kernel = pusher
    pages.offer(5, V1, 0, b"x" * 100, size=100)  # never bound
    pages.bind(6, V2)
    pages.offer(6, V1, 0, b"x" * 100, size=100)  # bound to another version
    pages.bind(7, V1)
    pages.offer(7, V1, 0, b"x" * 100, size=100)
    pages.unbind(7)  # its last handle released before its turn
    await drained(pages, 3)
    assert kernel.stored == [] and pages.statistics().dropped_stale == 3


@pytest.mark.resilience("4.5")
async def test_a_retirement_waits_for_the_push_under_way_and_no_push_follows_it(pusher):
    pages, kernel = pusher
    pages.bind(5, V1)
    kernel.hold.clear()  # the kernel holds the store (a READ of that page is pending)
    pages.offer(5, V1, 0, b"a" * 4096, size=1 << 20)
    pages.offer(5, V1, 4096, b"b" * 4096, size=1 << 20)  # queued behind it
    await eventually_async(kernel.entered.is_set, 10, "the first store under way")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pages.retire, [5])
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        assert pages.statistics().retired == 0  # ordered after the store under way
        kernel.hold.set()
    await drained(pages, 2)
    assert kernel.events == ["store 5"]  # the queued push came after the retirement: dropped
    assert pages.statistics().dropped_stale == 1 and pages.statistics().retired == 1


async def test_what_queues_while_a_push_is_under_way_goes_in_one_thread_call(pusher, monkeypatch):
    # a thread hop per chunk let a fast reader overtake its pushes: the worker takes everything queued at once
    pages, kernel = pusher
    calls = []
    push_all = pages._push_all

    def recorded(pushes):
        calls.append(len(pushes))
        push_all(pushes)

    monkeypatch.setattr(pages, "_push_all", recorded)
    pages.bind(5, V1)
    kernel.hold.clear()
    pages.offer(5, V1, 0, b"a" * 4096, size=1 << 20)
    await eventually_async(kernel.entered.is_set, 10, "the first store under way")
    for n in range(1, 4):
        pages.offer(5, V1, n * 4096, b"b" * 4096, size=1 << 20)
    kernel.hold.set()
    await drained(pages, 4)
    assert calls == [1, 3] and [o for _, o, _ in kernel.stored] == [0, 4096, 8192, 12288]


async def test_a_full_queue_drops_the_offer(pusher):
    pages, kernel = pusher
    pages.bind(5, V1)
    kernel.hold.clear()
    assert pages.offer(5, V1, 0, b"x" * (600 << 10), size=4 << 20)
    assert pages.offer(5, V1, 600 << 10, b"x" * (300 << 10), size=4 << 20)
    assert not pages.offer(5, V1, 900 << 10, b"x" * (300 << 10), size=4 << 20)  # over the 1 MiB queue
    kernel.hold.set()
    await drained(pages, 2)
    assert pages.statistics().dropped_full == 1 and pages.statistics().pushes == 2


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOMEM, errno.EIO])
async def test_a_refused_push_is_counted_by_errno_and_pushing_goes_on(pusher, code):
    pages, kernel = pusher
    pages.bind(5, V1)
    kernel.fail = code
    pages.offer(5, V1, 0, b"x" * 100, size=100)
    await drained(pages, 1)
    kernel.fail = None
    pages.offer(5, V1, 100, b"y" * 100, size=200)
    await drained(pages, 2)
    stats = pages.statistics()
    assert stats.failed == 1 and stats.failed_by_errno == {errno.errorcode[code]: 1} and stats.pushes == 1
    assert stats.enabled


async def test_a_kernel_without_notify_store_turns_pushing_off(pusher):
    pages, kernel = pusher
    pages.bind(5, V1)
    kernel.fail = errno.ENOSYS
    pages.offer(5, V1, 0, b"x" * 100, size=100)
    await drained(pages, 1)
    assert not pages.statistics().enabled
    assert not pages.offer(5, V1, 0, b"x" * 100, size=100)


# -- the worker's push and the offer, exactly (no trio: _push is what a worker thread runs) ----------------------
def test_a_new_pusher_reports_zeros_and_its_record_is_frozen():
    import dataclasses

    from musicfs.read.pages import PagePushStatistics

    stats = PagePusher(Kernel().store).statistics()
    assert stats == PagePushStatistics()  # the record's defaults are a new pusher's figures
    assert (stats.enabled, stats.pushed_bytes, stats.pushes, stats.queued_bytes, stats.dropped_full,
            stats.dropped_stale, stats.failed, stats.failed_by_errno, stats.retired) == (True, 0, 0, 0, 0, 0, 0, {}, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pushes = 1  # type: ignore[misc]


def test_a_push_lands_piece_by_piece_at_its_own_offsets():
    from musicfs.read.pages import _Push

    kernel = Kernel()
    pages = PagePusher(kernel.store, piece=4096)
    pages.bind(7, V1)
    data = bytes(range(256)) * 49  # 12544 bytes: three whole pieces and a short one
    pages._push(_Push(7, V1, 3 * 4096, data))
    assert [(inode, offset, len(piece)) for inode, offset, piece in kernel.stored] == [
        (7, 12288, 4096), (7, 16384, 4096), (7, 20480, 4096), (7, 24576, 256)]
    assert b"".join(piece for _, _, piece in kernel.stored) == data
    assert pages.statistics().pushes == 1 and pages.statistics().pushed_bytes == len(data)


def test_an_offer_is_cut_at_the_end_of_the_file_and_one_past_it_is_nothing():
    pages = PagePusher(Kernel().store, queue_bytes=1 << 20)
    assert pages.offer(1, V1, 5000, b"z" * 10000, size=12000)
    assert pages.statistics().queued_bytes == 7000
    assert not pages.offer(1, V1, 12010, b"z" * 100, size=12000)  # past the end: nothing to push
    assert not pages.offer(1, V1, 12000, b"z" * 100, size=12000)
    assert pages.statistics().queued_bytes == 7000


def test_the_queue_takes_offers_up_to_exactly_its_bound():
    pages = PagePusher(Kernel().store, queue_bytes=8192)
    assert pages.offer(1, V1, 0, b"a" * 4096, size=1 << 20) and pages.offer(1, V1, 4096, b"b" * 4096, size=1 << 20)
    assert not pages.offer(1, V1, 8192, b"c" * 1, size=1 << 20)
    assert pages.statistics().queued_bytes == 8192 and pages.statistics().dropped_full == 1


def test_refusals_are_counted_per_errno_and_only_enosys_turns_pushing_off():
    from musicfs.read.pages import _Push

    kernel = Kernel()
    pages = PagePusher(kernel.store)
    pages.bind(1, V1)
    for code in (errno.EIO, errno.EIO, errno.ENOTCONN):
        kernel.fail = code
        pages._push(_Push(1, V1, 0, b"x"))
    stats = pages.statistics()
    assert stats.failed_by_errno == {"EIO": 2, "ENOTCONN": 1} and stats.failed == 3 and stats.enabled
    pages._failed(OSError("no errno at all"))
    assert pages.statistics().failed_by_errno["None"] == 1
