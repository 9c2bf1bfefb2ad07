"""The SFTP sessions of one origin: at most N at once, the least busy one used, dead ones replaced."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..shared import OriginTimeout
from .base import SessionStatistics
from .sftp_session import Session

log = logging.getLogger(__name__)

#: Requests waiting on every live session before another session is started (up to the pool's size): one ssh
#: carries a stream at the speed of its cipher, and a scan's many small requests share a few sessions.
BUSY = 8


class SessionPool:
    """Sessions are shared: any number of threads send requests on one at once. A caller gets the live session
    with the fewest requests waiting; a new one is started when every live one is busy and the pool has room, or
    when none is alive (a dead one, whose ssh exited or was killed, is dropped here)."""

    def __init__(self, spawn: Callable[[], Session], size: int, wait_timeout: float, name: str):
        self._spawn = spawn
        self._size = size
        self._wait_timeout = wait_timeout
        self._name = name
        self._sessions: list[Session] = []
        self._starting = 0
        self._started = 0
        self._replaced = 0
        self._generation = 0
        self._cond = threading.Condition()

    def session(self, idle: bool = False) -> Session:
        """A live session: the least busy one. When every live one is busy and the pool has room, another is
        started beside (the caller goes on with the least busy one: a new ssh takes a few round trips to come
        up); only a caller that finds no live session at all waits for one. `idle`: a session with nothing in
        flight, started for the caller when none is and the pool has room (a health probe must not queue behind
        a big read on a thin line)."""
        deadline = time.monotonic() + self._wait_timeout
        with self._cond:
            while True:
                self._drop_dead()
                best = min(self._sessions, key=lambda s: s.load, default=None)
                room = len(self._sessions) + self._starting < self._size
                if idle and room and (best is None or best.load > 0):
                    self._starting += 1
                    break
                if best is not None:
                    if best.load >= BUSY and room:
                        self._starting += 1
                        threading.Thread(target=self._start_beside, args=(self._generation,),
                                         name=f"sftp-start-{self._name}", daemon=True).start()
                    return best
                if room:
                    self._starting += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise OriginTimeout(f"{self._name}: no SFTP connection came up in {self._wait_timeout:g}s",
                                        origin=self._name)
            generation = self._generation
        return self._start(generation)

    def _start(self, generation: int) -> Session:
        try:
            session = self._spawn()
        finally:
            with self._cond:
                self._starting -= 1
                self._cond.notify_all()
        with self._cond:
            if generation == self._generation:
                self._sessions.append(session)
                self._started += 1
                return session
        session.close()  # the pool was closed meanwhile
        raise OriginTimeout(f"{self._name}: the SFTP connections were closed", origin=self._name)

    def _start_beside(self, generation: int) -> None:
        """Another session for a busy pool, in a thread of its own; a failure here is the next caller's to see."""
        try:
            self._start(generation)
        except Exception as exc:
            log.debug("%s: another SFTP session did not start: %s", self._name, exc)

    def _drop_dead(self) -> None:
        dead = [s for s in self._sessions if not s.alive]
        if dead:
            self._sessions = [s for s in self._sessions if s.alive]
            self._replaced += len(dead)
            for session in dead:
                session.close()  # reaps its ssh (already gone)

    def pids(self) -> list[int]:
        """The ssh processes of the live sessions."""
        with self._cond:
            return [s.pid for s in self._sessions if s.alive]

    def statistics(self) -> SessionStatistics:
        with self._cond:
            return SessionStatistics(sessions=len(self._sessions), starting=self._starting, started=self._started,
                                     replaced=self._replaced, requests_waiting=sum(s.load for s in self._sessions))

    def close(self) -> None:
        """Close every session (each ssh killed and reaped; one starting now is closed when it is up). The pool can
        still be used: it starts new ones."""
        with self._cond:
            self._generation += 1
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
