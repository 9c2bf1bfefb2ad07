"""Wall clocks a test sets by hand (OriginRegistry.wall_clock and the like)."""

from __future__ import annotations


class Clock:
    """Reads `now`, which the test moves."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Ticking:
    """A wall clock that moves `step` seconds each time it is read."""

    def __init__(self, now: float, step: float):
        self.now, self.step = now, step

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now
