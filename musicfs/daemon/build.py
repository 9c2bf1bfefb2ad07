"""One builder from Config: the daemon's serving parts, each given what it needs at construction.

`Library.open(cfg)` opens the storage (origins with their registry, catalog, search index, CAS);
`build(cfg, lib, ...)` puts the chunk cache, the reader, the pins and the origin health monitor on top of it.
Nothing is set on a part after it was built; the daemon's TaskSupervisor is the daemon's own (it runs before the library
opens, so a signal during the start-up checks is handled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyfuse3

from ..cache import ChunkCache
from ..library import Library, PinSet, VirtualTree
from ..origins import HealthMonitor
from ..read import FileReader, PagePusher, build_reader
from ..shared import Config


@dataclass(frozen=True)
class Services:
    cache: ChunkCache
    reader: FileReader
    health: HealthMonitor
    pins: PinSet


def cache_op_timeout(read_timeout: float) -> float:
    """A cache operation may take a third of a read's budget (at most 5 s): the origin gets the rest."""
    return min(5.0, read_timeout / 3)


def build(cfg: Config, lib: Library, *, tree: Callable[[], VirtualTree],
          on_file_changed: Callable[[str], None] | None = None,
          on_origin_change: Callable[[], None] | None = None) -> Services:
    """`tree`: the tree served now (pins resolve their paths in it)."""
    cache = ChunkCache(lib.cas, op_timeout=cache_op_timeout(cfg.read_timeout))
    pages = PagePusher(pyfuse3.notify_store) if cfg.page_push else None
    reader = build_reader(lib.catalog, cache, lib.registry, chunk_size=cfg.chunk_size, memory_cache=cfg.memory_cache,
                          read_timeout=cfg.read_timeout, on_file_changed=on_file_changed, readahead=cfg.readahead,
                          pages=pages)
    health = HealthMonitor(lib.registry, interval=cfg.health_interval, timeout=cfg.health_timeout,
                           on_change=on_origin_change)
    pins = PinSet(lib.catalog, cache, chunk_size=cfg.chunk_size, quota=cfg.cache_size, tree=tree, reader=reader,
                  origins=lib.registry)
    return Services(cache, reader, health, pins)
