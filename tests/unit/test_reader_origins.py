"""FileReader + OriginRegistry + HealthMonitor over fakes: read timeout (3.8), offline mode (4.2.3),
starting offline (X.3), origin file changes (4.4) and cached reads not stalled by a hung origin.

Timing runs on trio's MockClock (see test_health.py for why the autojump threshold is not zero).
"""

from __future__ import annotations

import errno
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing

from musicfs.daemon.fuse_ops import MusicOperations
from musicfs.library.catalog import FileRow, FileVersion
from musicfs.library.tree import FIRST_INO, build_tree
from musicfs.origins.base import Origin
from musicfs.origins.health import HealthMonitor
from musicfs.origins.health_records import HEALTHY
from musicfs.origins.local import LocalOrigin
from musicfs.shared.errors import OriginFileChanged, OriginOffline
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.faulty_origin import Healthy, TimeoutMs
from musicfs_test_utils.reader_rig import ReaderRig, pattern_bytes

CHUNK = 64 * 1024
READ_TIMEOUT = 2.0
HANG = TimeoutMs(120_000)


pattern = functools.partial(pattern_bytes, step=7, salt=13, period=997)
FILES = {f"Artist/Album/{i:02d} Song.flac": pattern(i, 3 * CHUNK + 1000 * i + 17) for i in range(12)}


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.25)


@pytest.fixture
def patient_clock():
    """For tests where cache threads must finish before the clock may jump: a second of real time."""
    return trio.testing.MockClock(autojump_threshold=1.0)


@dataclass
class Rig(ReaderRig):
    monitor: HealthMonitor | None = None

    async def settle_probes(self) -> None:
        await trio.to_thread.run_sync(eventually, lambda: not self.monitor._inflight, 10.0, "probe threads ending")


def make_rig(base: Path, origin: Origin | None = None, *, memory_cache: int = 8 << 20, populate: bool = True) -> Rig:
    rig = Rig.build(base, FILES if populate else None, inner=origin, catalog_file="state/catalog.db", chunk_size=CHUNK,
                    memory_cache=memory_cache, read_timeout=READ_TIMEOUT)
    rig.monitor = HealthMonitor(rig.registry, timeout=5.0)
    return rig


@pytest.fixture
def rig(tmp_path):
    r = make_rig(tmp_path)
    yield r
    r.origin.set_mode(Healthy())
    r.close()


def fuse_ops(rig: Rig) -> MusicOperations:
    known: dict[str, int] = {}

    def assign(keys):
        out = {}
        for key in keys:
            known[key] = out[key] = FIRST_INO + len(known)
        return out

    return MusicOperations(build_tree(rig.catalog.files(), {}, assign), rig.reader)


async def fuse_read(ops: MusicOperations, path: str, offset: int, size: int) -> bytes:
    node = next(n for n in ops.tree.walk_files() if n.file.path == path)
    info = await ops.open(node.ino, os.O_RDONLY, None)
    try:
        return await ops.read(info.fh, offset, size)
    finally:
        await ops.release(info.fh)


PATHS = sorted(FILES)
A, B = PATHS[0], PATHS[1]


# -- 3.8 read timeout -------------------------------------------------------------------------------
@pytest.mark.resilience("3.8")
@pytest.mark.expected_log(r"fuse read.*timed out; answering EIO")
async def test_a_read_blocked_on_a_hanging_origin_answers_eio_at_read_timeout(clock, rig):
    ops = fuse_ops(rig)
    rig.origin.set_mode(HANG)
    started = trio.current_time()
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fuse_read(ops, A, 0, 128 * 1024)
    assert err.value.errno == errno.EIO
    assert trio.current_time() - started == pytest.approx(READ_TIMEOUT, abs=0.01)
    assert rig.origin.calls["read"] == 1  # it really was stuck in the origin, in a thread now abandoned
    assert rig.cas.usage() == (0, 0) and rig.catalog.manifest(FileVersion(rig.row(A).id, rig.row(A).ident)) == {}

    rig.origin.set_mode(Healthy())  # the origin answers again: the same read now works
    assert await fuse_read(ops, A, 0, 128 * 1024) == FILES[A][:128 * 1024]


@pytest.mark.resilience("3.8")
async def test_hung_origin_fetches_never_stall_cached_reads(patient_clock, tmp_path):
    """More hung fetches than the reader has threads: reads of cached chunks still answer at once."""
    rig = make_rig(tmp_path, memory_cache=0)  # no RAM cache: every cached read is a CAS read in a thread
    try:
        assert await rig.read(A) == FILES[A]  # cached
        rig.origin.set_mode(HANG)
        results: dict[str, object] = {}

        async def stuck(path: str) -> None:
            try:
                results[path] = await rig.read(path)
            except trio.TooSlowError as exc:
                results[path] = exc

        async with trio.open_nursery() as nursery:
            for path in PATHS[1:]:  # 11 uncached files, each stuck in the origin
                nursery.start_soon(stuck, path)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            for _ in range(3):
                assert await rig.read(A) == FILES[A]
            assert trio.current_time() - started < 0.5  # the hung fetches held none of the cache's threads
            assert not results
        assert all(isinstance(v, trio.TooSlowError) for v in results.values()) and len(results) == 11
    finally:
        rig.origin.set_mode(Healthy())
        rig.close()


# -- 4.2.3 offline -------------------------------------------------------------------------------------
@pytest.mark.resilience("4.2.3")
@pytest.mark.expected_log(r"origin faulty\(.*\) is unhealthy", r"every origin is down: offline",
                          r"fuse read: every origin is down")
async def test_offline_serves_cached_bytes_fails_uncached_at_once_and_recovers(clock, rig):
    ops = fuse_ops(rig)
    assert await rig.read(A) == FILES[A]  # cached while online
    rig.origin.set_mode(HANG)  # every origin hangs: the worst case for "fail fast"
    rig.registry.monitored = True  # as while HealthMonitor.run is running
    await rig.monitor.probe_all()
    assert rig.registry.offline

    assert await fuse_read(ops, A, 0, len(FILES[A])) == FILES[A]  # cached bytes are served
    started = trio.current_time()
    with pytest.raises(OriginOffline):
        await rig.read(B)
    with pytest.raises(pyfuse3.FUSEError) as err:
        await fuse_read(ops, B, 0, 4096)
    assert err.value.errno == errno.EIO
    assert trio.current_time() - started == 0  # no timeout waited for
    assert rig.origin.calls["read"] == 0  # the origin was not even asked

    rig.origin.set_mode(Healthy())  # it comes back: the next probe round ends offline mode
    await rig.settle_probes()
    await rig.monitor.probe_all()
    assert not rig.registry.offline and rig.registry.health_of(rig.origin).state == HEALTHY
    assert await fuse_read(ops, B, 0, len(FILES[B])) == FILES[B]


@pytest.mark.resilience("X.3")
@pytest.mark.expected_log(r"is unhealthy: source .* is not a directory", r"every origin is down: offline")
async def test_a_restart_with_every_origin_unreachable_serves_the_cache(tmp_path):
    first = make_rig(tmp_path)
    for path in PATHS[:6]:
        assert await first.read(path) == FILES[path]
    first.close()

    os.rename(tmp_path / "origin", tmp_path / "origin-away")  # the NAS is gone when we start again
    # constructing an origin never touches it: a missing root is fine
    second = make_rig(tmp_path, LocalOrigin(tmp_path / "origin"), populate=False)
    try:
        second.registry.monitored = True  # as while HealthMonitor.run is running
        await second.monitor.probe_all()
        assert second.registry.offline
        for path in PATHS[:6]:
            assert await second.read(path) == FILES[path]
        with pytest.raises(OriginOffline):
            await second.read(PATHS[7])

        os.rename(tmp_path / "origin-away", tmp_path / "origin")
        await second.monitor.probe_all()
        assert not second.registry.offline
        assert await second.read(PATHS[7]) == FILES[PATHS[7]]
    finally:
        second.close()


# -- 4.4 origin file changed -----------------------------------------------------------------------------
def change_size(path: Path, st: os.stat_result) -> bytes:
    new = bytes(b ^ 0x33 for b in path.read_bytes()) + b"appended"
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the size tells
    return new


def change_mtime(path: Path, st: os.stat_result) -> bytes:
    new = bytes(b ^ 0x5A for b in path.read_bytes())  # same size
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return new


def change_etag(path: Path, st: os.stat_result) -> bytes:
    new = bytes(b ^ 0xA5 for b in path.read_bytes())  # same size, same mtime: only the ETag (ctime) tells
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return new


@pytest.mark.resilience("4.4")
@pytest.mark.parametrize("change", [change_size, change_mtime, change_etag], ids=["size", "mtime", "etag"])
async def test_a_changed_origin_file_never_mixes_old_and_new_bytes(tmp_path, change):
    rig = make_rig(tmp_path)
    try:
        row = rig.row(A)
        changed: list[str] = []
        rig.reader.on_file_changed = changed.append  # the daemon rescans when told
        fh = await rig.reader.open(row)
        assert await rig.reader.read(fh, 0, CHUNK) == FILES[A][:CHUNK]  # chunk 0 cached under the old identity
        origin_file = rig.root / A
        new = change(origin_file, origin_file.stat())
        assert new[:CHUNK] != FILES[A][:CHUNK]

        with pytest.raises(OriginFileChanged):  # a read spanning old and new chunks: an error, never a mix
            await rig.reader.read(fh, 0, row.size)
        with pytest.raises(OriginFileChanged):
            await rig.reader.read(fh, 2 * CHUNK, 100)
        assert await rig.reader.read(fh, 0, CHUNK) == FILES[A][:CHUNK]  # what is served is all old
        assert changed == [A, A] and rig.reader.statistics().changed_files == 2
        assert set(rig.catalog.manifest(row.version)) == {0}  # nothing of the changed file was cached
        rig.reader.release(fh)

        # A rescan records the new identity (the scanner's upsert: tags are not the point here, so the rows
        # stay tracks); the old manifest goes with it; the tree shows the new file.
        st = rig.registry.first_healthy().stat(A)
        rig.catalog.upsert_files([FileRow(**{**row.__dict__, "size": st.size, "mtime_ns": st.mtime_ns,
                                             "etag": st.etag, "id": 0})])
        fresh = rig.row(A)
        assert (fresh.size, fresh.mtime_ns, fresh.etag) != (row.size, row.mtime_ns, row.etag)
        assert rig.catalog.manifest(FileVersion(fresh.id, row.ident)) == {}
        cat = rig.catalog
        tree = build_tree(cat.files(), cat.inode_map(), lambda keys: cat.add_inodes(keys, FIRST_INO))
        node = next(n for n in tree.walk_files() if n.file.path == A)
        assert node.file.size == len(new)
        assert await rig.read(A) == new  # whole, and all new
    finally:
        rig.close()
