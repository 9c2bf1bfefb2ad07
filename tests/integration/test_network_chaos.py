"""N.1-N.7 (and 4.3 failover) in-process: FileReader -> OriginRegistry -> S3Origin / SftpOrigin -> chaos proxy
-> the real server (moto S3, OpenSSH sshd) on loopback, with a HealthMonitor probing all along.

Every test asserts one of two outcomes for each read - the right bytes, or a clean error within the
read timeout - and that reads work again once the toxic is gone, without restarting anything.
The same scenarios on a real mount are in test_chaos_mount.py.
"""

from __future__ import annotations

import functools
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import trio

from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.library.catalog import Catalog, FileRow
from musicfs.origins.base import Origin
from musicfs.origins.factory import open_origin
from musicfs.origins.health import HealthMonitor
from musicfs.origins.health_records import HEALTHY, UNHEALTHY
from musicfs.origins.registry import OriginRegistry
from musicfs.read import FileReader, build_reader
from musicfs.shared.errors import OriginOffline, OriginTimeout
from musicfs_test_utils.clocks import Clock
from musicfs_test_utils.eventually import eventually_async
from musicfs_test_utils.fixtures import open_catalog, setup_test_cas
from musicfs_test_utils.reader_rig import READ_ERRORS, current_row, read_range

pytestmark = [pytest.mark.l3, pytest.mark.expected_log(r"musicfs\.origins\.registry: ")]

KINDS = ["s3", "sftp"]
CHUNK = 256 * 1024
READ_TIMEOUT = 2.0
ORIGIN_TIMEOUTS = {"connect_timeout": 1, "read_timeout": 1}  # the origins' own socket timeouts
BIG = "big.flac"  # 3 MiB: 12 chunks
SMALL = "hundred-k.mp3"  # one chunk


class AsyncProxy:
    """The ProxyThread's controls, awaitable: they block on the proxy's own loop, so call them from a thread."""

    def __init__(self, proxy):
        self.sync = proxy  # for code already in a worker thread (the registry's retry hooks)

    def __getattr__(self, name: str):
        fn = getattr(self.sync, name)

        async def call(*args, **kwargs):
            return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

        return call


@dataclass
class Rig:
    proxy: AsyncProxy
    registry: OriginRegistry
    monitor: HealthMonitor
    reader: FileReader
    cat: Catalog
    cas: CasStore
    library: object
    retry_hooks: list[Callable[[], None]] = field(default_factory=list)  # run at the registry's next backoff

    @property
    def origin(self) -> Origin:
        return self.registry.origins[0]

    def row(self, path: str) -> FileRow:
        return current_row(self.cat, path)

    async def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        return await read_range(self.reader, self.row(path), offset, size)

    def want(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        data = self.library.data(path)
        return data[offset:] if size is None else data[offset:offset + size]

    def manifest(self, path: str) -> dict[int, str]:
        row = self.row(path)
        return self.cat.manifest(row.version)

    def assert_cache_holds_only_good_chunks(self, path: str) -> None:
        """Every chunk recorded for the file is whole and right: never a short or wrong one."""
        data = self.library.data(path)
        for idx, digest in self.manifest(path).items():
            want = data[idx * CHUNK:(idx + 1) * CHUNK]
            assert digest == chunk_hash(want), f"chunk {idx} of {path} is not the origin's"
            assert self.cas.get(digest) == want

    def state(self, origin: Origin | None = None) -> str:
        return self.registry.health_of(origin or self.origin).state

    async def recovered(self) -> None:
        await eventually_async(lambda: self.state() == HEALTHY and not self.registry.offline, 15, "recovery")


@asynccontextmanager
async def chaos_rig(kind: str, via_proxy, library, tmp_path: Path, *, read_timeout: float = READ_TIMEOUT,
                    replica: Origin | None = None, grace: float = 60.0, clock: Callable[[], float] = time.monotonic):
    proxy, url, options = via_proxy(kind, **ORIGIN_TIMEOUTS)
    origin = open_origin(url, options)
    origins = [origin] + ([replica] if replica is not None else [])
    hooks: list[Callable[[], None]] = []

    def sleep(seconds: float) -> None:
        while hooks:
            hooks.pop(0)()
        time.sleep(seconds)

    registry = OriginRegistry(origins, retries=2, backoff=0.05, sleep=sleep, grace=grace, seed=5, clock=clock)
    cat = open_catalog(str(tmp_path / f"state-{kind}"))
    listing = await trio.to_thread.run_sync(lambda: list(origin.walk()))
    cat.upsert_files([FileRow(path=st.path, kind="track", size=st.size, mtime_ns=st.mtime_ns, etag=st.etag)
                      for st in listing])
    cas = setup_test_cas(tmp_path / f"cache-{kind}")
    reader = build_reader(cat, ChunkCache(cas, op_timeout=min(5.0, read_timeout / 3)), registry, chunk_size=CHUNK, memory_cache=16 << 20, read_timeout=read_timeout)
    monitor = HealthMonitor(registry, interval=0.2, timeout=1.0)
    rig = Rig(AsyncProxy(proxy), registry, monitor, reader, cat, cas, library, hooks)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(monitor.run)
            assert rig.state() == HEALTHY
            yield rig
            nursery.cancel_scope.cancel()
    finally:
        cat.close()
        cas.close()
        for o in origins:
            await trio.to_thread.run_sync(o.close)


async def outcome(coro) -> object:
    """The result of awaiting coro, or the READ_ERRORS exception it raised."""
    try:
        return await coro
    except READ_ERRORS as exc:
        return exc


def assert_a_deadline_ended(got: object) -> None:
    """The read failed because a deadline ran out: the reader's read_timeout (TooSlowError) or the origin's own
    timeout (OriginTimeout) — never an answer that came late, never a wait with no end (each is bounded by
    construction: trio.fail_after, the SDK's socket timeouts)."""
    assert isinstance(got, (trio.TooSlowError, OriginTimeout)) or "timed out" in str(got) or \
        "nothing from" in str(got), repr(got)


# -- N.1 latency -----------------------------------------------------------------------------------------
@pytest.mark.resilience("N.1")
@pytest.mark.parametrize("kind", KINDS)
async def test_n1_latency_spike_fails_at_read_timeout_never_past_it(kind, via_proxy, library, tmp_path):
    async with chaos_rig(kind, via_proxy, library, tmp_path) as rig:
        assert await rig.read(SMALL, 0, 10) == rig.want(SMALL, 0, 10)  # connection warm

        await rig.proxy.add_toxic("lag", "latency", latency_ms=50)  # some latency: slower, still right
        assert await rig.read(BIG, 0, CHUNK) == rig.want(BIG, 0, CHUNK)
        await rig.proxy.remove_toxic("lag")

        await rig.proxy.add_toxic("spike", "latency", latency_ms=5000)  # a spike past the read timeout
        got = await outcome(rig.read(BIG, CHUNK, CHUNK))
        assert_a_deadline_ended(got)
        assert 1 not in rig.manifest(BIG)

        await rig.proxy.remove_toxic("spike")
        await rig.recovered()
        assert await rig.read(BIG, CHUNK, CHUNK) == rig.want(BIG, CHUNK, CHUNK)
        rig.assert_cache_holds_only_good_chunks(BIG)


# -- N.2 reset -------------------------------------------------------------------------------------------
@pytest.mark.resilience("N.2")
@pytest.mark.parametrize("kind", KINDS)
async def test_n2_connection_reset_mid_transfer_is_retried_with_correct_bytes(kind, via_proxy, library, tmp_path):
    async with chaos_rig(kind, via_proxy, library, tmp_path, read_timeout=10.0) as rig:
        assert await rig.read(SMALL, 0, 10) == rig.want(SMALL, 0, 10)
        # A chunk takes ~0.5 s at 500 KB/s; the reset comes 150 ms in: mid-transfer.
        await rig.proxy.add_toxic("slow", "bandwidth", rate_kbps=500)
        await rig.proxy.add_toxic("reset", "reset_peer", timeout_ms=150)
        fired = []
        rig.retry_hooks.append(lambda: (fired.append(True), rig.proxy.sync.remove_toxic("reset"),
                                        rig.proxy.sync.remove_toxic("slow")))
        assert await rig.read(BIG, 2 * CHUNK, CHUNK) == rig.want(BIG, 2 * CHUNK, CHUNK)
        assert fired, "the reset was not seen as a transient error and retried"
        assert rig.registry.health_of(rig.origin).retries >= 1
        rig.assert_cache_holds_only_good_chunks(BIG)


# -- N.3 blackhole ---------------------------------------------------------------------------------------
@pytest.mark.resilience("N.3")
@pytest.mark.parametrize("kind", KINDS)
async def test_n3_blackhole_gives_an_error_within_read_timeout_and_marks_the_origin_unhealthy(
        kind, via_proxy, library, tmp_path):
    async with chaos_rig(kind, via_proxy, library, tmp_path) as rig:
        assert await rig.read(SMALL) == rig.want(SMALL)  # cached
        await rig.proxy.add_toxic("hole", "timeout", timeout_ms=0)  # data goes in, nothing comes back
        got = await outcome(rig.read(BIG, 0, CHUNK))
        assert_a_deadline_ended(got)
        await eventually_async(lambda: rig.state() == UNHEALTHY, 15, "origin marked unhealthy")
        assert rig.registry.offline  # its only origin: offline
        assert await rig.read(SMALL) == rig.want(SMALL)  # cached bytes still served
        assert rig.manifest(BIG) == {}

        await rig.proxy.remove_toxic("hole")
        await rig.recovered()
        assert await rig.read(BIG, 0, CHUNK) == rig.want(BIG, 0, CHUNK)
        rig.assert_cache_holds_only_good_chunks(BIG)


@pytest.mark.resilience("N.3", "4.3")
@pytest.mark.parametrize("kind", KINDS)
async def test_n3_blackholed_primary_fails_over_to_the_other_server_and_is_preferred_again_after_grace(
        kind, via_proxy, library, tmp_path, request):
    other = "sftp" if kind == "s3" else "s3"
    if other == "s3":
        replica = open_origin(request.getfixturevalue("s3_library"),
                              request.getfixturevalue("moto_server").origin_options(**ORIGIN_TIMEOUTS))
    else:
        replica = open_origin(request.getfixturevalue("sftp_library"),
                              request.getfixturevalue("ssh_server").origin_options(**ORIGIN_TIMEOUTS))
    clock = Clock(1000.0)  # the registry's: the grace period passes when the test says so
    async with chaos_rig(kind, via_proxy, library, tmp_path, replica=replica, grace=60.0, clock=clock) as rig:
        await eventually_async(lambda: rig.state(replica) == HEALTHY, 15, "replica probed")
        assert rig.registry.active is rig.origin
        assert await rig.read(BIG, 0, CHUNK) == rig.want(BIG, 0, CHUNK)  # from the primary

        await rig.proxy.add_toxic("hole", "timeout", timeout_ms=0)
        assert await rig.read(BIG, CHUNK, CHUNK) == rig.want(BIG, CHUNK, CHUNK)  # failed over: right bytes
        assert rig.registry.health_of(rig.origin).failovers >= 1
        await eventually_async(lambda: rig.state() == UNHEALTHY, 15, "primary marked unhealthy")
        assert rig.registry.active is replica and not rig.registry.offline
        asked = sum(rig.registry.health_of(rig.origin).results.values())
        assert await rig.read(BIG, 2 * CHUNK, CHUNK) == rig.want(BIG, 2 * CHUNK, CHUNK)
        assert sum(rig.registry.health_of(rig.origin).results.values()) == asked  # the dead primary not even tried

        await rig.proxy.remove_toxic("hole")
        await eventually_async(lambda: rig.state() == HEALTHY, 15, "primary healthy again")
        assert rig.registry.active is replica  # healthy, but not yet for the grace period
        clock.now += 59.0
        assert rig.registry.active is replica
        clock.now += 1.0  # healthy for the whole grace period now
        assert rig.registry.active is rig.origin  # preferred again
        assert await rig.read(BIG, 3 * CHUNK, CHUNK) == rig.want(BIG, 3 * CHUNK, CHUNK)
        rig.assert_cache_holds_only_good_chunks(BIG)


# -- N.4 bandwidth ---------------------------------------------------------------------------------------
@pytest.mark.resilience("N.4")
@pytest.mark.parametrize("kind", KINDS)
async def test_n4_throttled_bandwidth_gives_correct_bytes_without_timeouts(kind, via_proxy, library, tmp_path):
    async with chaos_rig(kind, via_proxy, library, tmp_path, read_timeout=8.0) as rig:
        assert await rig.read(SMALL, 0, 10) == rig.want(SMALL, 0, 10)
        rate = 150  # KB/s: a chunk takes longer than the origins' 1 s socket timeout, which must be one of silence
        assert CHUNK / (rate * 1000) > ORIGIN_TIMEOUTS["read_timeout"]
        await rig.proxy.add_toxic("thin", "bandwidth", rate_kbps=rate)
        got = await outcome(rig.read(BIG, 0, CHUNK))
        assert got == rig.want(BIG, 0, CHUNK), got
        assert rig.registry.health_of(rig.origin).retries == 0 and rig.state() == HEALTHY
        await rig.proxy.remove_toxic("thin")
        rig.assert_cache_holds_only_good_chunks(BIG)


# -- N.5 slicer ------------------------------------------------------------------------------------------
@pytest.mark.resilience("N.5")
@pytest.mark.parametrize("kind", KINDS)
# urllib3 logs this when a response ends inside its header block (the socket gave EOF mid-line: 'unparsed data:
# "Ac"', the start of Accept-Ranges); on a loaded machine a crumb-fed connection can end so, and the request is
# failed and retried like any cut one (the bytes below are still checked).
@pytest.mark.expected_log(r"urllib3\.connection: Failed to parse headers")
async def test_n5_tiny_fragments_give_correct_bytes(kind, via_proxy, library, tmp_path):
    async with chaos_rig(kind, via_proxy, library, tmp_path, read_timeout=10.0) as rig:
        assert await rig.read(SMALL, 0, 10) == rig.want(SMALL, 0, 10)
        await rig.proxy.add_toxic("crumbs", "slicer", average_size=64, size_variation=48)
        writes = (await rig.proxy.stats())["writes_downstream"]
        assert await rig.read(SMALL) == rig.want(SMALL)
        assert await rig.read(BIG, CHUNK - 1000, 2000) == rig.want(BIG, CHUNK - 1000, 2000)
        assert (await rig.proxy.stats())["writes_downstream"] - writes > 1000  # it really came in crumbs
        rig.assert_cache_holds_only_good_chunks(BIG)
        rig.assert_cache_holds_only_good_chunks(SMALL)


# -- N.6 truncated stream --------------------------------------------------------------------------------
@pytest.mark.resilience("N.6")
@pytest.mark.parametrize("kind", KINDS)
async def test_n6_truncated_stream_is_retried_and_never_cached_short(kind, via_proxy, library, tmp_path):
    async with chaos_rig(kind, via_proxy, library, tmp_path, read_timeout=10.0) as rig:
        assert await rig.read(SMALL, 0, 10) == rig.want(SMALL, 0, 10)
        # Every connection is cut after 50 000 bytes, retries included: the read fails, nothing is cached.
        await rig.proxy.add_toxic("cut", "limit_data", bytes=50_000)
        got = await outcome(rig.read(BIG, 0, CHUNK))
        assert isinstance(got, READ_ERRORS), got
        assert rig.registry.health_of(rig.origin).retries >= 1
        assert rig.manifest(BIG) == {}
        await rig.proxy.remove_toxic("cut")
        await rig.recovered()

        # Cut once: detected as a short read, retried, and the right bytes come back and are cached.
        retries = rig.registry.health_of(rig.origin).retries
        await rig.proxy.add_toxic("cut", "limit_data", bytes=50_000)
        rig.retry_hooks.append(lambda: rig.proxy.sync.remove_toxic("cut"))
        assert await rig.read(BIG, 0, CHUNK) == rig.want(BIG, 0, CHUNK)
        assert rig.registry.health_of(rig.origin).retries > retries
        assert list(rig.manifest(BIG)) == [0]
        rig.assert_cache_holds_only_good_chunks(BIG)


# -- N.7 down, then up -----------------------------------------------------------------------------------
@pytest.mark.resilience("N.7")
@pytest.mark.parametrize("kind", KINDS)
async def test_n7_proxy_down_goes_offline_then_recovers_without_restart(kind, via_proxy, library, tmp_path):
    async with chaos_rig(kind, via_proxy, library, tmp_path) as rig:
        assert await rig.read(SMALL) == rig.want(SMALL)
        await rig.proxy.disable()
        await eventually_async(lambda: rig.registry.offline, 15, "offline")
        assert await rig.read(SMALL) == rig.want(SMALL)  # cached: served
        asked = sum(rig.registry.health_of(rig.origin).results.values())
        got = await outcome(rig.read(BIG, 0, CHUNK))
        assert isinstance(got, OriginOffline), got  # at once: no origin was asked
        assert sum(rig.registry.health_of(rig.origin).results.values()) == asked

        await rig.proxy.enable()
        await rig.recovered()
        assert await rig.read(BIG, 0, CHUNK) == rig.want(BIG, 0, CHUNK)
        rig.assert_cache_holds_only_good_chunks(BIG)
        assert list(rig.manifest(BIG)) == [0]
