"""A library's catalog brought up to date from its origin and published there (`musicfs publish`; published.py)."""

from __future__ import annotations

import logging
import os
import tempfile
import time

from dataclasses import replace

from ..origins import Origin, OriginRegistry
from ..shared import CatalogError, Config, EmptyLibrary, OriginError, human_size
from . import published
from .catalog import Catalog
from .catalog_files import CATALOG_NAME
from .scanner import TAGS_VERSION, Scanner

log = logging.getLogger(__name__)


def publish_library(cfg: Config, origin: Origin, *, keep: float | None = None) -> str:
    """Scan `origin` as a mount does, starting from what is already known (this machine's catalog of that library,
    else the catalog published there: only new and changed files are read), and publish the result. Returns the
    line to print. `keep`: seconds a replaced snapshot stays (None: published.KEEP_RETIRED)."""
    with tempfile.TemporaryDirectory(prefix="musicfs-publish-") as tmp:
        catalog = Catalog(os.path.join(tmp, CATALOG_NAME))
        try:
            registry = OriginRegistry([origin])
            start = _seed(catalog, cfg, origin)
            registry.adopt_identities(origin)
            result = Scanner(catalog, registry, include_hidden=cfg.include_hidden).scan()
            rows = catalog.files()
        finally:
            catalog.close()
    tracks = sum(1 for row in rows if row.kind == "track")
    if not tracks:
        raise EmptyLibrary(f"{origin.name}: no audio files found: nothing to publish")
    done = published.publish(origin, rows, tags_version=TAGS_VERSION,
                             keep=published.KEEP_RETIRED if keep is None else keep)
    removed = f"; {len(done.removed)} old snapshot(s) removed" if done.removed else ""
    return (f"published {tracks} tracks ({len(rows)} files; {result.added + result.changed} read, "
            f"{result.unchanged} known from {start}) as {done.pointer.snapshot} "
            f"({human_size(done.pointer.size)}){removed}")


def _seed(catalog: Catalog, cfg: Config, origin: Origin) -> str:
    """Fill the fresh `catalog` with what is already known of `origin`'s files; says from where."""
    local = os.path.join(cfg.state_dir, CATALOG_NAME)
    if os.path.exists(local):
        try:
            mine = Catalog(local, readonly=True)
        except CatalogError as exc:
            log.info("publish: not starting from %s: %s", local, exc)
        else:
            try:
                state = mine.scan_state()
                if state.get("completed_at") and state.get("origin") == origin.name:
                    catalog.upsert_files([replace(row, id=0) for row in mine.files()], checkpoint={
                        "origin": origin.name, "tags_version": state.get("tags_version", ""),
                        "completed_at": state["completed_at"]})
                    return "this machine's catalog"
            finally:
                mine.close()
    try:
        found = published.fetch(origin)
    except (published.UnusableSnapshot, OriginError) as exc:
        log.warning("publish: the catalog published before cannot be used (%s): reading every file", exc)
        return "nothing"
    if found is None:
        return "nothing"
    pointer, snapshot = found
    published.adopt(catalog, origin, pointer, snapshot, TAGS_VERSION)
    return f"the snapshot published {time.strftime('%Y-%m-%d %H:%M', time.localtime(pointer.published_at))}"
