"""Failpoints on the origin side: reader-manifest-fetch (before a chunk is fetched) and health-check-hang.

Run with `pytest --failpoints -p no:xdist`: these tests arm the process-wide failpoint registry.
A read that hits a fault must fail cleanly (an error, never wrong or partial bytes, nothing
cached) and the same read must return the right bytes once the point is removed.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

import pytest
import trio

from musicfs import failpoints
from musicfs.failpoints import FailPointPanic
from musicfs.origins.local import LocalOrigin
from musicfs.origins.registry import OriginRegistry
from musicfs.shared import points
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.faulty_origin import FaultyOrigin
from musicfs_test_utils.reader_rig import READ_ERRORS, ReaderRig
from musicfs_test_utils.reader_rig import pattern_bytes as shared_pattern_bytes

CHUNK = 4096
FETCH = points.READER_MANIFEST_FETCH
HANG = points.HEALTH_CHECK_HANG
pattern_bytes = functools.partial(shared_pattern_bytes, step=31, salt=17, period=256)


def make_env(tmp_path: Path, files: dict[str, bytes], *, read_timeout: float = 10.0, name: str = "env") -> ReaderRig:
    return ReaderRig.build(tmp_path / name, files, chunk_size=CHUNK, memory_cache=1 << 20, read_timeout=read_timeout)


@pytest.fixture
def env(tmp_path):
    made = make_env(tmp_path, {"a/song.flac": pattern_bytes(1, 5 * CHUNK + 123), "b/other.mp3": pattern_bytes(2, 999)})
    yield made
    made.close()


def assert_nothing_cached(env: ReaderRig, path: str) -> None:
    row = env.rows[path]
    assert env.cas.usage() == (0, 0)
    assert env.catalog.manifest(row.version) == {}


# -- reader-manifest-fetch ----------------------------------------------------------------------
async def test_panic_before_fetch_fails_the_read_and_caches_nothing(env):
    path = "a/song.flac"
    with failpoints.FailScenario({"FAILPOINTS": f"{FETCH}=panic(origin gone)"}):
        with pytest.raises(FailPointPanic, match="origin gone"):
            await env.read(path)
        assert env.origin.calls["read"] == 0  # stopped before the origin was asked
        assert_nothing_cached(env, path)
        assert env.reader.statistics().open_files == 0
        with pytest.raises(FailPointPanic):
            await env.read(path, 2 * CHUNK + 5, 10)  # every fetch fails while armed
    # disarmed: the very same reads return the origin's bytes and cache them
    assert await env.read(path) == env.files[path]
    assert await env.read(path, 2 * CHUNK + 5, 10) == env.files[path][2 * CHUNK + 5: 2 * CHUNK + 15]
    row = env.rows[path]
    assert sorted(env.catalog.manifest(row.version)) == list(range(6))
    assert env.reader.statistics().origin_fetches == 6


async def test_panic_after_some_chunks_never_serves_partial_bytes(env):
    path = "a/song.flac"
    failpoints.cfg(FETCH, "2*off->panic")  # the first two chunks come through, the third fails
    with pytest.raises(FailPointPanic):
        await env.read(path)  # a read spanning all chunks: an error, not the first two chunks alone
    row = env.rows[path]
    assert sorted(env.catalog.manifest(row.version)) == [0, 1]  # what was fetched is cached, verified
    failpoints.remove(FETCH)
    assert await env.read(path) == env.files[path]
    assert env.reader.statistics().origin_fetches == 2 + 4


async def test_return_before_fetch_fails_the_read(env):
    path = "b/other.mp3"
    failpoints.cfg(FETCH, "return")
    with pytest.raises(READ_ERRORS):
        await env.read(path)
    assert_nothing_cached(env, path)


async def test_sleep_past_the_read_timeout_fails_the_read(tmp_path):
    env = make_env(tmp_path, {"x.flac": pattern_bytes(3, 3000)}, read_timeout=0.2)
    try:
        failpoints.cfg(FETCH, "sleep(3000)")
        # TooSlowError is read_timeout's own: a read that waited out the 3 s stall would have succeeded
        with pytest.raises(trio.TooSlowError):
            await env.read("x.flac")
        assert_nothing_cached(env, "x.flac")
        failpoints.remove(FETCH)
        assert await env.read("x.flac") == env.files["x.flac"]
    finally:
        env.close()


async def test_sleep_within_the_read_timeout_only_delays(env):
    failpoints.cfg(FETCH, "sleep(150)")
    with assert_logs(rf"failpoint {FETCH} sleeping 150 ms", count=1, level=logging.INFO):
        assert await env.read("b/other.mp3") == env.files["b/other.mp3"]


async def test_sleep_before_fetch_does_not_stall_other_tasks(env):
    """The point is awaited (fail_point_async): a stalled fetch must not freeze the event loop."""
    from musicfs.failpoints import _eval

    def blocking(seconds):
        raise AssertionError(f"a fetch's failpoint slept {seconds}s on the event loop's thread")

    slept: list[float] = []
    real_sleep = trio.sleep

    async def awaited(seconds):
        slept.append(seconds)
        await real_sleep(0)

    failpoints.cfg(FETCH, "sleep(800)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_eval.time, "sleep", blocking)
        patch.setattr(trio, "sleep", awaited)  # (the point imports trio when it is hit)
        assert await env.read("b/other.mp3") == env.files["b/other.mp3"]
    assert 0.8 in slept  # awaited (other tasks run meanwhile), never slept on the loop's thread


def test_pause_before_fetch_holds_the_read_until_removed(env):
    """The read (in its own trio run, in a thread) parks at the point; removing it lets the read finish."""
    path = "a/song.flac"
    result: dict = {}

    def run_read():
        try:
            result["data"] = trio.run(env.read, path)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            result["error"] = exc

    failpoints.cfg(FETCH, "pause")
    thread = threading.Thread(target=run_read, daemon=True)
    thread.start()
    try:
        assert failpoints.wait_paused(FETCH, 1, timeout=10), "the read never reached reader-manifest-fetch"
        assert thread.is_alive() and not result
        assert env.origin.calls["read"] == 0 and env.cas.usage() == (0, 0)
    finally:
        failpoints.remove(FETCH)
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    assert result["data"] == env.files[path]


def _read_pattern(tmp_path, name: str, seed: int, actions: str, reads: int = 40) -> list[bool]:
    """True where a read failed. Every read is of a chunk never fetched before, so each hits the point once."""
    data = pattern_bytes(9, reads * CHUNK)
    env = make_env(tmp_path, {"long.flac": data}, name=name)
    try:
        failpoints.set_seed(seed)
        failpoints.cfg(FETCH, actions)
        pattern = []

        async def run():
            for i in range(reads):
                try:
                    got = await env.read("long.flac", i * CHUNK, CHUNK)
                except (FailPointPanic, *READ_ERRORS):
                    pattern.append(True)
                else:
                    assert got == data[i * CHUNK:(i + 1) * CHUNK], f"wrong bytes for chunk {i}"
                    pattern.append(False)

        trio.run(run)
        failpoints.remove(FETCH)
        return pattern
    finally:
        env.close()


@pytest.mark.parametrize("task", [
    "panic",
    "return",
])
def test_probabilistic_failures_repeat_exactly_with_the_same_seed(tmp_path, task):
    first = _read_pattern(tmp_path, "run1", 4242, f"50%{task}")
    second = _read_pattern(tmp_path, "run2", 4242, f"50%{task}")
    assert True in first and False in first, f"50% should both fail and pass over 40 reads: {first}"
    assert first == second
    other = _read_pattern(tmp_path, "run3", 777, f"50%{task}")
    assert other != first  # the seed, not luck, decided the pattern (2**-40 chance of a false alarm)


# -- health-check-hang -----------------------------------------------------------------------------
def _first_healthy_in_thread(registry: OriginRegistry) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["origin"] = registry.first_healthy()
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_paused_health_probe_blocks_first_healthy_until_removed(tmp_path):
    primary = FaultyOrigin(LocalOrigin(tmp_path))
    backup = FaultyOrigin(LocalOrigin(tmp_path))
    registry = OriginRegistry([primary, backup])
    failpoints.cfg(HANG, "pause")
    thread, result = _first_healthy_in_thread(registry)
    try:
        assert failpoints.wait_paused(HANG, 1, timeout=10)
        assert failpoints.paused_count(HANG) == 1
        assert thread.is_alive() and not result
        assert primary.calls["probe"] == 0 and backup.calls["probe"] == 0  # stuck inside the first probe
    finally:
        failpoints.remove(HANG)
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert result == {"origin": primary}
    assert primary.calls["probe"] == 1 and backup.calls["probe"] == 0


def test_sleeping_health_probe_delays_first_healthy(tmp_path):
    origin = FaultyOrigin(LocalOrigin(tmp_path))
    registry = OriginRegistry([origin])
    failpoints.cfg(HANG, "sleep(500)")
    with assert_logs(rf"failpoint {HANG} sleeping 500 ms", count=1, level=logging.INFO):
        assert registry.first_healthy() is origin
    failpoints.remove(HANG)
    with assert_logs("failpoint", count=0, level=logging.INFO):
        assert registry.first_healthy() is origin


def test_panicking_health_probe_propagates_and_recovers(tmp_path):
    origin = FaultyOrigin(LocalOrigin(tmp_path))
    registry = OriginRegistry([origin])
    failpoints.cfg(HANG, "1*panic")
    with pytest.raises(FailPointPanic):
        registry.first_healthy()
    assert origin.calls["probe"] == 0
    assert registry.first_healthy() is origin  # the count is used up: the next probe runs
    assert origin.calls["probe"] == 1
