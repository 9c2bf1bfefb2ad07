"""The Origin interface every backend (local, S3, SFTP) and every fake implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class FileStat:
    """What an origin says about one file. `path` is relative, '/'-separated."""

    path: str
    size: int
    mtime_ns: int
    etag: str = ""

    def same_identity(self, other: "FileStat") -> bool:
        return (self.size, self.mtime_ns, self.etag) == (other.size, other.mtime_ns, other.etag)


class Origin(abc.ABC):
    """A read-only source of files.

    Every method is blocking and thread-safe: callers run them in worker threads
    (trio.to_thread with a limiter and a deadline), never on the trio loop.
    Errors are raised as musicfs.errors.OriginError subclasses.
    """

    #: A stable, human-readable name (the SOURCE as given), used in logs and status.
    name: str

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

    @abc.abstractmethod
    def probe(self) -> None:
        """Cheap health check; raises OriginError when unhealthy."""

    def close(self) -> None:
        """Release connections. Safe to call twice."""
