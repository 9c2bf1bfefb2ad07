"""LocalOrigin: a directory on this machine (or a NAS mounted on it)."""

from __future__ import annotations

import errno
import os
from typing import Iterator

from ..errors import (
    LocalExhaustion,
    OriginError,
    OriginFatal,
    OriginFileChanged,
    OriginNotFound,
    OriginPermission,
    OriginTransient,
    PathEscape,
)
from .base import FileStat, Origin, escape_name, unescape_name

_TRANSIENT = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR}


def map_os_error(exc: OSError, origin: str, path: str) -> OriginError:
    """Classify an OSError into the origin error tree."""
    msg = f"{origin}: {path}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return OriginNotFound(msg, origin=origin, path=path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return OriginPermission(msg, origin=origin, path=path)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return LocalExhaustion(msg, origin=origin, path=path)
    if exc.errno in _TRANSIENT:
        return OriginTransient(msg, origin=origin, path=path)
    return OriginFatal(msg, origin=origin, path=path)


class LocalOrigin(Origin):
    def __init__(self, root: str | os.PathLike):
        self.name = str(root)
        # A missing root is not an error here: a mount may start offline and serve its cache.
        self.root = os.path.realpath(root)

    # -- path safety -------------------------------------------------------
    def _resolve(self, path: str) -> str:
        """Absolute path for `path` (names escaped as by walk), refusing anything that leaves the root."""
        if "\0" in path or os.path.isabs(path):
            raise PathEscape(f"{self.name}: refusing path {path!r}", origin=self.name, path=path)
        full = os.path.realpath(os.path.join(self.root, unescape_name(path)))
        if full != self.root and not full.startswith(self.root + os.sep):
            raise PathEscape(f"{self.name}: {path!r} leaves the source directory", origin=self.name, path=path)
        return full

    def _stat_result(self, path: str, st: os.stat_result) -> FileStat:
        return FileStat(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)

    # -- Origin ------------------------------------------------------------
    def walk(self) -> Iterator[FileStat]:
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            try:
                entries = sorted(os.scandir(self._resolve(rel_dir) if rel_dir else self.root), key=lambda e: e.name)
            except OSError as exc:
                raise map_os_error(exc, self.name, rel_dir) from exc
            for entry in entries:
                name = escape_name(entry.name)  # a name that is not UTF-8 is kept, escaped (see base.py)
                rel = f"{rel_dir}/{name}" if rel_dir else name
                try:
                    full = self._resolve(rel)
                except PathEscape:
                    continue  # a symlink pointing outside the root is not part of the library
                try:
                    st = os.stat(full)
                except OSError:
                    continue  # dangling symlink or vanished file
                if os.path.isdir(full):
                    if not entry.is_symlink():  # never follow directory symlinks: no loops
                        stack.append(rel)
                elif os.path.isfile(full):
                    yield self._stat_result(rel, st)

    def stat(self, path: str) -> FileStat:
        full = self._resolve(path)
        try:
            st = os.stat(full)
        except OSError as exc:
            raise map_os_error(exc, self.name, path) from exc
        return self._stat_result(path, st)

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        full = self._resolve(path)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise map_os_error(exc, self.name, path) from exc
        try:
            if expect is not None:
                now = self._stat_result(path, os.fstat(fd))
                if not now.same_identity(expect):
                    raise OriginFileChanged(f"{self.name}: {path} changed since it was scanned", origin=self.name, path=path)
            parts = []
            while length > 0:
                data = os.pread(fd, length, offset)
                if not data:
                    break
                parts.append(data)
                offset += len(data)
                length -= len(data)
            return b"".join(parts)
        except OSError as exc:
            raise map_os_error(exc, self.name, path) from exc
        finally:
            os.close(fd)

    def probe(self) -> None:
        if not os.path.isdir(self.root):
            raise OriginNotFound(f"source {self.name} is not a directory", origin=self.name)
        try:
            os.listdir(self.root)
        except OSError as exc:
            raise map_os_error(exc, self.name, "") from exc
