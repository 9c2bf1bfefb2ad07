"""One SFTP v3 session over an `ssh -s sftp` subprocess: many requests in flight, answers matched by id."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import logging
import os
import select
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from ..shared import OriginError, OriginTimeout, OriginTransient
from . import sftp_wire as wire
from .sftp_ssh import SshTarget

log = logging.getLogger(__name__)

#: The pipe from ssh holds a few read answers (Linux's default is 64 KiB; an unprivileged process may ask up to
#: /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: READDIRs of one folder in flight at once.
READDIR_AHEAD = 2
#: How long ssh gets to exit once its output ended, before it is killed.
EXIT_GRACE = 2.0


class _Pending:
    __slots__ = ("done", "kind", "packet", "error", "request_id")

    def __init__(self) -> None:
        self.request_id = 0
        self.done = threading.Event()
        self.kind = 0
        self.packet = bytearray()
        self.error: BaseException | None = None


@dataclass(frozen=True)
class Reply:
    """An answer: its packet type and the fields after the request id."""

    kind: int
    fields: wire.Reader

    def expect(self, kind: int) -> wire.Reader:
        """The fields, when the answer is of `kind`; a STATUS raises its StatusError."""
        if self.kind == kind:
            return self.fields
        if self.kind == wire.STATUS:
            raise wire.status(self.fields)
        raise wire.ProtocolError(f"expected SFTP packet type {kind}, got {self.kind}")


class Session:
    """An SFTP session on a fresh ssh process. Thread-safe: any thread sends requests and waits for their answers
    (a reader thread routes each answer to its request by id). Once ssh is gone (it exited, it was killed after a
    request went unanswered for `request_timeout`, or the session was closed) every request fails with the one
    error that says why, and the pool replaces the session."""

    def __init__(self, target: SshTarget, origin: str, *, setup_timeout: float, request_timeout: float):
        self.target = target
        self.origin = origin
        self.request_timeout = request_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()  # the pending table, the ids and the error
        self._write_lock = threading.Lock()
        self._error: OriginError | None = None
        self._heard = time.monotonic()  # when ssh last sent anything
        self._version = _Pending()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(target.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._stderr, env=target.env(), start_new_session=True,
                                          bufsize=1 << 18)
        except BaseException:
            self._stderr.close()
            raise
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin = self._proc.stdin.fileno()
        os.set_blocking(self._stdin, False)
        with contextlib.suppress(OSError):  # fewer, bigger reads of ssh's output: a read answer is 255 KiB
            fcntl.fcntl(self._proc.stdout.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
        self._reader = threading.Thread(target=self._read_answers, name=f"sftp-{self._proc.pid}", daemon=True)
        self._reader.start()
        self.max_read = self.max_write = wire.SAFE_READ
        self.extensions: frozenset[bytes] = frozenset()
        self._setup(setup_timeout)

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._error is None

    @property
    def load(self) -> int:
        """Requests waiting for an answer."""
        return len(self._pending)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def kill(self, error: OriginError) -> None:
        """End the session: `error` is what its requests raise from now on (the first reason given wins)."""
        self._fail(error)
        try:
            self._proc.kill()
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Kill ssh and reap it (no zombie is left behind). Safe to call twice."""
        self.kill(OriginTransient(f"{self.origin}: the SFTP connection was closed", origin=self.origin))
        self._reader.join(EXIT_GRACE + 1)

    # -- requests ----------------------------------------------------------------------------------------------
    def send(self, kind: int, *fields: bytes) -> _Pending:
        """Send one request; its answer comes through `wait`."""
        pending = _Pending()
        with self._lock:
            if self._error is not None:
                raise self._error
            request_id = pending.request_id = next(self._ids) & 0xFFFFFFFF
            self._pending[request_id] = pending
        self._write(wire.request(kind, request_id, *fields))
        return pending

    def forget(self, kind: int, *fields: bytes) -> None:
        """Send a request whose answer nobody waits for (CLOSE of a handle): dropped when it comes."""
        try:
            self.abandon(self.send(kind, *fields))
        except OriginError:
            pass  # the session is gone, and the handle with it

    def wait(self, pending: _Pending) -> Reply:
        """The answer to `pending`. The timeout is one of silence: while bytes keep coming (a big answer on a thin
        line, or the answers queued before this one) the wait goes on."""
        start = time.monotonic()
        left = self.request_timeout
        while not pending.done.wait(left):
            left = self.request_timeout - (time.monotonic() - max(start, self._heard))
            if left <= 0:
                self.kill(OriginTimeout(f"{self.origin}: nothing from {self.target.where} for "
                                        f"{self.request_timeout:g}s (the connection is dropped)", origin=self.origin))
                break
        if not pending.done.is_set():
            pending.done.wait(EXIT_GRACE)  # the kill above fails it; this only bounds a lost wake-up
        if pending.error is not None:
            raise pending.error
        if not pending.done.is_set():
            raise self._error or OriginTimeout(f"{self.origin}: no answer", origin=self.origin)
        return Reply(pending.kind, wire.Reader(pending.packet, 5))

    def abandon(self, pending: _Pending) -> None:
        """Nobody will wait for this answer: it is dropped when it comes."""
        with self._lock:
            self._pending.pop(pending.request_id, None)

    def call(self, kind: int, *fields: bytes) -> Reply:
        return self.wait(self.send(kind, *fields))

    # -- what MusicFS asks ------------------------------------------------------------------------------------
    def open(self, path: bytes) -> bytes:
        """A handle of `path` opened for reading."""
        reply = self.call(wire.OPEN, wire.string(path), wire.u32(wire.OPEN_READ), wire.u32(0))
        return reply.expect(wire.HANDLE).string()

    def write_file(self, path: bytes, data: bytes, parents: list[bytes]) -> None:
        """`data` at `path`, whole: written to a temporary file beside it (the WRITEs all in flight), closed, then
        renamed over it (posix-rename@openssh.com replaces at once; a server without it: remove, then rename).
        `parents`: the folders to make first, outermost first (those that exist already are no error)."""
        for folder in parents:
            self.wait(self.send(wire.MKDIR, wire.string(folder), wire.u32(0)))  # STATUS either way: not checked
        temp = path + b".musicfs-%d.tmp" % os.getpid()
        flags = wire.OPEN_WRITE | wire.OPEN_CREAT | wire.OPEN_TRUNC
        handle = self.call(wire.OPEN, wire.string(temp), wire.u32(flags), wire.u32(0)).expect(wire.HANDLE).string()
        try:
            step = self.max_write
            asked = [self.send(wire.WRITE, wire.string(handle), wire.u64(at), wire.string(data[at:at + step]))
                     for at in range(0, len(data), step)]
            for pending in asked:
                reply = self.wait(pending)
                wire.check_ok(reply.kind, reply.fields)
        finally:
            reply = self.call(wire.CLOSE, wire.string(handle))
        wire.check_ok(reply.kind, reply.fields)
        if wire.POSIX_RENAME in self.extensions:
            reply = self.call(wire.EXTENDED, wire.string(wire.POSIX_RENAME), wire.string(temp), wire.string(path))
        else:
            self.remove(path)
            reply = self.call(wire.RENAME, wire.string(temp), wire.string(path))
        wire.check_ok(reply.kind, reply.fields)

    def remove(self, path: bytes) -> None:
        """REMOVE `path`; a file already gone is no error."""
        reply = self.call(wire.REMOVE, wire.string(path))
        try:
            wire.check_ok(reply.kind, reply.fields)
        except wire.StatusError as exc:
            if exc.code != wire.NO_SUCH_FILE:
                raise

    def close_handle(self, handle: bytes) -> None:
        self.forget(wire.CLOSE, wire.string(handle))

    def stat(self, path: bytes) -> wire.Attrs:
        return self.call(wire.STAT, wire.string(path)).expect(wire.ATTRS).attrs()

    def realpath(self, path: bytes) -> bytes:
        found = wire.names(self.call(wire.REALPATH, wire.string(path)).expect(wire.NAME))
        if len(found) != 1:
            raise wire.ProtocolError(f"REALPATH answered {len(found)} names")
        return found[0].name

    def listdir(self, path: bytes) -> list[wire.Entry]:
        """Every entry of a folder, "." and ".." included: READDIRs until the end, READDIR_AHEAD of them in flight
        (a server answers a handle's requests in order, each with the next entries), so a folder costs two round
        trips, not one per hundred entries and one more for the end."""
        handle = self.call(wire.OPENDIR, wire.string(path)).expect(wire.HANDLE).string()
        found: list[wire.Entry] = []
        asked = collections.deque(self.send(wire.READDIR, wire.string(handle)) for _ in range(READDIR_AHEAD))
        try:
            while asked:
                reply = self.wait(asked.popleft())
                if reply.kind == wire.STATUS:
                    error = wire.status(reply.fields)
                    if error.code == wire.EOF:
                        return found  # the answers still in flight are EOFs too: dropped when they come
                    raise error
                found.extend(wire.names(reply.expect(wire.NAME)))
                asked.append(self.send(wire.READDIR, wire.string(handle)))
            return found
        finally:
            for pending in asked:
                self.abandon(pending)
            self.close_handle(handle)

    # -- inside ------------------------------------------------------------------------------------------------
    def _setup(self, budget: float) -> None:
        self._write(wire.init())
        if not self._version.done.wait(budget):
            self.kill(OriginTimeout(f"{self.origin}: SSH/SFTP setup with {self.target.where} took longer than "
                                    f"{budget:g}s", origin=self.origin))
            self._reader.join(EXIT_GRACE + 1)
        if self._version.error is not None or not self._version.done.is_set():
            self.close()
            raise self._version.error or self._error  # type: ignore[misc]
        version, extensions = wire.version_reply(self._version.packet[1:])
        if version < 3:
            self.close()
            raise OriginTransient(f"{self.origin}: {self.target.where} speaks SFTP version {version}, not 3",
                                  origin=self.origin)
        self.extensions = frozenset(extensions)
        if wire.LIMITS in extensions:
            limits = wire.limits(self.call(wire.EXTENDED, wire.string(wire.LIMITS)).expect(wire.EXTENDED_REPLY))
            if limits["read"] > 0:
                self.max_read = min(limits["read"], 1 << 20)
            if limits["write"] > 0:
                self.max_write = min(limits["write"], 1 << 20)

    def _write(self, data: bytes) -> None:
        """All of `data` to ssh's stdin, within the request timeout (a server that stops reading fills the pipe)."""
        deadline = time.monotonic() + self.request_timeout
        view = memoryview(data)
        with self._write_lock:
            while view and self._error is None:
                try:
                    view = view[os.write(self._stdin, view):]
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    break  # ssh is gone (a broken pipe): its last words say why
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [self._stdin], [], left)[1]:
                    self.kill(OriginTimeout(f"{self.origin}: {self.target.where} stopped taking requests for "
                                            f"{self.request_timeout:g}s (the connection is dropped)",
                                            origin=self.origin))
        if view:
            self._reader.join(EXIT_GRACE + 1)
            raise self._error or OriginTransient(f"{self.origin}: ssh to {self.target.where} is gone",
                                                 origin=self.origin)

    def _read_answers(self) -> None:
        """The reader thread: every answer to its request, until ssh's output ends; then ssh is reaped."""
        out = self._proc.stdout
        assert out is not None
        try:
            while True:
                head = out.read(4)
                if len(head) < 4:
                    break
                size = int.from_bytes(head, "big")
                packet = bytearray(size)
                view, got = memoryview(packet), 0
                while got < size:
                    step = out.readinto1(view[got:])  # what has come so far: each piece counts as a sign of life
                    if not step:
                        break
                    got += step
                    self._heard = time.monotonic()
                view.release()
                if got < size or size < 1:
                    break
                self._route(packet)
        except Exception as exc:  # a protocol error: the session cannot be trusted
            self._fail(OriginTransient(f"{self.origin}: bad SFTP answer from {self.target.where}: {exc}",
                                       origin=self.origin))
        finally:
            self._reap()

    def _route(self, packet: bytearray) -> None:
        if packet[0] == wire.VERSION:
            self._version.packet = packet
            self._version.done.set()
            return
        if len(packet) < 5:
            raise wire.ProtocolError("an SFTP answer without a request id")
        with self._lock:
            pending = self._pending.pop(int.from_bytes(packet[1:5], "big"), None)
        if pending is not None:  # else an answer nobody waits for (a CLOSE, or a request that timed out)
            pending.kind = packet[0]
            pending.packet = packet
            pending.done.set()

    def _reap(self) -> None:
        try:
            returncode = self._proc.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            returncode = self._proc.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read()[-8000:].decode("utf-8", "replace")
        self._stderr.close()
        if stderr.strip():
            log.debug("%s: ssh %d said: %s", self.origin, self._proc.pid, stderr.strip())
        self._fail(self.target.failure(stderr, returncode, self.origin))
        with self._write_lock:  # no writer holds the descriptor when it is closed (it could be reused)
            for pipe in (self._proc.stdin, self._proc.stdout):
                try:
                    pipe.close()  # type: ignore[union-attr]
                except OSError:
                    pass

    def _fail(self, error: OriginError) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
            pending, self._pending = self._pending, {}
        for waiter in [*pending.values(), self._version]:
            if not waiter.done.is_set():
                waiter.error = self._error
                waiter.done.set()
