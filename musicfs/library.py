"""Library: the storage pieces of one library (origins, catalog, cache, index) opened together."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .cas import CasStore
from .catalog import Catalog, open_catalog
from .config import Config
from .index import IndexDoc, SearchIndex
from .origins.factory import open_origin
from .origins.registry import OriginRegistry
from .sync import Scanner, ScanResult
from .tree import FIRST_INO, VirtualTree, build_tree

log = logging.getLogger(__name__)


@dataclass
class Library:
    cfg: Config
    catalog: Catalog
    registry: OriginRegistry
    index: SearchIndex
    cas: CasStore | None = None

    @classmethod
    def open(cls, cfg: Config, with_cache: bool = True) -> "Library":
        os.makedirs(cfg.state_dir, exist_ok=True)
        origins = [open_origin(s, cfg.origin_options) for s in cfg.sources]
        catalog = open_catalog(cfg.state_dir)
        index = SearchIndex(os.path.join(cfg.state_dir, "index"))
        cas = CasStore(cfg.cache_dir, cfg.cache_size) if with_cache else None
        return cls(cfg, catalog, OriginRegistry(origins), index, cas)

    @property
    def ever_scanned(self) -> bool:
        return "completed_at" in self.catalog.scan_state()

    def scan(self, on_progress=None, should_stop=lambda: False) -> ScanResult:
        result = Scanner(self.catalog, self.registry, on_progress=on_progress, should_stop=should_stop).scan()
        log.info("scan of %s: %s", ", ".join(self.cfg.sources), result.summary())
        return result

    def build_tree(self) -> VirtualTree:
        return build_tree(self.catalog.files(), self.catalog.inode_map(),
                          lambda keys: self.catalog.add_inodes(keys, FIRST_INO))

    def reindex(self, tree: VirtualTree) -> int:
        docs = (IndexDoc(n.ino, tree.path(n.ino), n.file.artist or "", n.file.album or "", n.file.title or "",
                         n.file.genre or "") for n in tree.walk_files() if n.file and n.file.kind == "track")
        return self.index.rebuild(docs)

    def close(self) -> None:
        if self.cas is not None:
            self.cas.close()
        self.catalog.close()
        self.registry.close()
