"""SFTP connections: one SSH session and SFTP channel each, set up under a watchdog, pooled, with pipelined reads."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_STATUS,
    SFTPError,
)
from paramiko.sftp_attr import SFTPAttributes

from ..shared import (
    OriginTimeout,
)
from .base import (
    OriginStream,
    escape_name,
)
from .sftp_errors import _keeps_connection_usable


@dataclass
class _Conn:
    client: paramiko.SSHClient
    sftp: paramiko.SFTPClient
    generation: int
    #: Remote files kept open by streams (see _SftpStream), touched only by the thread that leases the
    #: connection; a connection that is dropped takes them with it.
    handles: dict = field(default_factory=dict)

    def handle_for(self, stream: OriginStream) -> Any:
        """The open remote file of `stream` on this connection (opened now if need be); closed streams'
        handles are closed first (a stream's close cannot lease the connections its handles live on)."""
        for other in [s for s in self.handles if s.closed]:
            self._close_handle(other)
        handle = self.handles.get(stream)
        if handle is None:
            while len(self.handles) >= STREAM_HANDLES_PER_CONN:
                self._close_handle(next(iter(self.handles)))
            handle = self.sftp.open(stream.remote, "rb")
            self.handles[stream] = handle
        return handle

    def _close_handle(self, stream: OriginStream) -> None:
        self.handles.pop(stream).close()

    def drop_handle(self, stream: OriginStream, exc: BaseException) -> None:
        """After an error on the handle: not reused (its prefetch state is unknown). Closed only while the
        connection is usable; after a transport error the connection is discarded, handle and all."""
        handle = self.handles.pop(stream, None)
        if handle is not None and _keeps_connection_usable(exc):
            try:
                handle.close()
            except Exception:
                pass

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport is not None and transport.is_active() and not self.sftp.sock.closed)

    def close(self) -> None:
        for thing in (self.sftp, self.client):
            try:
                thing.close()
            except Exception:
                pass

#: Stream handles a connection keeps open at most; the oldest is closed to open another.
STREAM_HANDLES_PER_CONN = 16


class _SetupWatchdog:
    """Closes `client` if SSH/SFTP setup is still running after `budget` seconds.

    `finish()` and the timer agree under a lock, so exactly one of them wins:
    either setup ended first, or the watchdog fired (and setup must fail).
    """

    def __init__(self, client: paramiko.SSHClient, budget: float):
        self._client = client
        self._lock = threading.Lock()
        self._done = False
        self._fired = False
        self._timer = threading.Timer(budget, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def finish(self) -> bool:
        """Setup is over, one way or the other: did the watchdog close the client first?"""
        with self._lock:
            self._done = True
            return self._fired

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
        self._client.close()


class _Pool:
    """At most `size` connections; idle ones are reused, broken ones dropped."""

    def __init__(self, factory: Callable[[int], _Conn], size: int, wait_timeout: float, name: str):
        self._factory = factory
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._generation = 0
        self._wait_timeout = wait_timeout
        self._name = name

    @contextlib.contextmanager
    def lease(self) -> Iterator[_Conn]:
        if not self._slots.acquire(timeout=self._wait_timeout):
            raise OriginTimeout(
                f"{self._name}: no SFTP connection free after {self._wait_timeout:g}s", origin=self._name
            )
        try:
            conn = None
            with self._lock:
                generation = self._generation
                while self._idle and conn is None:
                    candidate = self._idle.pop()
                    if candidate.alive():
                        conn = candidate
                    else:
                        candidate.close()
            if conn is None:
                conn = self._factory(generation)
            try:
                yield conn
            except BaseException as exc:
                if not (_keeps_connection_usable(exc) and conn.alive()):
                    conn.close()
                    conn = None
                raise
            finally:
                if conn is not None:
                    with self._lock:
                        if conn.generation == self._generation and conn.alive():
                            self._idle.append(conn)
                            conn = None
                    if conn is not None:
                        conn.close()
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _listdir_attr(sftp: Any, path: str | bytes) -> list[Any]:
    """SFTPClient.listdir_attr, except that a name that is not UTF-8 does not fail the whole listing
    (paramiko decodes names strictly): each name is decoded with surrogate escapes, then escape_name."""
    t, msg = sftp._request(CMD_OPENDIR, sftp._adjust_cwd(path))
    if t != CMD_HANDLE:
        raise SFTPError("Expected handle")
    handle = msg.get_binary()
    found = []
    while True:
        try:
            t, msg = sftp._request(CMD_READDIR, handle)
        except EOFError:  # the end of the listing
            break
        if t != CMD_NAME:
            raise SFTPError("Expected name response")
        for _ in range(msg.get_int()):
            name = escape_name(msg.get_string().decode("utf-8", "surrogateescape"))
            longname = msg.get_string().decode("utf-8", "replace")
            attr = SFTPAttributes._from_msg(msg, name, longname)
            if name not in (".", ".."):
                found.append(attr)
    # as paramiko: not after a transport error (the connection is dropped). Not waited for: the answer is read
    # (and ignored) by the connection's next request, which saves a round trip per folder.
    sftp._async_request(type(None), CMD_CLOSE, handle)
    return found


class _Answers:
    """Answers to requests sent without waiting for each (paramiko routes each one here by request number
    while it reads the channel): FSTAT gives attributes, READ data (b"" at end of file)."""

    def __init__(self, sftp: Any) -> None:
        self.sftp = sftp
        self.got: dict[int, Any] = {}

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        try:
            if t == CMD_ATTRS:
                self.got[num] = SFTPAttributes._from_msg(msg)
            elif t == CMD_DATA:
                self.got[num] = msg.get_string()
            elif t == CMD_STATUS:
                self.sftp._convert_status(msg)  # raises for anything but OK
                self.got[num] = SFTPError("unexpected OK status")
            else:
                self.got[num] = SFTPError(f"unexpected SFTP answer type {t}")
        except EOFError:
            self.got[num] = b""  # a read at or past the end of the file
        except BaseException as exc:
            self.got[num] = exc

    def send(self, t: int, *args: Any) -> int:
        return self.sftp._async_request(self, t, *args)

    def wait(self, num: int) -> Any:
        while num not in self.got:
            self.sftp._read_response()  # one answer, routed to _async_response
        answer = self.got.pop(num)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _checked_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out = [(int(offset), int(length)) for offset, length in ranges]
    for offset, length in out:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset} length={length}")
    return out

