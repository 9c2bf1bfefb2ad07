"""MemoryOrigin: an origin whose behaviour is a function of the request (httpx's MockTransport, for origins).

    def handler(request: Request):
        if request.op == "read" and request.path == "a.flac":
            raise OriginTransient("injected", origin="m", path=request.path)
        return files_handler(request)

    origin = MemoryOrigin(handler, name="m")

Every Origin method becomes one `Request(op, path, offset, length, expect)` passed to the handler, which
returns what the method returns (walk: an iterable of FileStat; stat: a FileStat; read: bytes; probe: ignored)
or raises the OriginError the method should raise. `serve(files)` is the handler of an origin holding
`files` that keeps the Origin contract (tests/unit/test_origin_contract.py runs it). Imports no SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from ..shared import OriginNotFound, OriginPermission
from .base import FileStat, Identity, Origin

WALK, STAT, READ, READ_RANGES, PROBE = "walk", "stat", "read", "read_ranges", "probe"
WRITE, REMOVE = "write", "remove"  # `musicfs publish` only


@dataclass(frozen=True)
class Request:
    op: str  # walk | stat | read | read_ranges | probe | write | remove
    path: str = ""
    offset: int = 0
    length: int = 0
    expect: FileStat | None = None
    ranges: tuple[tuple[int, int], ...] = ()  # read_ranges: (offset, length) each
    data: bytes = b""  # write: the file's new content


Handler = Callable[[Request], object]


class MemoryOrigin(Origin):
    def __init__(self, handler: Handler, name: str = "memory", *, resolution: float = 0.0, whole_ranges: bool = False):
        """`resolution`: the timestamp resolution the fake claims (Origin.timestamp_resolution); 0, the
        default, says its identities name their content, so nothing it serves is ever racy. `whole_ranges`: the
        handler answers READ_RANGES itself (one request for many ranges of a file); without it a read_ranges
        is the READ requests it stands for, as an origin that cannot pipeline does."""
        self.handler = handler
        self.name = name
        self.resolution = resolution
        self.whole_ranges = whole_ranges

    def timestamp_resolution(self, identity: Identity) -> float:
        return self.resolution

    def walk(self) -> Iterator[FileStat]:
        yield from self.handler(Request(WALK))  # type: ignore[misc]

    def stat(self, path: str) -> FileStat:
        return self.handler(Request(STAT, path))  # type: ignore[return-value]

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        return self.handler(Request(READ, path, offset, length, expect))  # type: ignore[return-value]

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]],
                    expect: FileStat | None = None) -> list[bytes]:
        if not self.whole_ranges:
            return super().read_ranges(path, ranges, expect)
        return self.handler(Request(READ_RANGES, path, expect=expect, ranges=tuple(ranges)))  # type: ignore

    def probe(self) -> None:
        self.handler(Request(PROBE))

    def write_file(self, path: str, data: bytes) -> None:
        self.handler(Request(WRITE, path, data=data))

    def remove_file(self, path: str) -> None:
        self.handler(Request(REMOVE, path))


def each_range(handler: Handler, request: Request) -> list[bytes]:
    """A read_ranges request as the reads it stands for, each through `handler` (one version: without an
    expect, the first stat pins it, as Origin.read_ranges does)."""
    expect = request.expect or handler(Request(STAT, request.path))
    return [handler(Request(READ, request.path, offset, length, expect)) for offset, length in request.ranges]


def forward(origin: Origin) -> Handler:
    """The handler of an origin that is `origin` itself: a real origin behind a fake, for handlers that wrap it
    (musicfs_test_utils.faulty_origin's faults)."""

    def handler(request: Request):
        if request.op == WALK:
            return origin.walk()
        if request.op == STAT:
            return origin.stat(request.path)
        if request.op == READ:
            return origin.read(request.path, request.offset, request.length, request.expect)
        if request.op == READ_RANGES:
            return origin.read_ranges(request.path, request.ranges, request.expect)
        if request.op == WRITE:
            return origin.write_file(request.path, request.data)
        if request.op == REMOVE:
            return origin.remove_file(request.path)
        return origin.probe()

    return handler


def serve(files: Mapping[str, bytes], *, mtime_ns: int = 1, etag: str = "", name: str = "memory") -> Handler:
    """The handler of an origin holding `files` (every file with this mtime and ETag); reads check `expect`
    strictly, as the local origin does. `files` is read at each request: a test may change it. Writes and
    removals change `files` when it is a dict (else OriginPermission: a read-only origin)."""

    def stat(path: str) -> FileStat:
        if path not in files:
            raise OriginNotFound(f"{name}: no {path}", origin=name, path=path)
        return FileStat(path, len(files[path]), mtime_ns, etag)

    def handler(request: Request):
        if request.op == WALK:
            return [stat(path) for path in sorted(files)]
        if request.op == STAT:
            return stat(request.path)
        if request.op == READ:
            now = stat(request.path)
            if request.expect is not None:
                now.identity.require(request.expect.identity, origin=name, path=request.path)
            return files[request.path][request.offset:request.offset + request.length]
        if request.op == READ_RANGES:
            return each_range(handler, request)
        if request.op in (WRITE, REMOVE):
            if not isinstance(files, dict):
                raise OriginPermission(f"{name}: {request.path}: read-only", origin=name, path=request.path)
            if request.op == WRITE:
                files[request.path] = request.data
            else:
                files.pop(request.path, None)
        return None  # probe: healthy

    return handler
