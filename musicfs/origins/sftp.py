"""SftpOrigin: a directory on an SSH server, read over SFTP through the user's OpenSSH (`ssh -s sftp`).

URL: sftp://[user@]host[:port]/absolute/path  (sftp://host/~/music is relative
to the login directory; no path at all means the login directory).

ssh does the connecting, the crypto and the trust: the user's ~/.ssh/config, agent, keys and known_hosts apply as
they do for `ssh`, unless the options name an identity file or a known_hosts file. An unknown host is refused,
never added. Sessions are shared by every caller (many requests in flight on each) and replaced when their ssh
dies. Nothing here retries: the caller does.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import posixpath
import stat as stat_mod
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import unquote

from ..shared import (
    OriginError,
    OriginFatal,
    OriginNotFound,
    OriginTransient,
    PathEscape,
    ShortRead,
    add_secrets,
    points,
)
from . import sftp_wire as wire
from .base import (
    FileStat,
    Identity,
    Origin,
    OriginStream,
    SessionStatistics,
    escape_name,
    split_url,
    unescape_name,
)
from .options import option_keys
from .options import parse as parse_options
from .sftp_connections import SessionPool
from .sftp_errors import classify_sftp_error
from .sftp_session import Session
from .sftp_ssh import SshTarget

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_POOL_SIZE = 4  # ssh processes per origin: each carries many requests at once
DEFAULT_POOL_TIMEOUT = 30.0
#: Reads in flight at once on one handle (of the server's read size, 255 KiB on OpenSSH): about 4 MiB, so a
#: chunk costs about one round trip.
PIPELINE_REQUESTS = 16
#: Folders listed and links resolved at once by a walk.
WALK_PARALLELISM = 64

T = TypeVar("T")


class _SftpStream(OriginStream):
    """Reads of one file through one handle kept open on a session (no open per read); reopened on another
    session when that one dies. Every read's identity is checked before and after as `SftpOrigin.read_ranges`
    does; without an `expect`, a stat before the first read pins the version."""

    def __init__(self, origin: "SftpOrigin", path: str, expect: FileStat | None):
        super().__init__(origin, path, expect)
        self.sftp_origin = origin
        self.remote = origin._remote(path)
        self._open: tuple[Session, bytes] | None = None

    def read(self, offset: int, length: int) -> bytes:
        return self.read_ranges([(offset, length)])[0]

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        if self.closed:
            raise ValueError(f"{self.origin.name}: stream of {self.path} is closed")
        ranges = _checked_ranges(ranges)
        expect = self._pinned()  # without an expect, the version a stat finds first: every read is of it
        origin = self.sftp_origin
        return origin._guarded(self.path, lambda: origin._read_open(*self._handle(), self.path, ranges, expect))

    def _handle(self) -> tuple[Session, bytes]:
        with self._pin_lock:
            if self._open is None or not self._open[0].alive:
                session = self.sftp_origin._pool.session()
                self._open = (session, session.open(self.remote))
            return self._open

    def close(self) -> None:
        with self._pin_lock:
            self.closed = True
            held, self._open = self._open, None
        if held is not None:
            held[0].close_handle(held[1])  # not waited for


class SftpOrigin(Origin):
    OPTION_KEYS = option_keys("sftp")  # declared in origins/options.py

    def timestamp_resolution(self, identity: Identity) -> float:
        """SFTP v3 gives mtimes in whole seconds, whatever the server's filesystem keeps."""
        return 1.0

    def __init__(
        self,
        name: str,
        host: str,
        root: str,
        *,
        port: int | None = None,
        user: str | None = None,
        identity_file: str | None = None,
        known_hosts: str | None = None,
        password: str | None = None,
        passphrase: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ):
        if not host:
            raise OriginFatal(f"{name}: no host in the SFTP URL", origin=name)
        if pool_size < 1:
            raise OriginFatal(f"{name}: pool_size must be at least 1", origin=name)
        self.name = name
        self.host = host
        self.root = root
        identity_file = os.path.expanduser(identity_file) if identity_file else None
        if identity_file and not os.path.isfile(identity_file):
            raise OriginFatal(f"{name}: identity file {identity_file} does not exist", origin=name)
        add_secrets(password, passphrase)  # never in a log line, DEBUG included (row 7.6)
        self.target = SshTarget(
            host=host, port=int(port) if port else None, user=user, identity_file=identity_file,
            known_hosts=os.path.expanduser(known_hosts) if known_hosts else None, password=password,
            passphrase=passphrase if passphrase is not None else password,
            connect_timeout=float(connect_timeout), alive_interval=float(read_timeout))
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.pool_size = int(pool_size)
        self.scan_parallelism = 16 * self.pool_size  # tags parse while others wait on the network
        self._pool = SessionPool(self._connect, self.pool_size, float(pool_timeout), name)
        self._root_real: bytes | None = None

    @classmethod
    def from_url(cls, url: str, options: dict | None = None) -> "SftpOrigin":
        options = parse_options("sftp", options)  # unknown keys and wrong types: ConfigError
        parts = split_url(url, "sftp")
        if parts.password is not None:
            raise OriginFatal(f"{url}: put the password in the 'password' option, not in the URL", origin=url)
        try:
            port = parts.port
        except ValueError:
            raise OriginFatal(f"{url}: bad port", origin=url) from None
        path = unquote(parts.path)
        if path == "/~" or path.startswith("/~/"):
            root = path[3:].strip("/")  # relative to the login directory
        elif path:
            root = "/" + path.strip("/") if path.strip("/") else "/"
        else:
            root = ""
        user = unquote(parts.username) if parts.username else None
        return cls(url, parts.hostname or "", root, port=port, user=user, **options)  # checked and typed by parse_options

    # -- sessions ----------------------------------------------------------
    def _connect(self) -> Session:
        try:
            return Session(self.target, self.name, setup_timeout=self.connect_timeout + self.read_timeout,
                           request_timeout=self.read_timeout)
        except OriginError:
            raise
        except Exception as exc:  # starting ssh failed here (no ssh, out of processes or descriptors)
            raise classify_sftp_error(exc, self.name) from exc

    def _run(self, path: str, fn: Callable[[Session], T]) -> T:
        """`fn` on a session of the pool, its errors as origin errors naming `path`."""
        return self._guarded(path, lambda: fn(self._pool.session()))

    def _guarded(self, path: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except OriginError:
            raise
        except wire.ProtocolError as exc:
            self._pool.close()  # an answer out of step: no session of this origin is trusted any more
            raise classify_sftp_error(exc, self.name, path) from exc
        except Exception as exc:
            raise classify_sftp_error(exc, self.name, path) from exc

    def sessions(self) -> SessionStatistics:
        return self._pool.statistics()

    def ssh_pids(self) -> list[int]:
        """The ssh processes this origin runs now."""
        return self._pool.pids()

    # -- paths -------------------------------------------------------------
    def _remote(self, path: str) -> bytes:
        """The server's path for `path`, as bytes (names that are not UTF-8 were escaped by walk)."""
        if "\0" in path or path.startswith("/") or any(p == ".." for p in path.split("/")):
            raise PathEscape(f"{self.name}: refusing path {path!r}", origin=self.name, path=path)
        parts = [p for p in path.split("/") if p not in ("", ".")]
        joined = posixpath.join(self.root, *parts) if parts else (self.root or ".")
        if not joined:
            joined = "."
        return unescape_name(joined).encode("utf-8", "surrogateescape")

    def _to_stat(self, path: str, attrs: wire.Attrs) -> FileStat:
        mtime = attrs.mtime * 1_000_000_000 if attrs.mtime is not None else 0
        return FileStat(path=path, size=int(attrs.size or 0), mtime_ns=mtime)

    def _real_root(self, session: Session) -> bytes:
        if self._root_real is None:
            self._root_real = session.realpath(self._remote(""))
        return self._root_real

    # -- Origin ------------------------------------------------------------
    def walk(self) -> Iterator[FileStat]:
        """Folders are listed in parallel (level by level: a round trip costs one per level, not one per folder);
        files come out in the order a depth-first walk gives them."""
        listed: dict[str, tuple[list[FileStat], list[str]]] = {}
        level = [""]
        with ThreadPoolExecutor(WALK_PARALLELISM, thread_name_prefix="sftp-walk") as pool:
            while level:
                for rel_dir, entry in zip(level, pool.map(self._list_dir, level)):
                    listed[rel_dir] = entry
                level = [sub for rel_dir in level for sub in listed[rel_dir][1]]
        stack = [""]
        while stack:
            found, subdirs = listed.pop(stack.pop())
            stack.extend(subdirs)
            yield from found

    def _list_dir(self, rel_dir: str) -> tuple[list[FileStat], list[str]]:
        """The files of one folder (file symlinks resolved) and its subfolders, both sorted by name."""
        remote_dir = self._remote(rel_dir)
        entries = self._run(rel_dir, lambda session: session.listdir(remote_dir))
        found: list[FileStat] = []
        subdirs: list[str] = []
        links: list[str] = []
        named = sorted((escape_name(e.name.decode("utf-8", "surrogateescape")), e.attrs) for e in entries)
        for name, attrs in named:
            if name in (".", "..") or "/" in name or "\0" in name or attrs.mode is None:
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if stat_mod.S_ISDIR(attrs.mode):
                subdirs.append(rel)
            elif stat_mod.S_ISREG(attrs.mode):
                found.append(self._to_stat(rel, attrs))
            elif stat_mod.S_ISLNK(attrs.mode):
                links.append(rel)
        if links:
            found.extend(self._resolve_links(links))
            found.sort(key=lambda f: f.path)
        return found, subdirs

    def _resolve_links(self, links: list[str]) -> list[FileStat]:
        """File symlinks that stay inside the root count; directory symlinks are not followed. Each link's
        REALPATH and STAT are in flight together."""

        def resolve(session: Session) -> list[FileStat]:
            root = self._real_root(session)
            asked = [(rel, session.send(wire.REALPATH, wire.string(self._remote(rel))),
                      session.send(wire.STAT, wire.string(self._remote(rel)))) for rel in links]
            out = []
            for rel, real, stat in asked:
                try:
                    found = wire.names(session.wait(real).expect(wire.NAME))
                    attrs = session.wait(stat).expect(wire.ATTRS).attrs()
                except wire.StatusError:
                    continue  # dangling link or unreadable: not part of the library
                target = found[0].name if len(found) == 1 else b""
                inside = root == b"/" or target == root or target.startswith(root.rstrip(b"/") + b"/")
                if inside and attrs.mode is not None and stat_mod.S_ISREG(attrs.mode):
                    out.append(self._to_stat(rel, attrs))
            return out

        return self._run(links[0], resolve)

    def stat(self, path: str) -> FileStat:
        remote = self._remote(path)
        return self._to_stat(path, self._run(path, lambda session: session.stat(remote)))

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        return self.read_ranges(path, [(offset, length)], expect)[0]

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]],
                    expect: FileStat | None = None) -> list[bytes]:
        """One open handle (a round trip), then its identity checked before and after, every range read, all
        pipelined in a second round trip; the handle is closed without waiting."""
        remote = self._remote(path)
        ranges = _checked_ranges(ranges)

        def do_read(session: Session) -> list[bytes]:
            handle = session.open(remote)
            try:
                return self._read_open(session, handle, path, ranges, expect)
            finally:
                session.close_handle(handle)

        return self._run(path, do_read)

    def open_stream(self, path: str, expect: FileStat | None = None) -> OriginStream:
        """The remote file stays open on one session for the stream's life."""
        return _SftpStream(self, path, expect)

    def _read_open(self, session: Session, handle: bytes, path: str, ranges: list[tuple[int, int]],
                   expect: FileStat | None) -> list[bytes]:
        """The ranges of an open file, with its identity checked before and after (against `expect`, or without
        one against the first stat), so an edit during the read is caught (to the resolution of SFTP's mtime:
        whole seconds). The first FSTAT goes right before the reads and the second right after the last one: the
        server answers a handle's requests in order, so one round trip covers all (PIPELINE_REQUESTS reads in
        flight; each answer taken sends the next request, so the pipe never drains between waves)."""
        fstat = (wire.FSTAT, wire.string(handle))
        before = session.send(*fstat)
        points.hit(points.ORIGIN_READ_CHECKED, OriginTransient)
        wants = [length if expect is None else max(0, min(length, expect.size - offset)) for offset, length in ranges]
        step = session.max_read
        pieces = [(offset + at, min(step, want - at))
                  for (offset, _), want in zip(ranges, wants) for at in range(0, want, step)]
        got, after = _pipelined(session, handle, pieces)
        first = self._to_stat(path, session.wait(before).expect(wire.ATTRS).attrs())
        self._check(path, first, expect or first, "since it was scanned")
        last = self._to_stat(path, session.wait(after).expect(wire.ATTRS).attrs())
        self._check(path, last, expect or first, "while it was read")
        size = (expect or first).size
        wholes = [max(0, min(length, size - offset)) for offset, length in ranges]  # what the file has there
        data, answers, short = [], zip(got, pieces), False
        for (offset, _), want, whole in zip(ranges, wants, wholes):
            kept, intact = [], True
            for piece, (_, asked) in itertools.islice(answers, len(range(0, want, step))):
                if intact:
                    kept.append(piece)
                intact = intact and len(piece) == asked  # after a short answer the pieces no longer line up
            chunk = b"".join(kept)
            if len(chunk) < whole:  # the server sent less than asked before the end: read the rest
                short = True
                chunk += self._read_rest(session, handle, path, offset + len(chunk), whole - len(chunk))
            data.append(chunk[:whole])
        self._check_lengths(path, ranges, wholes, data)
        if short:
            self._check(path, self._to_stat(path, session.call(*fstat).expect(wire.ATTRS).attrs()),
                        expect or first, "while it was read")
        return data

    def _read_rest(self, session: Session, handle: bytes, path: str, offset: int, length: int) -> bytes:
        """What a server that answers short reads left out (one request at a time: a rare path)."""
        out = []
        while length > 0:
            piece = _data(session.call(*_read_request(handle, (offset, min(length, session.max_read)))))
            if not piece:
                break
            out.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(out)

    def _check_lengths(self, path: str, ranges: list[tuple[int, int]], wants: list[int], data: list[bytes]) -> None:
        """ShortRead unless every range got the bytes the file has there."""
        for (offset, _), want, part in zip(ranges, wants, data):
            if len(part) != want:
                raise ShortRead(f"{self.name}: {path}: got {len(part)} bytes at offset {offset}, expected {want}",
                                origin=self.name, path=path)

    def _check(self, path: str, now: FileStat, expect: FileStat, when: str) -> None:
        # Both sides are this origin's answers (etag ""; mtime to SFTP's whole seconds): all must match.
        now.identity.require(expect.identity, origin=self.name, path=path, when=when)

    def probe(self) -> None:
        remote = self._remote("")
        attrs = self._guarded("", lambda: self._pool.session(idle=True).stat(remote))
        if attrs.mode is not None and not stat_mod.S_ISDIR(attrs.mode):
            raise OriginNotFound(f"{self.name}: {remote.decode('utf-8', 'replace')} is not a directory",
                                 origin=self.name)

    def write_file(self, path: str, data: bytes) -> None:
        remote = self._remote(path)
        parts = [p for p in path.split("/") if p][:-1]
        parents = [self._remote("/".join(parts[:i + 1])) for i in range(len(parts))]
        self._run(path, lambda session: session.write_file(remote, data, parents))

    def remove_file(self, path: str) -> None:
        remote = self._remote(path)
        self._run(path, lambda session: session.remove(remote))

    def close(self) -> None:
        self._pool.close()


def _pipelined(session: Session, handle: bytes, pieces: list[tuple[int, int]]) -> tuple[list, Any]:
    """The answers to READs of `pieces`, PIPELINE_REQUESTS in flight at once, and an FSTAT sent right after the
    last READ (the server answers it after every read of the handle)."""
    fstat = (wire.FSTAT, wire.string(handle))
    todo = iter(pieces)
    inflight = collections.deque(session.send(*_read_request(handle, piece)) for piece in
                                 itertools.islice(todo, PIPELINE_REQUESTS))
    after = session.send(*fstat) if len(inflight) == len(pieces) else None
    got: list = []
    while inflight:
        got.append(_data(session.wait(inflight.popleft())))
        following = next(todo, None)
        if following is not None:
            inflight.append(session.send(*_read_request(handle, following)))
            if len(got) + len(inflight) == len(pieces):
                after = session.send(*fstat)
    return got, after if after is not None else session.send(*fstat)


def _read_request(handle: bytes, piece: tuple[int, int]) -> tuple[int, bytes, bytes, bytes]:
    return wire.READ, wire.string(handle), wire.u64(piece[0]), wire.u32(piece[1])


def _data(reply) -> memoryview | bytes:
    """A READ's bytes (a view into its answer, not copied); b"" at the end of the file."""
    if reply.kind == wire.STATUS:
        error = wire.status(reply.fields)
        if error.code == wire.EOF:
            return b""
        raise error
    return reply.expect(wire.DATA).view()


def _checked_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out = [(int(offset), int(length)) for offset, length in ranges]
    for offset, length in out:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset} length={length}")
    return out
