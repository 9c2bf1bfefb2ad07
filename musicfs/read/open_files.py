"""The reader's record of an open file (one version of it) and of a next track's head being loaded."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from ..library import Block, FileRow
from ..origins import RegistryStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NextHead:
    """A read-ahead job's file: the head of the track after the one being read (not open, or open elsewhere)."""

    row: FileRow


@dataclass
class OpenFile:
    row: FileRow
    manifest: dict[int, str]
    seen: float  # when the catalog first recorded this version (racy versions: origins/base.py, settled)
    pinned: dict[str, int] = field(default_factory=dict)  # digest -> chunk index, pinned against eviction
    refs: int = 1
    next_track: Callable[[], FileRow | None] | None = None  # the track after this one in its album folder
    origin: RegistryStream | None = None  # while streamed: the origins' open streams of the file (SFTP: kept open)
    blocks: list[Block] | None = None  # this version's recorded blocks (blocks.py), loaded at the first small read
    unpinned_below: int = 0  # its one reader has passed the chunks below this index (see _unpin_before)
    played: bool = False  # its one reader streams (see _unpin_before)
    inode: int = 0  # its inode in the mount (0: none, as for a pin's reads): where its pages are pushed
    sequential: bool = False  # a handle of it streams: its verified chunks go to the kernel's page cache
    pushed: set[int] = field(default_factory=set)  # chunks offered to the page cache since it was opened
