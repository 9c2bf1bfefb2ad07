"""HealthMonitor: probe timeouts (4.2.1), parallel probes (4.2.2), states, wake-ups and recovery.

Timing runs on trio's MockClock, so "one timeout" is measured in virtual seconds. The clock jumps only
after the loop has been idle for AUTOJUMP real seconds: probes of healthy origins run in real worker
threads, and that is their time to answer before the clock is allowed to jump to the next deadline.
"""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from musicfs.origins.health import HealthMonitor
from musicfs.origins.health_records import HEALTHY, UNHEALTHY, UNKNOWN
from musicfs.origins.local import LocalOrigin
from musicfs.origins.registry import OriginRegistry
from musicfs.shared.errors import OriginTransient
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.faulty_origin import (
    FaultyOrigin,
    Healthy,
    ReturnError,
    TimeoutMs,
)

AUTOJUMP = 0.25
TIMEOUT = 5.0
HANG = TimeoutMs(120_000)  # far longer than any test: only set_mode() (or the end of the process) frees it


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP)


@pytest.fixture
def origins(tmp_path):
    made: list[FaultyOrigin] = []

    def make(n: int) -> list[FaultyOrigin]:
        for i in range(n):
            root = tmp_path / f"origin{len(made)}"
            root.mkdir()
            made.append(FaultyOrigin(LocalOrigin(root)))
            made[-1].name = f"o{len(made) - 1}"
        return made[-n:]

    yield make
    for origin in made:
        origin.set_mode(Healthy())  # free threads stuck in a hang


def states(reg: OriginRegistry) -> list[str]:
    return [h.state for h in reg.health]


async def wait_probe_threads_done(monitor: HealthMonitor) -> None:
    await trio.to_thread.run_sync(eventually, lambda: not monitor._inflight, 10.0, "abandoned probe threads ending")


@pytest.mark.resilience("4.2.1")
@pytest.mark.expected_log(r"origin o0 is unhealthy: o0: health probe timed out after 5s")
async def test_a_hanging_probe_times_out_and_marks_its_origin_unhealthy(clock, origins):
    [origin] = origins(1)
    reg = OriginRegistry([origin])
    monitor = HealthMonitor(reg, timeout=TIMEOUT)
    origin.set_mode(HANG)
    started = trio.current_time()
    await monitor.probe_all()
    assert trio.current_time() - started == pytest.approx(TIMEOUT, abs=0.01)
    h = reg.health_of(origin)
    assert h.state == UNHEALTHY and "timed out after 5s" in h.last_error and h.last_check is not None
    assert origin.calls["probe"] == 1


@pytest.mark.resilience("4.2.2")
@pytest.mark.expected_log(r"origin o[024] is unhealthy: .*health probe (timed out|still hanging)")
async def test_dead_origins_among_healthy_ones_cost_one_timeout_and_healthy_ones_stay_healthy(clock, origins):
    group = origins(6)
    dead = [group[0], group[2], group[4]]  # the primary among them
    for origin in dead:
        origin.set_mode(HANG)
    reg = OriginRegistry(group)
    monitor = HealthMonitor(reg, timeout=TIMEOUT)

    started = trio.current_time()
    await monitor.probe_all()
    elapsed = trio.current_time() - started
    # In series this would be 3 timeouts; in parallel it is one.
    assert elapsed == pytest.approx(TIMEOUT, abs=0.01), elapsed
    assert states(reg) == [UNHEALTHY, HEALTHY, UNHEALTHY, HEALTHY, UNHEALTHY, HEALTHY]
    assert all(reg.health_of(o).last_ok is not None for o in group[1::2])

    # The dead ones' threads are still stuck: the next round does not pile up more threads on them,
    # it reports them at once, and the healthy ones stay healthy.
    started = trio.current_time()
    await monitor.probe_all()
    assert trio.current_time() - started < 1.0
    assert [o.calls["probe"] for o in dead] == [1, 1, 1]
    assert all("still hanging" in reg.health_of(o).last_error for o in dead)
    assert states(reg) == [UNHEALTHY, HEALTHY, UNHEALTHY, HEALTHY, UNHEALTHY, HEALTHY]
    assert reg.order() == group[1::2] + dead  # unmonitored: every origin, healthy ones first ...
    reg.monitored = True
    assert reg.order() == group[1::2]  # ... monitored: the dead ones are skipped

    for origin in dead:  # they come back
        origin.set_mode(Healthy())
    await wait_probe_threads_done(monitor)
    await monitor.probe_all()
    assert states(reg) == [HEALTHY] * 6


async def test_probes_really_run_at_the_same_time(origins):
    """Each probe waits at a barrier for all the others: in series the barrier would break."""
    group = origins(4)
    barrier = threading.Barrier(len(group), timeout=10)
    seen: list[str] = []

    def probe(origin):
        barrier.wait()
        seen.append(threading.current_thread().name)

    reg = OriginRegistry(group)
    await HealthMonitor(reg, timeout=20, probe=probe).probe_all()
    assert states(reg) == [HEALTHY] * 4
    assert len(set(seen)) == 4  # four worker threads


@pytest.mark.expected_log(r"origin o1 is unhealthy: faulty\(.*\): injected transient error",
                          r"origin o1 is unhealthy: RuntimeError: probe bug")
async def test_probe_errors_mark_unhealthy_with_the_error_and_never_stop_the_monitor(clock, origins):
    good, bad = origins(2)
    bad.set_mode(ReturnError("transient"))
    reg = OriginRegistry([good, bad])
    monitor = HealthMonitor(reg, timeout=TIMEOUT)
    await monitor.probe_all()
    assert states(reg) == [HEALTHY, UNHEALTHY]
    assert "injected transient error" in reg.health_of(bad).last_error

    def buggy(origin):
        if origin is bad:
            raise RuntimeError("probe bug")
        origin.probe()

    monitor._probe = buggy
    await monitor.probe_all()
    assert states(reg) == [HEALTHY, UNHEALTHY]
    assert reg.health_of(bad).last_error == "RuntimeError: probe bug"


@pytest.mark.resilience("4.2.3")
@pytest.mark.expected_log(r"origin o[01] is unhealthy", r"every origin is down: offline")
async def test_the_monitor_loop_goes_offline_and_back_by_itself(clock, origins):
    group = origins(2)
    reg = OriginRegistry(group)
    changes: list[bool] = []
    monitor = HealthMonitor(reg, interval=10.0, timeout=TIMEOUT, on_change=lambda: changes.append(reg.offline))
    assert states(reg) == [UNKNOWN, UNKNOWN]
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        assert reg.monitored and states(reg) == [HEALTHY, HEALTHY] and not reg.offline
        for origin in group:
            origin.set_mode(ReturnError("transient"))
        await trio.sleep(10.5)  # the next round
        assert reg.offline and states(reg) == [UNHEALTHY, UNHEALTHY]
        for origin in group:
            origin.set_mode(Healthy())
        await trio.sleep(10.0)
        assert not reg.offline and states(reg) == [HEALTHY, HEALTHY]
        assert monitor.rounds == 3
        nursery.cancel_scope.cancel()
    assert changes == [False, True, False]
    assert not reg.monitored  # a stopped monitor no longer gates reads


@pytest.mark.expected_log(r"origin o0 is unhealthy: injected", r"every origin is down")
async def test_a_failing_read_wakes_the_monitor_for_an_early_probe(clock, origins):
    [origin] = origins(1)
    reg = OriginRegistry([origin])
    monitor = HealthMonitor(reg, interval=1000.0, timeout=TIMEOUT, min_gap=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        assert monitor.rounds == 1
        started = trio.current_time()
        await trio.to_thread.run_sync(reg.record_failure, origin, OriginTransient("injected", origin="o0"))
        while monitor.rounds < 2:
            await trio.sleep(0.1)
        assert trio.current_time() - started < 2.0  # not the 1000 s interval
        assert reg.health_of(origin).state == HEALTHY  # the probe found it fine after all
        nursery.cancel_scope.cancel()
