"""Tests for musicfs.failpoints (the vendored fail-rs look-alike)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

from musicfs import failpoints as fp
from musicfs.failpoints import FailPointPanic, _registry
from musicfs_test_utils.assertions import assert_logs

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_registry():
    fp.teardown()
    yield
    fp.teardown()


def run_in_thread(name: str) -> tuple[threading.Thread, dict]:
    """Call fail_point(name) in a daemon thread; its result lands in the dict."""
    result: dict = {}

    def target() -> None:
        result["value"] = fp.fail_point(name)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def calls(name: str, n: int) -> list[str | None]:
    return [fp.fail_point(name) for _ in range(n)]


# --- tasks -----------------------------------------------------------------


def test_unarmed_point_returns_none():
    assert fp.fail_point("nothing-here") is None


def test_disarmed_fast_path_skips_the_registry(monkeypatch):
    def boom(name):
        raise AssertionError("select() called while nothing is armed")

    monkeypatch.setattr(_registry, "select", boom)
    assert fp.fail_point("x") is None


def test_off_does_nothing():
    fp.cfg("p", "off")
    assert fp.fail_point("p") is None


def test_return_with_and_without_arg():
    fp.cfg("a", "return(hello)")
    fp.cfg("b", "return")
    fp.cfg("c", "return()")
    assert fp.fail_point("a") == "hello"
    assert fp.fail_point("b") == ""
    assert fp.fail_point("c") == ""


def test_return_arg_may_contain_percent_and_arrow():
    fp.cfg("pct", "return(50%)")
    fp.cfg("arrow", "1*return(a->b)->return(c)")
    assert fp.fail_point("pct") == "50%"
    assert calls("arrow", 2) == ["a->b", "c"]


@pytest.mark.parametrize("action,seconds", [("sleep(60)", 0.06), ("delay(40)", 0.04)])
def test_sleep_and_delay_block_for_the_given_millis(monkeypatch, action, seconds):
    from musicfs.failpoints import _eval

    slept: list[float] = []
    monkeypatch.setattr(_eval.time, "sleep", slept.append)
    fp.cfg("s", action)
    assert fp.fail_point("s") is None
    assert slept == [seconds]


def test_panic_with_message():
    fp.cfg("p", "panic(disk on fire)")
    with pytest.raises(FailPointPanic) as info:
        fp.fail_point("p")
    assert str(info.value) == "disk on fire"
    assert isinstance(info.value, Exception)


def test_panic_without_message():
    fp.cfg("p", "panic")
    with pytest.raises(FailPointPanic, match=r"^failpoint p panic$"):
        fp.fail_point("p")


def test_print_logs_at_info():
    fp.cfg("with-msg", "print(hello there)")
    fp.cfg("no-msg", "print")
    with assert_logs("^musicfs.failpoints: ", count=2, level=logging.INFO) as lines:
        assert fp.fail_point("with-msg") is None
        assert fp.fail_point("no-msg") is None
    assert lines == ["musicfs.failpoints: hello there", "musicfs.failpoints: failpoint no-msg executed."]
    assert [r.levelno for r in lines.records] == [logging.INFO, logging.INFO]


def test_yield_is_a_no_op():
    fp.cfg("y", "yield")
    assert fp.fail_point("y") is None


def test_pause_is_released_by_remove():
    fp.cfg("p", "pause")
    thread, result = run_in_thread("p")
    assert fp.wait_paused("p", timeout=2)
    assert thread.is_alive()
    assert fp.paused_count("p") == 1
    fp.remove("p")
    thread.join(2)
    assert not thread.is_alive()
    assert result == {"value": None}
    assert fp.paused_count("p") == 0


def test_pause_is_released_by_cfg_from_another_thread():
    fp.cfg("p", "pause")
    paused = [run_in_thread("p") for _ in range(2)]
    assert fp.wait_paused("p", count=2, timeout=2)
    changer = threading.Thread(target=fp.cfg, args=("p", "return(after)"))
    changer.start()
    changer.join(2)
    for thread, result in paused:
        thread.join(2)
        assert not thread.is_alive()
        assert result == {"value": None}  # as in fail-rs: a released pause returns nothing
    assert fp.fail_point("p") == "after"


def test_pause_is_released_by_teardown():
    fp.cfg("p", "pause")
    thread, result = run_in_thread("p")
    assert fp.wait_paused("p", timeout=2)
    fp.teardown()
    thread.join(2)
    assert not thread.is_alive()
    assert result == {"value": None}


def test_wait_paused_times_out_when_nobody_pauses():
    fp.cfg("p", "pause")
    assert fp.wait_paused("p", timeout=0.01) is False


CRASH_SCRIPT = """
from musicfs import failpoints as fp
with fp.FailScenario():
    print("before", flush=True)
    fp.fail_point("boom")
    print("after", flush=True)
"""


def test_crash_kills_the_process_with_sigkill():
    env = dict(os.environ, FAILPOINTS="boom=crash", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout == "before\n"


# --- probability, counts, chains --------------------------------------------


def test_zero_percent_never_fires():
    fp.cfg("p", "0%return(x)")
    assert calls("p", 200) == [None] * 200


def test_hundred_percent_always_fires():
    fp.cfg("p", "100%return(x)")
    assert calls("p", 200) == ["x"] * 200


def test_fifty_percent_fires_some_but_not_all():
    fp.set_seed(1234)
    fp.cfg("p", "50%return(x)")
    fired = calls("p", 200).count("x")
    assert 0 < fired < 200


def test_fractional_percentage_parses():
    fp.cfg("p", "12.5%return(x)")
    fp.set_seed(7)
    assert 0 < calls("p", 400).count("x") < 200


def test_count_fires_then_falls_through():
    fp.cfg("p", "2*return(x)")
    assert calls("p", 4) == ["x", "x", None, None]


def test_exhausted_action_is_skipped_in_a_chain():
    fp.cfg("p", "1*return(a)->return(b)")
    assert calls("p", 4) == ["a", "b", "b", "b"]


def test_off_in_a_chain_wins_while_it_fires():
    fp.cfg("p", "2*off->return(x)")
    assert calls("p", 3) == [None, None, "x"]


def test_count_drops_only_when_the_action_fires():
    fp.set_seed(99)
    fp.cfg("p", "50%3*return(a)->return(b)")
    results = calls("p", 200)
    assert results.count("a") == 3
    assert results.count("b") == 197


def test_zero_count_never_fires():
    fp.cfg("p", "0*return(a)->return(b)")
    assert calls("p", 2) == ["b", "b"]


def test_counts_decrement_atomically_across_threads():
    fp.cfg("p", "100*return(x)")
    hits = []
    lock = threading.Lock()

    def worker() -> None:
        mine = calls("p", 200).count("x")
        with lock:
            hits.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(hits) == 100


def test_cfg_replaces_and_resets_counts():
    fp.cfg("p", "1*return(a)")
    assert calls("p", 2) == ["a", None]
    fp.cfg("p", "1*return(b)")
    assert calls("p", 2) == ["b", None]
    assert fp.list() == [("p", "1*return(b)")]


def test_remove_disarms():
    fp.cfg("p", "return(x)")
    fp.remove("p")
    fp.remove("never-armed")  # not an error
    assert fp.fail_point("p") is None
    assert fp.list() == []


# --- determinism -----------------------------------------------------------


def _sequence(seed: int) -> list[str | None]:
    fp.set_seed(seed)
    fp.cfg("p", "50%return(x)")
    return calls("p", 200)


def test_same_seed_gives_the_same_sequence():
    first = _sequence(42)
    second = _sequence(42)
    assert first == second
    assert 0 < first.count("x") < 200


def test_different_seed_gives_a_different_sequence():
    assert _sequence(42) != _sequence(43)


# --- parsing ---------------------------------------------------------------


BAD_SPECS = [
    "a=sleep(x)",
    "a=bogus",
    "a=",
    "=return",
    "a=return(",
    "a=150%return",
    "a=-1*return",
    "a=sleep",
    "a=delay(1.5)",
    "a=off(1)",
    "a=Return",
    "a=return(x)y",
    "a=return->",
    "a=x%return",
    "a=1.5*return",
    "a=return(x))",
    "justaname",
]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_malformed_spec_raises_quoting_the_text(spec):
    with pytest.raises(ValueError) as info:
        fp.setup_from_env({"FAILPOINTS": spec})
    assert spec in str(info.value)
    assert fp.list() == []


def test_cfg_error_message_names_action_and_entry():
    with pytest.raises(ValueError, match=r"bad failpoint action 'sleep\(x\)' in 'a=sleep\(x\)'"):
        fp.cfg("a", "sleep(x)")


def test_cfg_rejects_empty_name():
    with pytest.raises(ValueError, match="empty name"):
        fp.cfg("", "return")


def test_malformed_entry_leaves_registry_untouched():
    fp.cfg("keep", "off")
    with pytest.raises(ValueError, match="bogus"):
        fp.setup_from_env({"FAILPOINTS": "a=return(1);b=bogus"})
    assert fp.list() == [("keep", "off")]


def test_env_with_several_points():
    spec = " a=return(1) ; b = 2*print(hi->there) ;c=off;d=return(x;y);; "
    fp.setup_from_env({"FAILPOINTS": spec})
    assert fp.list() == [
        ("a", "return(1)"),
        ("b", "2*print(hi->there)"),
        ("c", "off"),
        ("d", "return(x;y)"),
    ]
    assert fp.fail_point("a") == "1"
    assert fp.fail_point("d") == "x;y"


def test_env_without_failpoints_arms_nothing():
    fp.setup_from_env({})
    assert fp.list() == []


def test_list_is_sorted_by_name():
    fp.cfg("zeta", "off")
    fp.cfg("alpha", "1*return(a)->pause")
    fp.cfg("mid", " 10%sleep(1) ")
    assert fp.list() == [
        ("alpha", "1*return(a)->pause"),
        ("mid", "10%sleep(1)"),
        ("zeta", "off"),
    ]


# --- FailScenario ------------------------------------------------------------


def test_fail_scenario_loads_env_and_clears_on_exit(monkeypatch):
    monkeypatch.setenv("FAILPOINTS", "x=return(1);y=off")
    fp.cfg("leftover", "return(old)")
    with fp.FailScenario() as scenario:
        assert isinstance(scenario, fp.FailScenario)
        assert fp.list() == [("x", "return(1)"), ("y", "off")]
        assert fp.fail_point("x") == "1"
        fp.cfg("added-inside", "off")
    assert fp.list() == []
    assert fp.fail_point("x") is None


def test_fail_scenario_clears_on_exception(monkeypatch):
    monkeypatch.setenv("FAILPOINTS", "x=return(1)")
    with pytest.raises(RuntimeError):
        with fp.FailScenario():
            assert fp.fail_point("x") == "1"
            raise RuntimeError("test body failed")
    assert fp.list() == []


def test_fail_scenario_rejects_malformed_env(monkeypatch):
    monkeypatch.setenv("FAILPOINTS", "x=nope")
    with pytest.raises(ValueError, match="x=nope"):
        with fp.FailScenario():
            pass


# --- declarations -------------------------------------------------------------


def test_declare_returns_the_name_and_records_it():
    name = fp.declare("test-declare-one", "a point used by the unit tests")
    assert name == "test-declare-one"
    assert fp.declare("test-declare-one", "a point used by the unit tests") == name
    known = fp.declared()
    assert known["test-declare-one"] == "a point used by the unit tests"
    assert list(known) == sorted(known)


def test_declare_twice_with_a_different_description_fails():
    fp.declare("test-declare-two", "first meaning")
    with pytest.raises(ValueError, match="test-declare-two"):
        fp.declare("test-declare-two", "second meaning")
    assert fp.declared()["test-declare-two"] == "first meaning"


def test_declare_rejects_multi_line_descriptions():
    with pytest.raises(ValueError):
        fp.declare("test-declare-three", "line one\nline two")
    assert "test-declare-three" not in fp.declared()


def test_undeclared_names_may_be_armed():
    assert "ad-hoc-point" not in fp.declared()
    fp.cfg("ad-hoc-point", "return(ok)")
    assert fp.fail_point("ad-hoc-point") == "ok"


def test_declared_returns_a_copy():
    fp.declare("test-declare-four", "copy check")
    fp.declared().clear()
    assert "test-declare-four" in fp.declared()


# --- async flavour --------------------------------------------------------------


async def test_async_return_panic_and_off():
    fp.cfg("r", "1*return(v)->off")
    fp.cfg("p", "panic(async boom)")
    assert await fp.fail_point_async("r") == "v"
    assert await fp.fail_point_async("r") is None
    assert await fp.fail_point_async("unarmed") is None
    with pytest.raises(FailPointPanic, match="async boom"):
        await fp.fail_point_async("p")


async def test_async_sleep_does_not_block_the_loop(autojump_clock):
    fp.cfg("s", "sleep(1000)")
    state = {"point_done": False, "other_saw_point_done": None}

    async def hits_point() -> None:
        assert await fp.fail_point_async("s") is None
        state["point_done"] = True

    async def other_task() -> None:
        await trio.sleep(0.5)
        state["other_saw_point_done"] = state["point_done"]

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hits_point)
        nursery.start_soon(other_task)
    # The other task ran half-way through the point's sleep.
    assert state["other_saw_point_done"] is False
    assert state["point_done"] is True
    assert trio.current_time() - start >= 1.0


async def test_async_delay_uses_trio_time(autojump_clock):
    fp.cfg("d", "delay(250)")
    start = trio.current_time()
    await fp.fail_point_async("d")
    assert trio.current_time() - start >= 0.25


async def test_async_yield_is_a_checkpoint():
    fp.cfg("y", "yield")
    reached = False
    with trio.CancelScope() as scope:
        scope.cancel()
        await fp.fail_point_async("y")
        reached = True
    assert scope.cancelled_caught
    assert reached is False


async def test_async_pause_released_by_remove():
    fp.cfg("p", "pause")
    result = {}

    async def caller() -> None:
        result["value"] = await fp.fail_point_async("p")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            assert await trio.to_thread.run_sync(fp.wait_paused, "p")
            assert "value" not in result
            fp.remove("p")
    assert result == {"value": None}
    assert fp.paused_count("p") == 0


async def test_async_pause_released_by_cfg_from_a_thread():
    fp.cfg("p", "pause")
    result = {}

    async def caller() -> None:
        result["value"] = await fp.fail_point_async("p")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            assert await trio.to_thread.run_sync(fp.wait_paused, "p")
            await trio.to_thread.run_sync(fp.cfg, "p", "return(next)")
    assert result == {"value": None}
    assert await fp.fail_point_async("p") == "next"


async def test_async_pause_can_be_cancelled():
    fp.cfg("p", "pause")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fp.fail_point_async, "p")
            assert await trio.to_thread.run_sync(fp.wait_paused, "p")
            nursery.cancel_scope.cancel()
    assert fp.paused_count("p") == 0
    assert fp.list() == [("p", "pause")]


async def test_async_pause_released_by_teardown():
    fp.cfg("p", "pause")
    result = {}

    async def caller() -> None:
        result["value"] = await fp.fail_point_async("p")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            assert await trio.to_thread.run_sync(fp.wait_paused, "p")
            fp.teardown()
    assert result == {"value": None}
