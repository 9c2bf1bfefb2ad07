"""The Origin interface every backend (local, S3, SFTP) and every fake implements."""

from __future__ import annotations

import abc
import errno
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence
from urllib.parse import SplitResult, urlsplit

from ..shared import LocalExhaustion, OriginError, OriginFatal, OriginFileChanged


@dataclass(frozen=True)
class Identity:
    """One version of a file as an origin tells it: size, mtime (ns) and ETag.

    Unknown parts are empty: size -1 (an S3 GET that did not say), mtime_ns 0, etag "". `key` is the
    text form the catalog stores (manifest keys, inode keys): `size:mtime_ns:etag`; it must not change,
    or existing catalogs and manifests would no longer match.
    """

    size: int
    mtime_ns: int = 0
    etag: str = ""

    @property
    def key(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.etag}"

    def matches(self, other: "Identity", *, strict: bool = True) -> bool:
        """Whether `other` is the same version of the file.

        strict: size, mtime and ETag all equal (an origin compared with its own earlier answer).
        Not strict: only what both sides know. The size when both know it, then the ETag when both have
        one (S3: it names the content, so the mtime is not compared), else the mtime when both have one.
        A size-only identity (`Identity(size)`) thus checks a replica's copy by size alone.
        """
        if strict:
            return self == other
        if self.size >= 0 and other.size >= 0 and self.size != other.size:
            return False
        if self.etag and other.etag:
            return self.etag == other.etag
        if self.mtime_ns and other.mtime_ns:
            return self.mtime_ns == other.mtime_ns
        return True

    def require(self, expected: "Identity", *, origin: str, path: str, when: str = "since it was scanned",
                strict: bool = True) -> None:
        """OriginFileChanged, naming what differs, unless this (what the origin says now) `matches` `expected`:
        every origin checks a file's version this one way."""
        if self.matches(expected, strict=strict):
            return
        changed = ", ".join(f"{name} {a!r} -> {b!r}" for name, a, b in (
            ("size", expected.size, self.size), ("mtime_ns", expected.mtime_ns, self.mtime_ns),
            ("etag", expected.etag, self.etag)) if a != b)
        raise OriginFileChanged(f"{origin}: {path} changed {when} ({changed})", origin=origin, path=path)


@dataclass(frozen=True)
class SessionStatistics:
    """The connections an origin keeps open itself (SFTP: its ssh sessions), trio's statistics() style."""

    sessions: int  # live now
    starting: int  # being set up now
    started: int  # since the origin was made
    replaced: int  # found dead and started again
    requests_waiting: int  # requests sent and not answered yet, over every live session


@dataclass(frozen=True)
class FileStat:
    """What an origin says about one file. `path` is relative, '/'-separated."""

    path: str
    size: int
    mtime_ns: int
    etag: str = ""

    @classmethod
    def of(cls, path: str, identity: Identity) -> "FileStat":
        return cls(path, identity.size, identity.mtime_ns, identity.etag)

    @property
    def identity(self) -> Identity:
        return Identity(self.size, self.mtime_ns, self.etag)

    def same_identity(self, other: "FileStat") -> bool:
        return self.identity.matches(other.identity)


class Origin(abc.ABC):
    """A read-only source of files.

    Every method is blocking and thread-safe: callers run them in worker threads
    (trio.to_thread with a limiter and a deadline), never on the trio loop.
    Errors are raised as musicfs.shared.errors.OriginError subclasses.
    """

    #: A stable, human-readable name (the SOURCE as given), used in logs and status.
    name: str

    #: Files a scan reads tags of at once: enough to hide the round trip of a remote origin (which
    #: overrides it), few for a local disk.
    scan_parallelism: int = 4

    #: Whether reads of one stream (open_stream) are cheap only in offset order (an origin that reads one long body
    #: on), so a reader sends them one batch at a time; otherwise batches may run at once (none of ours is ordered:
    #: SFTP reads on pooled connections, S3 in part GETs).
    ordered_streams: bool = False

    def sessions(self) -> SessionStatistics | None:
        """The connections this origin keeps open itself (status and metrics show them); None when it keeps none."""
        return None

    @abc.abstractmethod
    def walk(self) -> Iterator[FileStat]:
        """Yield every regular file under the origin's root."""

    @abc.abstractmethod
    def stat(self, path: str) -> FileStat:
        """Stat one file; OriginNotFound if it is gone."""

    @abc.abstractmethod
    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        """Read up to `length` bytes at `offset` (fewer only at end of file).

        With `expect`, raise OriginFileChanged when the file's identity differs,
        so bytes of a changed file are never mixed with cached ones.
        """

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]],
                    expect: FileStat | None = None) -> list[bytes]:
        """`read` of many (offset, length) ranges of one file, all of one version of it, in order.

        Each answer is as `read`'s (fewer bytes only at end of file). With `expect`, every range is of
        that version (OriginFileChanged otherwise); without, of the version the first range found.
        Origins that can pipeline (SFTP: one open handle, many requests in flight; S3: concurrent
        ranged GETs) override it; this default reads range by range through `read`, so fakes work.
        """
        if len(ranges) == 1:  # one read, no stream
            ((offset, length),) = ranges
            return [self.read(path, offset, length, expect)]
        with self.open_stream(path, expect) as stream:
            return stream.read_ranges(ranges)

    def open_stream(self, path: str, expect: FileStat | None = None) -> "OriginStream":
        """A handle for reading many ranges of one version of `path`, from several threads at once.

        Every read is checked against `expect` as `read` checks it (before and after its bytes are
        read); without `expect` the stream pins the version its first read found. Close it (or use it
        as a context manager): SFTP keeps the remote file open for the stream's life.
        """
        return OriginStream(self, path, expect)

    @abc.abstractmethod
    def probe(self) -> None:
        """Cheap health check; raises OriginError when unhealthy."""

    # -- racy versions (git's racy-clean rule) -----------------------------------------------------------
    def timestamp_resolution(self, identity: Identity) -> float:
        """Seconds within which two writes of the same size can leave `identity` unchanged; 0 when the
        identity names the content itself (an S3 ETag). Known or measured by each origin; this default is
        the coarsest a POSIX-like source is allowed (FAT: 2 s), so an origin that cannot tell is safe."""
        return 2.0

    def changed_before(self, identity: Identity, when: float) -> bool:
        """Whether the origin's own clock shows `identity` last changed more than a resolution before
        `when` (wall time of this machine): only an origin that shares this machine's clock can say so (a
        local disk, by the file's ctime); the others say False and `settled` falls back on when the version
        was first seen."""
        return False

    # -- writing (only `musicfs publish` writes, under the reserved folder; a mount never does) ----------------
    def write_file(self, path: str, data: bytes) -> None:
        """Put `data` at `path` whole, replacing what was there at once: a reader sees the old file or the new one,
        never half of it. Folders are made as needed. OriginPermission when the credentials cannot write."""
        raise OriginFatal(f"{self.name}: this kind of origin cannot be written", origin=self.name, path=path)

    def remove_file(self, path: str) -> None:
        """Remove the file at `path`; a file already gone is no error."""
        raise OriginFatal(f"{self.name}: this kind of origin cannot be written", origin=self.name, path=path)

    def close(self) -> None:
        """Release connections. Safe to call twice."""


#: What is added to an origin's timestamp resolution before a version counts as settled: the kernel stamps
#: times from a clock that lags by up to a tick, and one write() goes on copying after its stamp.
SETTLE_MARGIN = 0.25


def settled(origin: Origin, identity: Identity, seen: float, started: float) -> bool:
    """Whether bytes of `identity` read by a fetch that started at `started` (wall time) may be cached.

    A version is *racy* while another write could still leave its identity unchanged: two same-size
    writes within one timestamp unit (SFTP's whole seconds, FAT, an ext4 with small inodes). Its bytes
    are served to the reader that asked, never kept. It is settled when the origin's own clock says it
    last changed long enough ago (`Origin.changed_before`), or when the fetch started a resolution (and
    the margin) after the version was first seen (`seen`, this machine's wall time): every write that
    gives that identity happened within one unit after the first one, which happened before it was seen,
    so a fetch that starts later reads the version's last bytes. No clock of the origin is trusted.
    """
    resolution = origin.timestamp_resolution(identity)
    if resolution <= 0:
        return True
    if origin.changed_before(identity, started):
        return True
    return started >= seen + resolution + SETTLE_MARGIN


# -- classifying an SDK's exceptions ------------------------------------------------------------------
Verdict = tuple[type[OriginError], str]  # the error class, and the message's detail


def classify_error(exc: BaseException, origin: str, path: str, decide: Callable[[BaseException], Verdict]) -> OriginError:
    """`exc` (a boto3, SFTP or socket exception) as an OriginError of the class `decide` says, its message
    naming the origin and the path; an OriginError stays as it is. Every remote origin maps its SDK's
    exceptions through this, so they all name things alike."""
    if isinstance(exc, OriginError):
        return exc
    where = f"{origin}: {path}" if path else origin
    if (local := exhaustion(exc)) is not None:
        return LocalExhaustion(f"{where}: this process is out of resources ({local}), not the origin's fault",
                               origin=origin, path=path)
    cls, detail = decide(exc)
    return cls(f"{where}: {detail}", origin=origin, path=path)


_EXHAUSTION = {errno.EMFILE: "too many open files", errno.ENFILE: "too many open files in the system",
               errno.ENOBUFS: "no buffer space", errno.ENOMEM: "out of memory"}


def exhaustion(exc: BaseException | None) -> str | None:
    """What this process ran out of, when `exc` or an exception behind it (an SDK wraps the socket's error) is
    EMFILE, ENFILE, ENOBUFS or ENOMEM; else None. Such an error is never taken for the origin's failure."""
    for _ in range(10):  # a chain is not followed for ever
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in _EXHAUSTION:
            return _EXHAUSTION[exc.errno]
        exc = exc.__cause__ or exc.__context__
    return None


def is_safe_relative(path: str) -> bool:
    """Whether `path` is a plain relative path below a root: not empty, no NUL, not absolute, no empty, `.` or
    `..` segment (what an origin may be asked for, and what a published catalog may name)."""
    if not path or "\0" in path or path.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def split_url(url: str, scheme: str) -> SplitResult:
    """A remote origin's URL split into its parts; OriginFatal unless it is a `scheme://` URL without a query
    string or fragment."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise OriginFatal(f"{url}: not an {scheme}:// URL", origin=url)
    if parts.query or parts.fragment:
        raise OriginFatal(f"{url}: query strings and fragments are not supported", origin=url)
    return parts


class OriginStream:
    """Reads of one version of one file (see `Origin.open_stream`). Thread-safe; blocking like the origin.

    This default reads through `origin.read(path, offset, length, expect)`; without an `expect` it
    stats the file once and pins that identity, so its reads are never of two versions.
    """

    def __init__(self, origin: Origin, path: str, expect: FileStat | None = None):
        self.origin = origin
        self.path = path
        self.expect = expect
        self.closed = False
        self._pin_lock = threading.Lock()

    def _pinned(self) -> FileStat:
        expect = self.expect
        if expect is None:
            with self._pin_lock:
                if self.expect is None:
                    self.expect = self.origin.stat(self.path)
                expect = self.expect
        return expect

    def read(self, offset: int, length: int) -> bytes:
        """`Origin.read` of this stream's file and version."""
        if self.closed:
            raise ValueError(f"{self.origin.name}: stream of {self.path} is closed")
        return self.origin.read(self.path, offset, length, self._pinned())

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self.read(offset, length) for offset, length in ranges]

    def close(self) -> None:
        """Release what the stream holds. Safe to call twice."""
        self.closed = True

    def __enter__(self) -> "OriginStream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# -- names that are not UTF-8 -----------------------------------------------------
# Above the origins a path is text (SQLite TEXT, inode keys, the search index, logs), but a POSIX
# name is bytes. os.fsdecode turns each undecodable byte into a lone surrogate U+DC80..U+DCFF, which
# SQLite refuses. An origin that can list such names yields them escaped, losslessly: each of those
# surrogates becomes NAME_ESCAPE and two hex digits, NAME_ESCAPE itself is doubled. NAME_ESCAPE is
# U+FDD0, a Unicode noncharacter (reserved for internal use), so every real-world name is unchanged
# and catalogs written before keep their keys. The origin unescapes before touching the file.
NAME_ESCAPE = "\ufdd0"
_ESCAPE_RE = re.compile("[\udc80-\udcff\ufdd0]")
_UNESCAPE_RE = re.compile("\ufdd0(\ufdd0|[0-9A-F]{2})")


def escape_name(name: str) -> str:
    """A name from os.fsdecode (surrogate escapes) as valid UTF-8 text that unescape_name reverses."""
    if not _ESCAPE_RE.search(name):
        return name
    return _ESCAPE_RE.sub(lambda m: NAME_ESCAPE * 2 if m[0] == NAME_ESCAPE else f"{NAME_ESCAPE}{ord(m[0]) - 0xDC00:02X}",
                          name)


def unescape_name(text: str) -> str:
    """escape_name reversed: surrogate escapes again, so os.fsencode gives back the real bytes."""
    if NAME_ESCAPE not in text:
        return text
    return _UNESCAPE_RE.sub(lambda m: NAME_ESCAPE if m[1] == NAME_ESCAPE else chr(0xDC00 + int(m[1], 16)), text)
