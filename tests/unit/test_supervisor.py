"""TaskSupervisor: failures are logged with the task name, critical tasks restart with backoff (row 2.6)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from musicfs.daemon.supervisor import TaskSupervisor
from musicfs_test_utils.assertions import assert_logs


@pytest.mark.resilience("2.6")
@pytest.mark.expected_log(r"task flaky failed 3 times")
async def test_critical_task_restarts_with_backoff_then_is_marked_failed(autojump_clock):
    runs = []

    async def flaky():
        runs.append(trio.current_time())
        raise RuntimeError(f"boom {len(runs)}")

    with assert_logs(r": task flaky failed$", count=3) as lines:
        async with TaskSupervisor(max_failures=3, window=60, backoff=1.0, clock=trio.current_time) as sup:
            sup.spawn_critical("flaky", flaky)
    assert all(r.exc_info for r in lines.records)
    state = sup.task_status("flaky")
    assert state.state == "failed" and state.failures == 3 and state.restarts == 2
    assert sup.degraded == ["flaky"]
    assert "boom 3" in state.last_error
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    assert gaps == pytest.approx([1.0, 2.0])  # exponential backoff


@pytest.mark.resilience("2.6")
@pytest.mark.expected_log(r"task once failed")
async def test_a_crashing_task_does_not_stop_the_others():
    done = trio.Event()

    async def crash():
        raise ValueError("bad")

    async def worker():
        await trio.sleep(0)
        done.set()

    async with TaskSupervisor() as sup:
        sup.spawn_supervised("once", crash)
        sup.spawn_supervised("worker", worker)
    assert done.is_set()
    assert sup.task_status("once").state == "failed"
    assert sup.task_status("worker").state == "done"
    stats = sup.statistics()
    assert stats.tasks["once"].last_error == "ValueError: bad" and stats.degraded == ("once",)


@pytest.mark.expected_log(r"task flaky failed")
async def test_failures_outside_the_window_do_not_count(autojump_clock):
    runs = 0

    async def flaky():
        nonlocal runs
        runs += 1
        if runs < 6:
            raise RuntimeError("transient")

    async with TaskSupervisor(max_failures=3, window=5, backoff=4.0, max_backoff=4.0, clock=trio.current_time) as sup:
        sup.spawn_critical("flaky", flaky)
    assert sup.task_status("flaky").state == "done" and runs == 6


async def test_cancel_stops_one_task_without_restart():
    started = trio.Event()

    async def forever():
        started.set()
        await trio.sleep_forever()

    async with TaskSupervisor() as sup:
        sup.spawn_critical("loop", forever)
        await started.wait()
        sup.cancel("loop")
    assert sup.task_status("loop").state == "cancelled"


async def test_stop_waits_until_a_cancelled_task_is_over_and_names_those_that_overrun():
    # a task in a worker thread that cannot be abandoned (a rescan) outlives its cancel until the thread returns:
    # what is closed after stop() must not still be in use
    import threading

    release, finished = threading.Event(), []

    def work():
        release.wait(10)
        finished.append(True)

    async def in_thread():
        await trio.to_thread.run_sync(work)  # not abandoned on cancel

    async with TaskSupervisor() as sup:
        sup.spawn_supervised("scan", in_thread)
        sup.spawn_supervised("idle", trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        assert await sup.stop(["scan", "idle"], timeout=0.05) == ["scan"]  # its thread still runs
        release.set()
        assert await sup.stop(["scan", "idle"], timeout=10) == []
        assert finished == [True] and sup.task_status("idle").state == "cancelled"


@pytest.mark.resilience("7.5")
@pytest.mark.expected_log(r"task essential failed", r"task essential failed \d+ times in 60s; restarting it")
async def test_an_essential_task_is_restarted_for_the_daemons_life_never_given_up(autojump_clock):
    runs = []

    async def flaky():
        runs.append(trio.current_time())
        if len(runs) < 12:
            raise RuntimeError(f"boom {len(runs)}")
        await trio.sleep_forever()  # the twelfth start serves

    async with TaskSupervisor(max_failures=3, window=60, backoff=1.0, max_backoff=4.0,
                              clock=trio.current_time) as sup:
        sup.spawn_essential("essential", flaky)
        while len(runs) < 12:
            await trio.sleep(1)
        state = sup.task_status("essential")
        assert state.state == "running" and state.restarts == 11 and sup.degraded == []
        assert max(b - a for a, b in zip(runs, runs[1:])) == pytest.approx(4.0)  # backoff capped, never ended
        sup.cancel_all()
