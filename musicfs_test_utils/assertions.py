"""Assertions shared by the mount tests."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

ASSERTED = "musicfs_asserted"  # set on a record assert_logs required: the expected_log plugin lets it pass


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


class LogLines(list):
    """The matching lines ("logger: message"); `records` holds their LogRecords (for exc_info, levels)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []


class _Matcher(logging.Handler):
    def __init__(self, pattern: re.Pattern, level: int):
        super().__init__(level=level)
        self.pattern = pattern
        self.lines = LogLines()

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.name}: {record.getMessage()}"
        if self.pattern.search(line):
            setattr(record, ASSERTED, True)
            self.lines.append(line)
            self.lines.records.append(record)


@contextlib.contextmanager
def assert_logs(pattern: str, count: int | None = None, level: int = logging.WARNING) -> Iterator[LogLines]:
    """The block must log a line matching `pattern` (searched in "logger: message", at `level` or above):
    exactly `count` of them, or at least one when count is None. Fails when they do not appear.

    Yields the matching lines (filled as they come). Unlike `@pytest.mark.expected_log`, which only allows
    a line, this requires it; a WARNING it matched needs no expected_log marker as well.
    """
    matcher = _Matcher(re.compile(pattern), level)
    root = logging.getLogger()
    root.addHandler(matcher)
    saved = root.level
    if root.getEffectiveLevel() > level:
        root.setLevel(level)
    try:
        yield matcher.lines
    finally:
        root.removeHandler(matcher)
        root.setLevel(saved)
    seen = len(matcher.lines)
    if count is None:
        assert seen >= 1, f"no log line matching {pattern!r}"
    else:
        assert seen == count, f"{seen} log lines matching {pattern!r}, expected {count}: {matcher.lines}"
