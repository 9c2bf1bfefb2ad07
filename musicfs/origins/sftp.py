"""SftpOrigin: a directory on an SSH server, read over SFTP (paramiko).

URL: sftp://[user@]host[:port]/absolute/path  (sftp://host/~/music is relative
to the login directory; no path at all means the login directory).

Host keys are checked against a known_hosts file (option `known_hosts`, else
~/.ssh/known_hosts); an unknown host is refused, never added. Connections live
in a small thread-safe pool; one that fails with a transport error is dropped
and a fresh one is made on next use. Nothing here retries: the caller does.
"""

from __future__ import annotations

import collections
import getpass
import itertools
import logging
import os
import posixpath
import stat as stat_mod
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import unquote

import paramiko
from paramiko.sftp import (
    CMD_FSTAT,
    CMD_READ,
    int64,
)
from paramiko.ssh_exception import (
    AuthenticationException,
)

from ..shared import (
    OriginError,
    OriginFatal,
    OriginNotFound,
    OriginTimeout,
    OriginTransient,
    PathEscape,
    ShortRead,
    add_secrets,
    points,
)
from .base import (
    FileStat,
    Identity,
    Origin,
    OriginStream,
    split_url,
    unescape_name,
)
from .options import option_keys
from .options import parse as parse_options
from .sftp_connections import (
    _Answers,
    _checked_ranges,
    _Conn,
    _listdir_attr,
    _Pool,
    _SetupWatchdog,
)
from .sftp_errors import (
    _keeps_connection_usable,
    classify_sftp_error,
)
from .sftp_hosts import PARAMIKO_LOG_CHANNEL, _DemoteToDebug, _RejectUnknownHost

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_POOL_SIZE = 8  # concurrent reads (streams, scans) each on its own connection
DEFAULT_POOL_TIMEOUT = 30.0
#: Reads of 32 KiB (paramiko's request size) in flight at once on one handle: 2 MiB, so a 1 MiB chunk
#: costs about one round trip instead of 32.
PIPELINE_REQUESTS = 64
#: paramiko's read request size (SFTPFile.MAX_REQUEST_SIZE), which every server accepts.
READ_REQUEST = 32 << 10

T = TypeVar("T")


for _name in (PARAMIKO_LOG_CHANNEL, PARAMIKO_LOG_CHANNEL + ".sftp"):
    logging.getLogger(_name).addFilter(_DemoteToDebug())


class _SftpStream(OriginStream):
    """Reads of one file through handles kept open on the pooled connections (no open per read).

    Each read leases a connection as any call does (so concurrent reads run on several connections) and
    reuses the stream's handle on it; the handle's identity is checked before and after every read as
    `SftpOrigin._read_handle` does. Without an `expect`, a stat before the first read pins the version.
    """

    def __init__(self, origin: "SftpOrigin", path: str, expect: FileStat | None):
        super().__init__(origin, path, expect)
        self.sftp_origin = origin
        self.remote = origin._remote(path)

    def read(self, offset: int, length: int) -> bytes:
        return self.read_ranges([(offset, length)])[0]

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        if self.closed:
            raise ValueError(f"{self.origin.name}: stream of {self.path} is closed")
        ranges = _checked_ranges(ranges)
        origin = self.sftp_origin
        expect = self._pinned()  # without an expect, the version a stat finds first: every read is of it

        def do_read(conn: _Conn) -> list[bytes]:
            handle = conn.handle_for(self)
            try:
                # Pipelined with the first FSTAT (the faster path, same checks before and after the read).
                return origin._read_handle_pipelined(conn.sftp, handle, self.path, ranges, expect)
            except BaseException as exc:
                conn.drop_handle(self, exc)  # never reused after an error (a change, or requests left in flight)
                raise

        return origin._run(self.path, do_read)


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
        port: int = 22,
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
        self.port = int(port)
        self.user = user or getpass.getuser()
        self.root = root
        self.identity_file = os.path.expanduser(identity_file) if identity_file else None
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self._password = password
        self._passphrase = passphrase if passphrase is not None else password
        add_secrets(password, passphrase)  # never in a log line, DEBUG included (row 7.6)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.pool_size = int(pool_size)
        self.scan_parallelism = 2 * self.pool_size  # tags parse while others wait on the network
        self._check_identity_file()
        self._pool = _Pool(self._connect, self.pool_size, float(pool_timeout), name)
        self._root_real: str | None = None

    @classmethod
    def from_url(cls, url: str, options: dict | None = None) -> "SftpOrigin":
        options = parse_options("sftp", options)  # unknown keys and wrong types: ConfigError
        parts = split_url(url, "sftp")
        if parts.password is not None:
            raise OriginFatal(f"{url}: put the password in the 'password' option, not in the URL", origin=url)
        try:
            port = parts.port or 22
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

    # -- connections -------------------------------------------------------
    def _check_identity_file(self) -> None:
        if self.identity_file and not os.path.isfile(self.identity_file):
            raise OriginFatal(
                f"{self.name}: identity file {self.identity_file} does not exist", origin=self.name
            )

    def _load_key(self) -> paramiko.PKey | None:
        if not self.identity_file:
            return None
        self._check_identity_file()
        try:
            return paramiko.PKey.from_path(self.identity_file, self._passphrase)
        except AuthenticationException as exc:  # PasswordRequiredException: encrypted key
            raise OriginFatal(
                f"{self.name}: identity file {self.identity_file} is encrypted; set 'passphrase': {exc}",
                origin=self.name,
            ) from exc
        except OSError as exc:
            raise OriginFatal(
                f"{self.name}: cannot read identity file {self.identity_file}: {exc}", origin=self.name
            ) from exc
        except Exception as exc:  # SSHException, UnknownKeyType, ValueError
            raise OriginFatal(
                f"{self.name}: identity file {self.identity_file} is not a usable private key: {exc}",
                origin=self.name,
            ) from exc

    def _connect(self, generation: int) -> _Conn:
        pkey = self._load_key()
        client = self._new_client()
        # paramiko has no deadline on some handshake steps (subsystem request,
        # SFTP version exchange): a watchdog closes the client if setup hangs.
        budget = self.connect_timeout + self.read_timeout
        watchdog = _SetupWatchdog(client, budget)
        watchdog.start()
        try:
            sftp = self._open_sftp(client, pkey)
        except BaseException as exc:
            client.close()
            if watchdog.finish():
                raise self._setup_too_slow(budget) from exc
            raise classify_sftp_error(exc, self.name) from exc
        finally:
            watchdog.cancel()
        if watchdog.finish():
            client.close()
            raise self._setup_too_slow(budget)
        return _Conn(client=client, sftp=sftp, generation=generation)

    def _new_client(self) -> paramiko.SSHClient:
        """An unconnected client that checks host keys against known_hosts and refuses unknown hosts."""
        client = paramiko.SSHClient()
        client.set_log_channel(PARAMIKO_LOG_CHANNEL)
        exists = os.path.exists(self.known_hosts)
        if exists:
            try:
                client.load_host_keys(self.known_hosts)
            except Exception as exc:
                raise OriginFatal(
                    f"{self.name}: cannot read known_hosts file {self.known_hosts}: {exc}", origin=self.name
                ) from exc
        client.set_missing_host_key_policy(_RejectUnknownHost(self.known_hosts, exists))
        return client

    def _open_sftp(self, client: paramiko.SSHClient, pkey: paramiko.PKey | None) -> paramiko.SFTPClient:
        """Connect and authenticate `client`, then start the SFTP subsystem on a new channel."""
        client.connect(
            self.host,
            port=self.port,
            username=self.user,
            password=self._password,
            pkey=pkey,
            timeout=self.connect_timeout,
            banner_timeout=self.connect_timeout,
            auth_timeout=self.read_timeout,
            channel_timeout=self.connect_timeout,
            allow_agent=pkey is None and self._password is None,
            look_for_keys=pkey is None and self._password is None,
        )
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_session(timeout=self.connect_timeout)
        channel.settimeout(self.read_timeout)
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)

    def _setup_too_slow(self, budget: float) -> OriginTimeout:
        return OriginTimeout(
            f"{self.name}: SSH/SFTP setup with {self.host}:{self.port} took longer than {budget:g}s",
            origin=self.name,
        )

    def _run(self, path: str, fn: Callable[[_Conn], T]) -> T:
        try:
            with self._pool.lease() as conn:
                return fn(conn)
        except OriginError:
            raise
        except Exception as exc:
            raise classify_sftp_error(exc, self.name, path) from exc

    # -- paths -------------------------------------------------------------
    def _remote(self, path: str) -> str | bytes:
        """The server's path for `path`: bytes when it names a file whose name is not UTF-8 (escaped by walk)."""
        if path == "":
            return self.root or "."
        if "\0" in path or path.startswith("/") or any(p == ".." for p in path.split("/")):
            raise PathEscape(f"{self.name}: refusing path {path!r}", origin=self.name, path=path)
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            return self.root or "."
        joined = posixpath.join(self.root, *parts) if self.root else posixpath.join(*parts)
        raw = unescape_name(joined)
        return joined if raw == joined else raw.encode("utf-8", "surrogateescape")

    @staticmethod
    def _mtime_ns(attr: Any) -> int:
        mtime = getattr(attr, "st_mtime", None)
        return int(mtime) * 1_000_000_000 if mtime is not None else 0

    def _to_stat(self, path: str, attr: Any) -> FileStat:
        return FileStat(path=path, size=int(attr.st_size or 0), mtime_ns=self._mtime_ns(attr))

    def _real_root(self, conn: _Conn) -> str:
        if self._root_real is None:
            self._root_real = conn.sftp.normalize(self.root or ".")
        return self._root_real

    # -- Origin ------------------------------------------------------------
    def walk(self) -> Iterator[FileStat]:
        """Folders are listed in parallel (one pooled connection each, level by level: a round trip costs
        one per level, not one per folder); files come out in the order a depth-first walk gives them."""
        listed: dict[str, tuple[list[FileStat], list[str]]] = {}
        level = [""]
        with ThreadPoolExecutor(self.pool_size, thread_name_prefix="sftp-walk") as pool:
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
        entries = self._run(rel_dir, lambda conn: _listdir_attr(conn.sftp, remote_dir))
        found: list[FileStat] = []
        subdirs: list[str] = []
        links: list[str] = []
        for attr in sorted(entries, key=lambda a: a.filename):
            name = attr.filename
            if name in (".", "..") or "/" in name or "\0" in name or attr.st_mode is None:
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            mode = attr.st_mode
            if stat_mod.S_ISDIR(mode):
                subdirs.append(rel)
            elif stat_mod.S_ISREG(mode):
                found.append(self._to_stat(rel, attr))
            elif stat_mod.S_ISLNK(mode):
                links.append(rel)
        if links:
            found.extend(self._resolve_links(links))
            found.sort(key=lambda f: f.path)
        return found, subdirs

    def _resolve_links(self, links: list[str]) -> list[FileStat]:
        """File symlinks that stay inside the root count; directory symlinks are not followed."""

        def resolve(conn: _Conn) -> list[FileStat]:
            root = self._real_root(conn)
            out = []
            for rel in links:
                remote = self._remote(rel)
                try:
                    target = conn.sftp.normalize(remote)
                    attr = conn.sftp.stat(remote)
                except OSError as exc:
                    if _keeps_connection_usable(exc):
                        continue  # dangling link or unreadable: not part of the library
                    raise
                except UnicodeDecodeError:  # paramiko decodes the target's name as strict UTF-8
                    log.warning("scan: %s: skipping link %s: its target's name is not UTF-8", self.name, rel)
                    continue
                inside = root == "/" or target == root or target.startswith(root.rstrip("/") + "/")
                if inside and attr.st_mode is not None and stat_mod.S_ISREG(attr.st_mode):
                    out.append(self._to_stat(rel, attr))
            return out

        return self._run(links[0], resolve)

    def stat(self, path: str) -> FileStat:
        remote = self._remote(path)
        attr = self._run(path, lambda conn: conn.sftp.stat(remote))
        return self._to_stat(path, attr)

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        return self.read_ranges(path, [(offset, length)], expect)[0]

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]],
                    expect: FileStat | None = None) -> list[bytes]:
        """One open handle, its identity checked before and after, every range read pipelined."""
        remote = self._remote(path)
        ranges = _checked_ranges(ranges)

        def do_read(conn: _Conn) -> list[bytes]:
            handle = conn.sftp.open(remote, "rb")
            try:
                if expect is not None:
                    data = self._read_handle_pipelined(conn.sftp, handle, path, ranges, expect)
                else:
                    data = self._read_handle(handle, path, ranges, expect)
            except OriginError:
                handle.close()
                raise
            # On transport errors the handle is not closed: the connection is
            # being discarded, and waiting on it would only add a timeout.
            # Not waited for: the connection's next request reads (and ignores) the answer.
            handle._close(async_=True)
            return data

        return self._run(path, do_read)

    def open_stream(self, path: str, expect: FileStat | None = None) -> OriginStream:
        """The remote file stays open (one handle per pooled connection the stream's reads ran on)."""
        return _SftpStream(self, path, expect)

    def _read_handle(self, handle: Any, path: str, ranges: list[tuple[int, int]],
                     expect: FileStat | None) -> list[bytes]:
        """The open file's identity is checked before and after its bytes are read (against `expect`, or
        without one against the first stat), so an edit during the read is caught (to the resolution of
        SFTP's mtime: whole seconds). The ranges are read with up to PIPELINE_REQUESTS requests in flight."""
        before = self._to_stat(path, handle.stat())
        if expect is not None:
            self._check(path, before, expect, "since it was scanned")
        points.hit(points.ORIGIN_READ_CHECKED, OriginTransient)
        wants = [max(0, min(length, before.size - offset)) for offset, length in ranges]
        todo = [(offset, want) for (offset, _), want in zip(ranges, wants) if want > 0]
        got = iter(list(handle.readv(todo, PIPELINE_REQUESTS)) if todo else [])
        data = [next(got) if want > 0 else b"" for want in wants]
        self._check(path, self._to_stat(path, handle.stat()), expect or before, "while it was read")
        self._check_lengths(path, ranges, wants, data)
        return data

    def _read_handle_pipelined(self, sftp: Any, handle: Any, path: str, ranges: list[tuple[int, int]],
                               expect: FileStat) -> list[bytes]:
        """`_read_handle` with the first FSTAT sent right before the reads, in the same round trip (sized by
        `expect`; the server answers a channel's requests in order, and the bytes are only returned when
        that stat matches `expect`). The stat after is sent once every byte has arrived, as in
        `_read_handle`: a file changed before or during the read raises OriginFileChanged."""
        answers = _Answers(sftp)
        before = answers.send(CMD_FSTAT, handle.handle)
        points.hit(points.ORIGIN_READ_CHECKED, OriginTransient)
        wants = [max(0, min(length, expect.size - offset)) for offset, length in ranges]
        pieces = [(offset + at, min(READ_REQUEST, want - at))
                  for (offset, _), want in zip(ranges, wants) for at in range(0, want, READ_REQUEST)]
        parts: list[bytes] = []
        # A sliding window of PIPELINE_REQUESTS reads in flight: each answer taken sends the next request, so
        # the pipe never drains between waves (a round trip per wave would cap a long read on a far server).
        todo = iter(pieces)
        inflight = collections.deque(answers.send(CMD_READ, handle.handle, int64(offset), int(length))
                                     for offset, length in itertools.islice(todo, PIPELINE_REQUESTS))
        while inflight:
            parts.append(answers.wait(inflight.popleft()))
            following = next(todo, None)
            if following is not None:
                inflight.append(answers.send(CMD_READ, handle.handle, int64(following[0]), int(following[1])))
        self._check(path, self._to_stat(path, answers.wait(before)), expect, "since it was scanned")
        self._check(path, self._to_stat(path, handle.stat()), expect, "while it was read")
        data, got = [], iter(parts)
        for want in wants:
            chunk = b"".join(next(got) for _ in range(0, want, READ_REQUEST))
            data.append(chunk)
        self._check_lengths(path, ranges, wants, data)
        return data

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
        attr = self._run("", lambda conn: conn.sftp.stat(remote))
        if attr.st_mode is not None and not stat_mod.S_ISDIR(attr.st_mode):
            raise OriginNotFound(f"{self.name}: {remote} is not a directory", origin=self.name)

    def close(self) -> None:
        self._pool.close()
