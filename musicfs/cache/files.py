"""The cache's chunk files: their layout on disk (chunks/ab/<hash>, tmp/, quarantine/), atomic writes, removal and quarantine."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from ..shared import (
    CacheFull,
    CasError,
    TooManyOpenFiles,
    points,
)

log = logging.getLogger(__package__ + ".cas")  # one component, one logger: CasStore's

# quarantine/ keeps the newest damaged files for inspection, within both bounds; its bytes count against
# the quota (a soak once left 91 MiB there beside a 40 MiB quota).
CHUNKS, TMP, QUARANTINE = "chunks", "tmp", "quarantine"  # the folders under the cache dir
QUARANTINE_FILES = 64
QUARANTINE_SHARE = 0.10  # of the quota
_HASH_NAME = re.compile(r"[0-9a-f]{64}")
_FD_ERRNOS = {errno.EMFILE, errno.ENFILE}



def chunk_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_hash_name(name: str) -> bool:
    # one regex match, not a generator over 64 characters: start-up walks every chunk file (100k: 0.8 s)
    return _HASH_NAME.fullmatch(name) is not None


def raise_if_fd_exhausted(exc: OSError, doing: str) -> None:
    """EMFILE/ENFILE is the process running out of descriptors, not a broken cache disk."""
    if exc.errno in _FD_ERRNOS:
        raise TooManyOpenFiles(f"too many open files ({errno.errorcode[exc.errno]}) {doing}; this request fails "
                               f"with EIO, later ones succeed once descriptors are free (raise LimitNOFILE= if "
                               f"it persists)") from exc


def scan_chunk_sizes(root: str) -> Iterator[tuple[str, int]]:
    """(digest, size) of every well-named chunk file in its right folder under `root`/chunks (one scandir per
    folder, one stat per file)."""
    base = os.path.join(root, CHUNKS)
    try:
        subs = sorted(os.listdir(base))
    except FileNotFoundError:
        return
    for sub in subs:
        try:
            with os.scandir(os.path.join(base, sub)) as entries:
                for entry in entries:
                    name = entry.name
                    if name[:2] != sub or not is_hash_name(name):
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            yield name, entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # evicted since the listing
        except (FileNotFoundError, NotADirectoryError):
            continue


def walk_chunk_files(root: str, strays: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(digest, path) of every well-named chunk file in its right folder under `root`/chunks, sorted; the
    paths of anything else there go to `strays` when it is given."""
    base = os.path.join(root, CHUNKS)
    for sub in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        folder = os.path.join(base, sub)
        if not os.path.isdir(folder):
            if strays is not None:
                strays.append(folder)
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if is_hash_name(name) and name[:2] == sub and (strays is None or os.path.isfile(path)):
                yield name, path
            elif strays is not None:
                strays.append(path)


@dataclass(frozen=True)
class ChunkCheck:
    digest: str
    path: str
    size: int
    ok: bool  # its bytes hash to its name


class ChunkVerification:
    """The result of CasStore.verify_chunks: iterate for one ChunkCheck per chunk file, verified as it goes."""

    def __init__(self, root: str):
        self.strays: list[str] = []
        self.files = list(walk_chunk_files(root, self.strays))

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[ChunkCheck]:
        for digest, path in self.files:
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                continue  # evicted by a running daemon since the listing
            yield ChunkCheck(digest, path, len(data), chunk_hash(data) == digest)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class ChunkFiles:
    """CasStore's part for this module's concern (see its docstring); state lives in CasStore."""

    def _prepare_folders(self) -> None:
        """Make chunks/, tmp/ and quarantine/, and empty tmp/."""
        for sub in (CHUNKS, TMP, QUARANTINE):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        tmp = os.path.join(self.root, TMP)
        for name in os.listdir(tmp):
            try:
                os.unlink(os.path.join(tmp, name))  # half-written chunks of a crashed run
            except FileNotFoundError:
                pass

    def _path(self, digest: str) -> str:
        return os.path.join(self.root, CHUNKS, digest[:2], digest)

    chunk_path = _path

    def _quarantine_file(self, digest: str) -> str:
        dest = os.path.join(self.root, QUARANTINE, f"{digest}.{int(time.time())}")
        n = 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(self.root, QUARANTINE, f"{digest}.{int(time.time())}.{n}")
        os.rename(self._path(digest), dest)
        try:  # a rename keeps the chunk's mtime: "newest" means newest in quarantine (to the ns, not the tick)
            now = time.time_ns()
            os.utime(dest, ns=(now, now))
        except OSError:
            pass
        self._prune_quarantine()
        return dest

    def _prune_quarantine(self) -> None:
        """Keep the newest quarantined files within the bounds, delete the older ones (one log line), and
        remember what is kept. Never raises: a quarantine that cannot be listed or pruned is only logged."""
        folder = os.path.join(self.root, QUARANTINE)
        found = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            found.append((st.st_mtime_ns, entry.name, st.st_size))
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cache: cannot list the quarantine %s: %s", folder, exc.strerror or exc)
            return
        kept = kept_bytes = dropped = dropped_bytes = 0
        failed = ""
        full = False
        for _mtime, name, size in sorted(found, reverse=True):  # newest first
            if not full and kept < self.quarantine_files and kept_bytes + size <= self.quarantine_bytes_max:
                kept, kept_bytes = kept + 1, kept_bytes + size
                continue
            full = True  # everything older than the first file that does not fit goes
            try:
                os.unlink(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            except OSError as exc:
                failed = failed or (exc.strerror or str(exc))
                kept, kept_bytes = kept + 1, kept_bytes + size
                continue
            dropped, dropped_bytes = dropped + 1, dropped_bytes + size
        with self._lock:
            self._quarantined = (kept_bytes, kept)
        if dropped:
            log.info("cache: quarantine %s: deleted the %d oldest files (%d bytes); keeping the newest %d (%d bytes) "
                     "for inspection (at most %d files, %d bytes)", folder, dropped, dropped_bytes, kept, kept_bytes,
                     self.quarantine_files, self.quarantine_bytes_max)
        if failed:
            log.warning("cache: quarantine %s: cannot delete old files (%s); they still count against the quota",
                        folder, failed)

    def _write_chunk_file(self, digest: str, data: bytes) -> None:
        """put's file write; a full disk: evict and retry once, else CacheFull."""
        try:
            self._write_file(digest, data)
        except OSError as exc:
            raise_if_fd_exhausted(exc, f"writing chunk {digest[:12]} to the cache")
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise CasError(f"cache: cannot write chunk {digest[:12]}: {exc.strerror}") from exc
            freed = self._evict_for_disk(len(data))
            try:
                self._write_file(digest, data)
            except OSError as exc2:
                raise_if_fd_exhausted(exc2, f"writing chunk {digest[:12]} to the cache")
                raise CacheFull(f"cache: disk full writing chunk {digest[:12]} ({exc2.strerror}) even after "
                                f"evicting {freed} bytes") from exc2

    def _write_file(self, digest: str, data: bytes) -> None:
        points.hit(points.CAS_PUT_BEFORE_WRITE, CasError)
        final = self._path(digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(self.root, TMP, f"{digest}.{threading.get_ident()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, final)
        except BaseException:
            unlink_quietly(tmp)
            raise

    def _walk_chunk_files(self) -> Iterator[tuple[str, str]]:
        """(digest, path) of every well-named chunk file in its right folder."""
        return walk_chunk_files(self.root)

    @staticmethod
    def verify_chunks(root: str) -> "ChunkVerification":
        """Read-only: every chunk file under `root` hashed against its name (for `musicfs fsck`).

        Opens no index, creates, moves and deletes nothing, so it may run beside a daemon using the cache.
        The result lists the files up front (len() is their number, for progress) and verifies them
        one at a time as it is iterated; what is not a chunk file (bad name, wrong folder) is in `strays`."""
        return ChunkVerification(root)

    def quarantine_usage(self) -> tuple[int, int]:
        """(bytes, files) kept in quarantine/ for inspection; they count against the quota too."""
        with self._lock:
            return self._quarantined
