"""Row 4.7: an origin call that never returns (a hung NFS share behind a local source) costs only itself.

Its read gives up at the deadline and hands back its turn of the fetch limit; the thread is counted as stuck and
its origin marked unhealthy with the reason, so reads go to another origin or fail fast (offline) instead of
waiting again; no probe makes the origin healthy while STUCK_LIMIT of its calls are stuck.
"""

from __future__ import annotations

import threading

import pytest
import trio

from musicfs.origins.health_records import HEALTHY, UNHEALTHY
from musicfs.origins.memory import READ, MemoryOrigin, serve
from musicfs.origins.registry import STUCK_LIMIT, OriginRegistry
from musicfs.shared.errors import OriginOffline
from musicfs_test_utils.eventually import eventually_async

FILES = {"hung.flac": b"h" * 1000, "ok.flac": b"o" * 1000}
# The reads' deadline. A hung call is counted when a read gives up at its deadline while the call runs: its
# worker thread must have started by then, which on a machine kept busy can take a few hundred milliseconds.
DEADLINE = 1.0


@pytest.fixture
def release():
    """Set at teardown: the hung calls return, their threads end."""
    event = threading.Event()
    yield event
    event.set()


def hanging(release: threading.Event, name: str) -> MemoryOrigin:
    """An origin whose reads of hung.flac never return (until the test ends)."""
    files = serve(FILES, name=name)

    def handler(request):
        if request.op == READ and request.path == "hung.flac":
            release.wait(60)
        return files(request)

    return MemoryOrigin(handler, name=name)


async def fetch(registry: OriginRegistry, path: str) -> bytes | None:
    """The file whole, or None when the read gave up at DEADLINE."""
    with trio.move_on_after(DEADLINE):
        [data] = await registry.fetch_ranges(path, [(0, 1000)])
        return data
    return None


@pytest.mark.resilience("4.7")
async def test_more_hung_calls_than_fetch_threads_leave_the_other_files_readable(release):
    registry = OriginRegistry([hanging(release, "a")], backoff=0.0, fetch_threads=2)  # unmonitored: keeps trying
    for n in range(1, 2 * registry.fetch_threads + 2):
        assert await fetch(registry, "hung.flac") is None
        [stats] = registry.statistics()
        assert stats.stuck == n and stats.state == UNHEALTHY and "stuck past the read deadline" in stats.last_error
        assert await fetch(registry, "ok.flac") == FILES["ok.flac"]  # the fetch limit was handed back
    release.set()
    await eventually_async(lambda: registry.statistics()[0].stuck == 0, 5, "the hung calls returned, uncounted")


@pytest.mark.resilience("4.7")
@pytest.mark.expected_log(r"origin a is unhealthy: a: 1 call stuck past the read deadline")
async def test_a_hung_call_sends_reads_to_the_next_origin_at_once(release):
    registry = OriginRegistry([hanging(release, "a"), MemoryOrigin(serve(FILES, name="b"), name="b")], backoff=0.0)
    registry.monitored = True  # as while the HealthMonitor runs
    assert await fetch(registry, "hung.flac") is None
    a, b = registry.statistics()
    assert (a.state, a.stuck, b.state) == (UNHEALTHY, 1, "unknown")
    asked = a.requests
    assert await fetch(registry, "hung.flac") == FILES["hung.flac"]  # from the replica, with no wait
    assert registry.statistics()[0].requests == asked  # the hung origin was not asked again (no deadline waited)


@pytest.mark.resilience("4.7")
@pytest.mark.expected_log(r"origin a is unhealthy: a: \d calls? stuck past the read deadline", r"every origin is down")
async def test_the_only_origin_hung_is_offline_and_probes_cannot_revive_it_while_calls_hang(release):
    origin = hanging(release, "a")
    registry = OriginRegistry([origin], backoff=0.0)
    registry.monitored = True
    for _ in range(STUCK_LIMIT):
        assert await fetch(registry, "hung.flac") is None
        registry.record_ok(origin, probe=True)  # the share's root still lists: the probe passes
    assert registry.offline and registry.statistics()[0].stuck == STUCK_LIMIT
    with pytest.raises(OriginOffline):  # at once: the kernel's retry of the read does not wait again
        await registry.fetch_ranges("ok.flac", [(0, 1000)])

    release.set()
    await eventually_async(lambda: registry.statistics()[0].stuck == 0, 5, "the hung calls returned, uncounted")
    registry.record_ok(origin, probe=True)  # the calls returned: the next good probe brings it back
    assert registry.statistics()[0].state == HEALTHY
    assert await fetch(registry, "ok.flac") == FILES["ok.flac"]
