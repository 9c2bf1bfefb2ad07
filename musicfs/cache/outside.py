"""The cache seen from outside a daemon, read-only unless asked: what `musicfs status` and `fsck` read of it."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass

from ..shared import CasIndexError, ro_connect, sqlite_corruption, stamp
from .files import QUARANTINE, TMP
from .index import INDEX_NAME


@dataclass(frozen=True)
class CacheUsage:
    """What a cache folder holds, as its index and quarantine say."""

    used_bytes: int = 0
    chunks: int = 0
    quarantine_bytes: int = 0
    quarantine_files: int = 0
    indexed: bool = False  # the index was there (before the first chunk there is none)


def quarantine_usage(cache_dir: str) -> tuple[int, int]:
    """(bytes, files) of the damaged chunk files quarantine keeps for inspection."""
    return folder_usage(os.path.join(cache_dir, QUARANTINE))


def index_file(cache_dir: str) -> str:
    return os.path.join(cache_dir, INDEX_NAME)


def cache_usage(cache_dir: str) -> CacheUsage:
    """Bytes and chunks the index records (none yet without an index) and what quarantine keeps; CasIndexError
    naming the index when it cannot be read."""
    index = index_file(cache_dir)
    kept, files = quarantine_usage(cache_dir)
    try:
        with closing(ro_connect(index)) as db:
            used, chunks = db.execute("SELECT coalesce(sum(size), 0), count(*) FROM chunks").fetchone()
    except FileNotFoundError:
        return CacheUsage(quarantine_bytes=kept, quarantine_files=files)
    except sqlite3.Error as exc:
        raise CasIndexError(f"cache index {index}: {exc}") from exc
    return CacheUsage(int(used), int(chunks), kept, files, indexed=True)


def indexed_chunks(cache_dir: str) -> tuple[dict[str, int], list[str]]:
    """(hash -> size as the index records it, the index's damage as SQLite's integrity_check reports it): ({}, [])
    without an index, ({}, problems) for a damaged one; CasIndexError when it cannot be read for another reason."""
    index = index_file(cache_dir)
    if not os.path.exists(index):
        return {}, []
    try:
        with closing(ro_connect(index)) as db:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            return ({} if problems else dict(db.execute("SELECT hash, size FROM chunks"))), problems
    except sqlite3.DatabaseError as exc:
        if not sqlite_corruption(exc) and "no such table" not in str(exc):
            raise CasIndexError(f"cannot check the cache index {index}: {exc}") from exc
        return {}, [str(exc)]


def temp_leftovers(cache_dir: str) -> list[str]:
    """Half-written temp files a crash left (the store removes them when it opens with full checks)."""
    tmp = os.path.join(cache_dir, TMP)
    return [os.path.join(tmp, name) for name in os.listdir(tmp)] if os.path.isdir(tmp) else []


def quarantine_stray(cache_dir: str, path: str) -> str:
    """Move a file under chunks/ that is not a chunk into quarantine (never deleted); where it went."""
    quarantine = os.path.join(cache_dir, QUARANTINE)
    os.makedirs(quarantine, exist_ok=True)
    dest = os.path.join(quarantine, f"{os.path.basename(path)}.stray-{stamp()}")
    os.rename(path, dest)
    return dest


def folder_usage(folder: str) -> tuple[int, int]:
    """(bytes, files) of the regular files in `folder`; (0, 0) when it cannot be listed."""
    size = files = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        size += entry.stat(follow_symlinks=False).st_size
                        files += 1
                except OSError:
                    continue
    except OSError:
        pass
    return size, files
