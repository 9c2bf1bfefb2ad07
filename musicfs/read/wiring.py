"""build_reader: the read path's one wiring place (policy, loader, block reader, read-ahead, keeping, page push)."""

from __future__ import annotations

import collections
from typing import Callable

from ..cache import ChunkCache
from ..library import BLOCK_SIZE, Catalog, FileVersion
from ..origins import OriginRegistry
from .block_reader import BlockReader
from .keeping import ChunkLRU, Protection
from .loader import ChunkLoader
from .open_files import OpenFile
from .pages import PagePusher
from .plan import ReadPolicy
from .readahead import ReadAhead
from .reader import FileReader


def build_reader(catalog: Catalog, cache: ChunkCache, origins: OriginRegistry, *, chunk_size: int, memory_cache: int,
                 read_timeout: float, threads: int = 8, on_file_changed: Callable[[str], None] | None = None,
                 readahead: int = 32 << 20, readahead_window: int = 32 << 20, block_size: int = BLOCK_SIZE,
                 pages: PagePusher | None = None) -> FileReader:
    """`readahead`: bytes of chunks that may be in flight ahead of sequential readers, daemon-wide (0: off);
    `readahead_window`: how far ahead of one reader the window may grow; `block_size`: what a small read
    outside a stream fetches (aligned); 0, or not below the chunk size: reads always load whole chunks;
    `pages`: where verified chunks of sequential readers go into the kernel's page cache (None: nowhere)."""
    files: dict[FileVersion, OpenFile] = {}
    counts: collections.Counter[str] = collections.Counter()
    protection = Protection(cache)  # chunks playback still wants: evicted last
    loader = ChunkLoader(catalog, cache, origins, files=files, memory=ChunkLRU(memory_cache), protection=protection,
                         pages=pages, counts=counts, chunk_size=chunk_size, read_timeout=read_timeout, threads=threads,
                         on_file_changed=on_file_changed)
    follow = readahead >= chunk_size
    ahead = None
    # A window pins its chunks: a quarter of the cache at most, so readers never hold it over quota.
    window = max(2 * chunk_size, min(readahead_window, cache.quota // 4))
    if follow:
        workers = max(2, min(readahead // chunk_size, origins.fetch_threads - 2))
        ahead = ReadAhead(loader.prefetch, chunk_size=chunk_size, budget=readahead, workers=workers,
                          job_timeout=read_timeout)
    policy = ReadPolicy(chunk_size, block_size=block_size, readahead=follow, max_window=window // chunk_size)
    blocks = BlockReader(loader, block_size=policy.block_size) if policy.block_size else None
    return FileReader(cache=cache, origins=origins, loader=loader, blocks=blocks, policy=policy, readahead=ahead,
                      protection=protection, pages=pages, files=files, counts=counts, read_timeout=read_timeout)
