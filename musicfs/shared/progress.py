"""Progress for long work: a bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

log = logging.getLogger("musicfs.shared.progress")


class Progress:
    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, interval: float = 5.0,
                 on_update: Callable[[int, int], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.on_update = on_update
        self._clock = clock
        self._last = clock()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if self.tty:
            self._draw()
        elif now - self._last >= self.interval:
            log.info("%s: %d/%d", self.label, self.done, self.total)
        if now - self._last >= self.interval or self.tty:
            self._last = now
            if self.on_update:
                self.on_update(self.done, self.total)

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // self.total if self.total else width
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
        self.stream.flush()

    def finish(self) -> None:
        if self.on_update:
            self.on_update(self.done, self.total)
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
