"""The mount table (/proc/self/mountinfo), read one way for everyone who needs it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class MountEntry:
    device: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entries(mountinfo: str = "/proc/self/mountinfo") -> Iterator[MountEntry]:
    """Every mount, in the table's order (a later one is stacked on an earlier one)."""
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 5:
                yield MountEntry(fields[2], _unescape(fields[4]), rfields[0] if rfields else "",
                                 rfields[1] if len(rfields) > 1 else "")
