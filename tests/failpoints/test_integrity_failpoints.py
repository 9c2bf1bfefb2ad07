"""Failpoints on the integrity paths: a catalog that looks corrupt at open (2.4), a CAS index store that
fails at runtime (6.3), a hung or failing cache disk and its probe (6.6).

Run with `pytest --failpoints -p no:xdist`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from musicfs import failpoints
from musicfs.cache.cas import chunk_hash
from musicfs.cache.health import DOWN, NORMAL, UNSTABLE
from musicfs.library.storage import Library
from musicfs.shared import points
from musicfs.shared.config import Config
from musicfs_test_utils.reader_rig import ReaderRig, pattern_bytes

CHUNK = 8 * 1024
pattern = functools.partial(pattern_bytes, step=11, salt=57, period=253)


@pytest.fixture
def env(tmp_path):
    made = ReaderRig.build(tmp_path, {"a.flac": pattern(1, 3 * CHUNK), "b.flac": pattern(2, 2 * CHUNK + 7)},
                           chunk_size=CHUNK, memory_cache=0, read_timeout=10.0,
                           health=dict(op_timeout=0.3, probe_timeout=0.3, retry_interval=0.02, down_interval=0.02,
                                       probe_interval=0.02, down_after=2))
    yield made
    made.close()


# -- db-open-corrupt (2.4) --------------------------------------------------------------------------------------
@pytest.mark.resilience("2.4")
@pytest.mark.expected_log(r"musicfs\.library\.catalog: catalog .*catalog\.db is damaged \(.*corruption injected by failpoint\): "
                          r"moved to .*catalog\.db\.damaged-")
def test_a_catalog_corrupt_at_open_is_moved_aside_and_the_rescan_rebuilds_it(small_library, tmp_path):
    cfg = Config(sources=(str(small_library[0]),), state_dir=str(tmp_path / "state"), cache_dir=str(tmp_path / "cache"))
    lib = Library.open(cfg)
    lib.scan()
    tracks = lib.catalog.count()
    lib.close()
    failpoints.cfg(points.DB_OPEN_CORRUPT, "1*return")
    lib = Library.open(cfg)
    try:
        moved = [p for p in Path(cfg.state_dir).iterdir() if p.name.startswith("catalog.db.damaged-")]
        assert len(moved) == 1 and moved[0].stat().st_size > 0
        assert not lib.ever_scanned and lib.catalog.count() == 0
        lib.scan()
        assert lib.catalog.count() == tracks
    finally:
        lib.close()


# -- cas-index-write (6.3) ----------------------------------------------------------------------------------------
@pytest.mark.resilience("6.3")
@pytest.mark.expected_log(r"musicfs\.cache\.health: cache: normal -> down \(the cache index failed",
                          r"musicfs\.cache\.health: cache: the index rebuild failed \(cache: cannot rebuild the index .*"
                          r"injected by failpoint")
async def test_a_failing_cache_index_store_means_passthrough_until_the_background_rebuild_succeeds(env):
    assert await env.read("a.flac") == env.files["a.flac"]
    failpoints.cfg(points.CAS_INDEX_WRITE, "return")  # every index write fails, the rebuild's too
    assert await env.read("b.flac") == env.files["b.flac"]
    assert env.health.state == DOWN
    reads = env.origin.calls["read"]
    assert await env.read("a.flac") == env.files["a.flac"]
    assert env.origin.calls["read"] == reads + 3  # passthrough: the cached copy is not used while down
    async with trio.open_nursery() as nursery:
        nursery.start_soon(env.health.run)
        with trio.fail_after(5):
            while env.health.failed_rebuilds < 2:  # tried, and cannot finish while the store fails
                await trio.sleep(0.01)
        assert env.health.state == DOWN and not env.cas.available
        failpoints.remove(points.CAS_INDEX_WRITE)
        with trio.fail_after(10):
            await env.health.wait_for(NORMAL)
        nursery.cancel_scope.cancel()
    assert env.cas.last_rebuild.reused  # the index file itself was sound: reopened, nothing moved aside
    assert not [p for p in Path(env.cas.root).iterdir() if "damaged" in p.name]
    assert all(env.cas.has(chunk_hash(env.files["a.flac"][i:i + CHUNK])) for i in range(0, 3 * CHUNK, CHUNK))
    reads = env.origin.calls["read"]
    assert await env.read("a.flac") == env.files["a.flac"] and env.origin.calls["read"] == reads


# -- cas-get: a hung cache disk (6.6) ---------------------------------------------------------------------------
@pytest.mark.resilience("6.6")
@pytest.mark.expected_log(r"musicfs\.cache\.health: cache: normal -> unstable \(cache: get did not finish within 0.3s\)")
async def test_a_cache_read_that_hangs_is_abandoned_after_its_timeout_and_the_origin_serves(env):
    assert await env.read("a.flac") == env.files["a.flac"]
    failpoints.cfg(points.CAS_GET, "pause")
    assert await env.read("a.flac") == env.files["a.flac"]  # the read went on while the cache read stays paused
    assert failpoints.paused_count(points.CAS_GET) == 1  # exactly one cache read is stuck; the rest bypassed it
    assert env.health.state == UNSTABLE
    failpoints.remove(points.CAS_GET)  # the disk answers again
    assert await env.health.probe_once() and env.health.state == NORMAL
    hits = env.reader.statistics().cache_hits
    assert await env.read("a.flac") == env.files["a.flac"] and env.reader.statistics().cache_hits == hits + 3


# -- cas-probe (6.6) ------------------------------------------------------------------------------------------------
@pytest.mark.resilience("6.6")
@pytest.mark.expected_log(r"musicfs\.cache\.health: cache: normal -> unstable \(cache: cannot read chunk .*injected",
                          r"musicfs\.cache\.health: cache: unstable -> down \(2 probes failed in a row, the last: "
                          r"cache: probe failed \(injected by failpoint\)\)")
async def test_the_cache_stays_bypassed_while_its_probe_fails_and_comes_back_when_it_passes(env):
    assert await env.read("a.flac") == env.files["a.flac"]
    failpoints.cfg(points.CAS_GET, "1*return")  # one I/O error: unstable
    failpoints.cfg(points.CAS_PROBE, "return")
    assert await env.read("a.flac") == env.files["a.flac"]
    assert env.health.state == UNSTABLE
    async with trio.open_nursery() as nursery:
        nursery.start_soon(env.health.run)
        with trio.fail_after(5):
            await env.health.wait_for(DOWN)
        assert env.health.state == DOWN
        failpoints.remove(points.CAS_PROBE)
        with trio.fail_after(5):
            await env.health.wait_for(NORMAL)
        nursery.cancel_scope.cancel()
    assert await env.read("b.flac") == env.files["b.flac"]
    assert env.cas.usage()[1] == 3 + 3  # b.flac was stored again once the cache came back
