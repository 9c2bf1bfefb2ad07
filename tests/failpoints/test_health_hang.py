"""health-check-hang through the HealthMonitor (rows 4.2.1, 4.2.2).

Run with `pytest --failpoints -p no:xdist`: these tests arm the process-wide failpoint registry.
The point sits inside every probe (in its worker thread), so `1*pause` hangs exactly one probe of a
round, whichever origin reaches it first.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from musicfs import failpoints
from musicfs.origins.health import HealthMonitor
from musicfs.origins.health_records import HEALTHY, UNHEALTHY
from musicfs.origins.local import LocalOrigin
from musicfs.origins.registry import OriginRegistry
from musicfs.shared import points
from musicfs_test_utils.eventually import eventually

HANG = points.HEALTH_CHECK_HANG
TIMEOUT = 3.0



@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.25)


def local_origins(tmp_path, n: int) -> list[LocalOrigin]:
    made = []
    for i in range(n):
        (tmp_path / f"o{i}").mkdir()
        made.append(LocalOrigin(tmp_path / f"o{i}"))
    return made


@pytest.mark.resilience("4.2.1", "4.2.2")
@pytest.mark.expected_log(r"is unhealthy: .*health probe (timed out after 3s|still hanging)")
async def test_a_probe_paused_at_health_check_hang_times_out_alone(clock, tmp_path):
    origins = local_origins(tmp_path, 4)
    registry = OriginRegistry(origins)
    monitor = HealthMonitor(registry, timeout=TIMEOUT)
    failpoints.cfg(HANG, "1*pause")
    started = trio.current_time()
    await monitor.probe_all()
    assert trio.current_time() - started == pytest.approx(TIMEOUT, abs=0.01)  # one timeout, not one per origin
    assert failpoints.paused_count(HANG) == 1
    states = [h.state for h in registry.health]
    assert states.count(UNHEALTHY) == 1 and states.count(HEALTHY) == 3
    hung = origins[states.index(UNHEALTHY)]
    assert "timed out after 3s" in registry.health_of(hung).last_error

    failpoints.remove(HANG)  # the probe thread wakes up and ends; the next round finds every origin well
    await trio.to_thread.run_sync(eventually, lambda: not monitor._inflight, 10.0, "the paused probe ending")
    await monitor.probe_all()
    assert [h.state for h in registry.health] == [HEALTHY] * 4


@pytest.mark.resilience("4.2.1")
@pytest.mark.expected_log(r"is unhealthy: .*health probe timed out after 0.3s")
async def test_a_sleeping_probe_past_its_timeout_marks_the_origin_unhealthy(tmp_path):
    [origin] = local_origins(tmp_path, 1)
    registry = OriginRegistry([origin])
    monitor = HealthMonitor(registry, timeout=0.3)
    failpoints.cfg(HANG, "1*sleep(2000)")
    await monitor.probe_all()
    assert registry.health_of(origin).state == UNHEALTHY
    assert "timed out after 0.3s" in registry.health_of(origin).last_error  # the probe's timeout ended it ...
    assert monitor._inflight  # ... while the 2 s sleep still runs in its thread: not waited for
