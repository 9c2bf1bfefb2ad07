"""Library: the storage pieces of one library (origins, catalog, cache, index) opened together.

Opening checks them (row 2.4). `<state>/running.json` is written at open and removed by a clean close;
found at open with a dead owner, the last run stopped uncleanly and the checks are full ones:

- catalog: quick_check (integrity_check after an unclean stop); damaged -> moved aside, a new one is
  filled by rescanning the origins (the daemon scans before mounting when the catalog was never scanned);
- search index: every segment file checked against its checksum; damaged or without meta.json -> moved
  aside, a new one is rebuilt from the catalog (the daemon reindexes when the counts differ);
- cache index: quick_check (integrity_check after an unclean stop); damaged or lost -> moved aside and
  rebuilt from the chunk files, each verified (see cas.py).
Each of these says in the log exactly what it found and where the damaged file went.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from ..cache import CasStore
from ..origins import OriginRegistry, open_origins
from ..shared import Config, MusicFSError, OriginError, RunMarker, SearchIndexCorrupt
from . import blocks, published
from .catalog import Catalog, FileRow
from .catalog_files import make_state_dir, open_checked
from .scanner import TAGS_VERSION, Scanner, ScanResult, restore_identities
from .search import IndexDoc, SearchIndex
from .tree import (
    FIRST_INO,
    SNAPSHOT_NAME,
    VirtualTree,
    build_tree,
    load_snapshot,
    save_snapshot,
)

log = logging.getLogger(__name__)


@dataclass
class Library:
    cfg: Config
    catalog: Catalog
    registry: OriginRegistry
    index: SearchIndex
    cas: CasStore | None = None
    marker: RunMarker | None = None
    repairs: list[str] = field(default_factory=list)  # what opening had to repair, for status and tests
    unclean: bool = False  # the previous run did not stop cleanly: full checks, no tree snapshot
    published_from: published.PublishedStatistics | None = None  # the published catalog the catalog came from, if one did
    tree_from_snapshot: bool = False  # how the last build_tree got its tree (for tests)
    trees_built: int = 0

    @classmethod
    def open(cls, cfg: Config, with_cache: bool = True) -> "Library":
        make_state_dir(cfg.state_dir)
        marker = RunMarker(cfg.state_dir)
        previous = marker.begin()
        unclean = previous is not None
        if unclean:
            log.warning("the previous run (pid %s) did not stop cleanly: running full integrity checks of the "
                        "catalog and the cache index", previous.get("pid"))
        repairs = []
        origins = open_origins(cfg.sources, cfg.origin_options)
        catalog, damage = open_checked(cfg.state_dir, full=unclean)
        if damage:
            repairs.append(f"catalog: {damage}")
        if catalog.set_chunk_size(cfg.chunk_size):
            log.info("chunk size is now %d bytes: cached manifests dropped; chunks are fetched again", cfg.chunk_size)
        index = SearchIndex.open_with_recovery(os.path.join(cfg.state_dir, "index"))
        if index.recovered:
            repairs.append(f"search index: {index.recovered}")
        cas = None
        if with_cache:
            # a clean start leaves comparing the index with the chunk files to the cache task (after READY);
            # after an unclean stop it is done here, sizes included
            cas = CasStore(cfg.cache_dir, cfg.cache_size, full_check=unclean, reconcile_later=not unclean)
            if cas.last_rebuild is not None:
                repairs.append(f"cache index: {cas.last_rebuild.summary()}")
        registry = OriginRegistry(origins, grace=cfg.failover_grace)
        restore_identities(catalog, registry)
        return cls(cfg, catalog, registry, index, cas, marker, repairs, unclean=unclean,
                   published_from=published.statistics(catalog))

    @property
    def ever_scanned(self) -> bool:
        return "completed_at" in self.catalog.scan_state()

    def scan(self, on_progress=None, should_stop=lambda: False, settle: bool = False) -> ScanResult:
        # What the scan read for tags is kept as blocks, for small reads; with chunks no bigger than a block,
        # small reads fetch whole chunks and blocks would never be read.
        keep = self.keep_scan_blocks if self.cas is not None and blocks.BLOCK_SIZE < self.cfg.chunk_size else None
        result = Scanner(self.catalog, self.registry, on_progress=on_progress, should_stop=should_stop,
                         include_hidden=self.cfg.include_hidden, on_fetched=keep, settle=settle).scan()
        log.info("scan of %s: %s", ", ".join(self.cfg.sources), result.summary())
        if self.published_from is not None and not self.published_from.revalidated:
            published.revalidated(self.catalog, result.added + result.changed)
            self.published_from = published.statistics(self.catalog)
        return result

    def adopt_published(self) -> published.PublishedStatistics | None:
        """A first mount: the catalog published at the first origin that has one (replicas in their order), checked
        (bytes against their hash, format, library, that it describes this origin's files), fills the catalog; the
        next rescan revalidates it. None when no origin has one that can be used (one warning for each that has
        one but cannot be used): the mount scans."""
        for origin in self.registry.origins:
            try:
                found = published.fetch(origin)
                if found is None:
                    log.info("no catalog published at %s", origin.name)
                    continue
                pointer, snapshot = found
                published.check_describes(origin, snapshot)
            except (published.UnusableSnapshot, OriginError) as exc:
                log.warning("not using the catalog published at %s: %s", origin.name, exc)
                continue
            published.adopt(self.catalog, origin, pointer, snapshot, TAGS_VERSION)
            self.registry.adopt_identities(origin)
            log.info("catalog of %d files from the snapshot published at %s (%s, %s); revalidating it in the "
                     "background", len(snapshot.rows), origin.name, pointer.sha256[:12],
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pointer.published_at)))
            self.published_from = published.statistics(self.catalog)
            return self.published_from
        return None

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.cfg.state_dir, SNAPSHOT_NAME)

    def keep_scan_blocks(self, pairs: list[tuple[FileRow, list[tuple[int, bytes]]]]) -> None:
        """Keep what a scan read for tags (of versions no longer racy: the scanner decides) as blocks (blocks.py):
        into the CAS by hash, recorded in the catalog for the version of the file that was read (ignored if it
        changed since). Runs in the scan's thread; a cache that cannot take them (unavailable, full, failing) is
        skipped: later reads fetch them again."""
        if self.cas is None or not self.cas.available:
            return
        for row, fetched in pairs:
            try:
                kept = [(off, len(data), self.cas.put(data)) for off, data in blocks.cut(fetched)]
                self.catalog.add_blocks_by_path(row.path, row.ident, kept)
            except (MusicFSError, OSError) as exc:
                log.info("scan: not keeping the blocks read for %s's tags: %s", row.path, exc)
                return

    def build_tree(self) -> VirtualTree:
        """The tree of the catalog as it is now: loaded from the snapshot saved for exactly this catalog
        generation (tree.py), else built from the catalog and saved as the new snapshot. After an unclean
        stop the tree is always built from the catalog."""
        generation = self.catalog.generation()
        if not self.unclean and generation:
            tree = load_snapshot(self.snapshot_path, generation, freeze=not self.trees_built)
            self.trees_built += 1
            if tree is not None:
                self.tree_from_snapshot = True
                return tree
        self.tree_from_snapshot = False
        self.trees_built += 1
        generation, files, inodes = self.catalog.tree_inputs()
        seen: list[str] = []  # the generation before and after assigning new inode numbers
        tree = build_tree(files, inodes, lambda keys: self.catalog.add_inodes(keys, FIRST_INO, seen))
        if seen:  # our own write changed the generation; anyone else's in between means: do not save
            generation = seen[1] if seen[0] == generation else ""
        if generation:
            save_snapshot(self.snapshot_path, tree, generation)
        return tree

    def reindex(self, tree: VirtualTree) -> int:
        """Rebuild the search index from the tree. A damaged index (a tantivy panic, a bad file) is moved
        aside and rebuilt once more from scratch."""
        try:
            return self.index.rebuild(index_docs(tree))
        except SearchIndexCorrupt as exc:
            self.index = SearchIndex.recreate(self.index.path, str(exc))
            return self.index.rebuild(index_docs(tree))

    def close(self) -> None:
        if self.cas is not None:
            self.cas.close()
        self.catalog.close()
        self.registry.close()
        if self.marker is not None:
            self.marker.end()  # a clean stop: the next start runs the quick checks only


def index_docs(tree: VirtualTree):
    return (IndexDoc(n.ino, tree.path(n.ino), n.file.artist or "", n.file.album or "", n.file.title or "",
                     n.file.genre or "", n.file.duration)
            for n in tree.walk_files() if n.file and n.file.kind == "track")

