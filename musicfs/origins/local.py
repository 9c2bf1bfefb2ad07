"""LocalOrigin: a directory on this machine (or a NAS mounted on it)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mod
import threading
from typing import Iterator

from ..shared import (
    LocalExhaustion,
    OriginError,
    OriginFatal,
    OriginFileChanged,
    OriginNotFound,
    OriginPermission,
    OriginTransient,
    PathEscape,
    mount_entries,
    points,
)
from .base import SETTLE_MARGIN, FileStat, Identity, Origin, escape_name, unescape_name


def local_etag(st: os.stat_result) -> str:
    """A local file's ETag, as a web server makes one from its inode: the inode and the ctime (hex). A write
    moves the ctime even when the mtime is put back (`touch -r`, restores, sync tools), and a file renamed over
    another is another inode, so a same-size rewrite is always a new identity."""
    return f"{st.st_ino:x}-{st.st_ctime_ns:x}"


def _ctime_ns(identity: Identity) -> int | None:
    """The ctime inside a local ETag (local_etag), or None for another form."""
    try:
        return int(identity.etag.rpartition("-")[2], 16)
    except ValueError:
        return None


# Filesystems whose timestamps come from another machine's clock: their ctimes say nothing against ours.
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre", "gpfs",
               "beegfs", "virtiofs", "davfs", "ncpfs", "orangefs"}


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding `path` (the mount table's last mount of its device); "" if unknown."""
    try:
        dev = os.stat(path).st_dev
        want = f"{os.major(dev)}:{os.minor(dev)}"
        return next((e.fstype for e in reversed(list(mount_entries())) if e.device == want), "")
    except OSError:
        return ""


_TRANSIENT = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR}
# A folder below the root that cannot be listed for one of these is skipped with a log line, and the
# rest is scanned; any other error (EIO, ESTALE...) fails the walk, as its files would look deleted.
_SKIP_ENTRY = {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP,
               errno.EILSEQ, errno.EINVAL}
LOG_SKIPPED = 20  # entries a walk names one by one; more are counted in one summary line

log = logging.getLogger(__name__)


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


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)  # d_type from readdir: no stat of the too-long path
    except OSError:
        return False


def _shown(rel: str, full_bytes: int, limit: int = 240) -> str:
    """A path for a log line: one too long for the system is cut in the middle, with its full length."""
    return rel if len(rel) <= limit else f"{rel[:limit // 2]}...{rel[-limit // 2:]} (a path of {full_bytes} bytes)"


class _Skipped:
    """Entries a walk had to leave out (too deep for PATH_MAX, a name the OS refuses, no permission)."""

    def __init__(self, origin: str, root: str):
        self.origin = origin
        self.root = root
        self.count = 0

    def add(self, rel: str, is_dir: bool, exc: OSError) -> None:
        self.count += 1
        if self.count <= LOG_SKIPPED:
            why = exc.strerror or str(exc)
            if exc.errno == errno.ENAMETOOLONG:
                why += " (deeper than the system's path limit)"
            log.warning("scan: %s: skipping %s %s: %s; the rest is scanned", self.origin,
                        "folder" if is_dir else "file",
                        _shown(rel, len(os.fsencode(os.path.join(self.root, unescape_name(rel))))), why)

    def summary(self) -> None:
        if self.count > LOG_SKIPPED:
            log.warning("scan: %s: %d files and folders skipped in all (the first %d named above)",
                        self.origin, self.count, LOG_SKIPPED)


class LocalOrigin(Origin):
    def __init__(self, root: str | os.PathLike):
        self.name = str(root)
        # A missing root is not an error here: a mount may start offline and serve its cache.
        self.root = os.path.realpath(root)
        self._same_clock: bool | None = None  # whether the root's timestamps come from this machine's clock

    # -- racy versions -------------------------------------------------------
    def timestamp_resolution(self, identity: Identity) -> float:
        """Measured from the file itself: a ctime in whole seconds is a filesystem that keeps no more (an ext4
        with 128-byte inodes, FAT's 2 s, many NAS shares); else the kernel's clock tick, well within 50 ms."""
        ctime = _ctime_ns(identity)
        if ctime is None or ctime % 1_000_000_000 == 0:
            return 2.0
        return 0.05

    def changed_before(self, identity: Identity, when: float) -> bool:
        """The ctime is stamped by this machine's kernel unless the root is on a network filesystem (or any FUSE
        one): then the origin's clock is another machine's, and only the time the version was seen counts.
        Called on the trio loop (a FUSE open): it never touches the disk itself."""
        ctime = _ctime_ns(identity)
        if not self._same_clock or ctime is None:  # None: not known yet (learnt by a walk or read, in a thread)
            return False
        return ctime / 1e9 + self.timestamp_resolution(identity) + SETTLE_MARGIN <= when

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
        if not stat_mod.S_ISREG(st.st_mode):  # a FIFO or device swapped in for a track: never opened for reading
            raise OriginFileChanged(f"{self.name}: {path} is no longer a regular file", origin=self.name, path=path)
        return FileStat(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, etag=local_etag(st))

    # -- Origin ------------------------------------------------------------
    def _learn_clock(self) -> None:
        """Whether the root's timestamps come from this machine's clock (in a worker thread: a stat of the root and
        the mount table, which a hung share could block)."""
        if self._same_clock is None:
            fstype = filesystem_type(self.root)
            self._same_clock = bool(fstype) and fstype not in _NETWORK_FS and not fstype.startswith("fuse")

    def walk(self) -> Iterator[FileStat]:
        self._learn_clock()
        skipped = _Skipped(self.name, self.root)
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            try:
                entries = sorted(os.scandir(self._resolve(rel_dir) if rel_dir else self.root), key=lambda e: e.name)
            except OSError as exc:
                if not rel_dir or exc.errno not in _SKIP_ENTRY:
                    raise map_os_error(exc, self.name, rel_dir) from exc
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # not just gone since it was listed
                    skipped.add(rel_dir, True, exc)  # the rest of the library is still scanned
                continue
            for entry in entries:
                name = escape_name(entry.name)  # a name that is not UTF-8 is kept, escaped (see base.py)
                rel = f"{rel_dir}/{name}" if rel_dir else name
                try:
                    full = self._resolve(rel)
                except PathEscape:
                    continue  # a symlink pointing outside the root is not part of the library
                try:
                    st = os.stat(full)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # not a dangling link or vanished file
                        skipped.add(rel, _is_dir(entry), exc)
                    continue
                if stat_mod.S_ISDIR(st.st_mode):
                    if not entry.is_symlink():  # never follow directory symlinks: no loops
                        stack.append(rel)
                elif stat_mod.S_ISREG(st.st_mode):  # FIFOs, sockets and devices are no music
                    yield self._stat_result(rel, st)
        skipped.summary()

    def stat(self, path: str) -> FileStat:
        self._learn_clock()
        full = self._resolve(path)
        try:
            st = os.stat(full)
        except OSError as exc:
            raise map_os_error(exc, self.name, path) from exc
        return self._stat_result(path, st)

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        """Only a regular file is read: it is opened without blocking (a FIFO swapped in for a track would
        wait for a writer for ever) and refused unless fstat says it is regular. With `expect`, the file's
        identity (size, mtime, inode and ctime) is checked before and after the bytes are read, so an in-place
        edit during the read is caught."""
        self._learn_clock()
        full = self._resolve(path)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise map_os_error(exc, self.name, path) from exc
        try:
            before = os.fstat(fd)
            found = self._stat_result(path, before)  # OriginFileChanged unless regular
            if expect is not None:
                found.identity.require(expect.identity, origin=self.name, path=path)
            points.hit(points.ORIGIN_READ_CHECKED, OriginTransient)
            parts = []
            while length > 0:
                data = os.pread(fd, length, offset)
                if not data:
                    break
                parts.append(data)
                offset += len(data)
                length -= len(data)
            if expect is not None:  # size, mtime, inode and ctime: a write during the read moves the ctime
                self._stat_result(path, os.fstat(fd)).identity.require(found.identity, origin=self.name, path=path,
                                                                        when="while it was read")
            return b"".join(parts)
        except OSError as exc:
            raise map_os_error(exc, self.name, path) from exc
        finally:
            os.close(fd)

    def write_file(self, path: str, data: bytes) -> None:
        """Written beside the target, flushed, then renamed over it (atomic on one filesystem)."""
        full = self._resolve(path)
        temp = f"{full}.{os.getpid()}-{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, full)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise map_os_error(exc, self.name, path) from exc

    def remove_file(self, path: str) -> None:
        try:
            os.unlink(self._resolve(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise map_os_error(exc, self.name, path) from exc

    def probe(self) -> None:
        if not os.path.isdir(self.root):
            raise OriginNotFound(f"source {self.name} is not a directory", origin=self.name)
        try:
            os.listdir(self.root)
        except OSError as exc:
            raise map_os_error(exc, self.name, "") from exc
