"""Process-wide failpoint state: armed points, paused callers, declarations.

One lock guards everything. `changed` is a Condition on that lock; it is
notified whenever a point is reconfigured or removed (to release paused
callers) and whenever a caller pauses (so tests can wait for that).
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ._parse import Action, parse_actions, parse_spec

lock = threading.Lock()
changed = threading.Condition(lock)

# Armed points by name. Never rebound, only mutated: the evaluator imports
# this very dict and tests its truthiness as the disarmed fast path.
points: dict[str, Point] = {}

# How many callers are currently paused at each point.
paused: Counter[str] = Counter()

# All probability draws come from this one generator so set_seed() makes a
# run reproducible.
rng = random.Random()

_declared: dict[str, str] = {}


@dataclass(eq=False)
class Point:
    """One armed configuration. cfg() always makes a new Point, so a paused
    caller knows it was released when `points[name]` is no longer its Point."""

    spec: str
    actions: list[Action]
    # Async pausers register a thread-safe wake-up callback here.
    wakers: list[Callable[[], None]] = field(default_factory=list)


def cfg(name: str, actions: str) -> None:
    """Arm `name` with `actions`, replacing (and releasing) any previous config."""
    chain = parse_actions(name, actions)
    _install({name: Point(actions.strip(), chain)})


def remove(name: str) -> None:
    """Disarm `name`; paused callers of it return."""
    with lock:
        old = points.pop(name, None)
        changed.notify_all()
    _wake(old)


def list_armed() -> list[tuple[str, str]]:
    """Armed points as (name, actions-string), sorted by name."""
    with lock:
        return sorted((name, point.spec) for name, point in points.items())


def setup_from_env(env: Mapping[str, str] = os.environ) -> None:
    """Arm every point in env["FAILPOINTS"]. All entries are parsed before
    any is applied, so a malformed value leaves the registry untouched."""
    parsed = parse_spec(env.get("FAILPOINTS", ""))
    _install({name: Point(spec, chain) for name, spec, chain in parsed})


def teardown() -> None:
    """Disarm everything and release every paused caller."""
    with lock:
        old = list(points.values())
        points.clear()
        changed.notify_all()
    for point in old:
        _wake(point)


def set_seed(seed: int) -> None:
    with lock:
        rng.seed(seed)


def _install(new: dict[str, Point]) -> None:
    with lock:
        old = [points[name] for name in new if name in points]
        points.update(new)
        changed.notify_all()
    for point in old:
        _wake(point)


def _wake(point: Point | None) -> None:
    # Sync pausers were released by notify_all(); async ones need a callback.
    if point is None:
        return
    with lock:
        wakers = list(point.wakers)
    for wake in wakers:
        wake()


def select(name: str) -> tuple[Point, Action] | None:
    """Pick the action that fires for `name` now, consuming one count.

    As in fail-rs: exhausted actions are skipped without a draw, the first
    action that passes its draw wins, and only that action's count drops.
    """
    with lock:
        point = points.get(name)
        if point is None:
            return None
        for action in point.actions:
            if action.count == 0:
                continue
            if action.probability < 1.0 and rng.random() >= action.probability:
                continue
            if action.count is not None:
                action.count -= 1
            return point, action
    return None


def pause(name: str, point: Point) -> None:
    """Block the thread until `point` stops being the config of `name`."""
    with changed:
        paused[name] += 1
        changed.notify_all()
        try:
            while points.get(name) is point:
                changed.wait()
        finally:
            _unpause(name)


def register_waker(name: str, point: Point, wake: Callable[[], None]) -> bool:
    """Record an async pauser. Returns False if `point` was already replaced."""
    with changed:
        if points.get(name) is not point:
            return False
        point.wakers.append(wake)
        paused[name] += 1
        changed.notify_all()
        return True


def unregister_waker(name: str, point: Point, wake: Callable[[], None]) -> None:
    with changed:
        point.wakers.remove(wake)
        _unpause(name)


def _unpause(name: str) -> None:
    # Caller holds the lock.
    paused[name] -= 1
    if paused[name] <= 0:
        del paused[name]
    changed.notify_all()


def paused_count(name: str) -> int:
    """How many callers (sync or async) are paused at `name` right now."""
    with lock:
        return paused.get(name, 0)


def wait_paused(name: str, count: int = 1, timeout: float | None = 5.0) -> bool:
    """Block until at least `count` callers are paused at `name`.

    Returns False on timeout. Meant for tests that must know a caller has
    reached a `pause` before they act.
    """
    with changed:
        return changed.wait_for(lambda: paused.get(name, 0) >= count, timeout)


def declare(name: str, description: str) -> str:
    """Record that the code base has a point `name`; returns `name`.

    Declaring the same name twice is fine only with the same description,
    which catches two call sites accidentally sharing one name.
    """
    if not name.strip():
        raise ValueError("failpoint name must not be empty")
    if "\n" in description:
        raise ValueError(f"failpoint {name!r}: description must be one line")
    with lock:
        known = _declared.setdefault(name, description)
    if known != description:
        raise ValueError(
            f"failpoint {name!r} declared twice: {known!r} vs {description!r}"
        )
    return name


def declared() -> dict[str, str]:
    """All declared points, name -> description, sorted by name."""
    with lock:
        return dict(sorted(_declared.items()))


class FailScenario:
    """Context manager for a test: arm from FAILPOINTS on entry, clear on exit.

    As in fail-rs, entering first clears any leftover configuration.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env

    def __enter__(self) -> FailScenario:
        teardown()
        setup_from_env(os.environ if self._env is None else self._env)
        return self

    def __exit__(self, *exc_info: object) -> None:
        teardown()
