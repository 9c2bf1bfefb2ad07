"""Assertions shared by the mount tests."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path


def file_digest(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(block):
            h.update(data)
    return h.hexdigest()


def tree_files(root: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


def assert_same_bytes(mounted: str | os.PathLike, origin: str | os.PathLike) -> None:
    """A file read through the mount equals its origin byte for byte (size, then content)."""
    a, b = os.path.getsize(mounted), os.path.getsize(origin)
    assert a == b, f"{mounted}: {a} bytes through the mount, {b} at the origin"
    assert file_digest(mounted) == file_digest(origin), f"{mounted}: content differs from {origin}"


def assert_mount_matches_origin(mountpoint: str | os.PathLike, origin_files: list[Path]) -> dict[str, Path]:
    """Every file in the mount has the bytes of exactly one origin file, and the counts agree.

    Returns mount path -> origin path. The tree renames files, so they are paired by content.
    """
    by_digest: dict[str, list[Path]] = {}
    for f in origin_files:
        by_digest.setdefault(file_digest(f), []).append(f)
    pairs: dict[str, Path] = {}
    seen: Counter[str] = Counter()
    for m in tree_files(mountpoint):
        digest = file_digest(m)
        assert digest in by_digest, f"{m}: bytes match no origin file"
        pairs[str(m)] = by_digest[digest][seen[digest] % len(by_digest[digest])]
        seen[digest] += 1
    return pairs
