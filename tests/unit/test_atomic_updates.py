"""A writer that raises halfway leaves the previous catalog and tree serving (row 2.9)."""

from __future__ import annotations

import os

import pytest

from musicfs.daemon.fuse_ops import MusicOperations
from musicfs.daemon.main import Daemon
from musicfs.daemon.notify import Notifier
from musicfs.library.catalog import FileRow
from musicfs.library.storage import Library
from musicfs.shared.config import Config
from musicfs.shared.errors import CatalogError


@pytest.fixture
def lib(small_library, tmp_path):
    cfg = Config(sources=(str(small_library[0]),), state_dir=str(tmp_path / "state"),
                 cache_dir=str(tmp_path / "cache")).resolved()
    library = Library.open(cfg)
    library.scan()
    yield library
    library.close()


@pytest.mark.resilience("2.9")
def test_a_catalog_batch_that_fails_halfway_leaves_nothing_behind(lib):
    before = lib.catalog.files()
    good = FileRow(path="new/one.flac", kind="track", size=10, mtime_ns=1, title="One")
    bad = FileRow(path="new/two.flac", kind="track", size=None, mtime_ns=1)  # NOT NULL violated mid-batch
    with pytest.raises(CatalogError):
        lib.catalog.upsert_files([good, bad])
    assert lib.catalog.files() == before
    lib.catalog.upsert_files([good])  # no lock left held: the next writer gets through
    assert len(lib.catalog.files()) == len(before) + 1


@pytest.mark.resilience("2.9")
async def test_a_tree_build_that_fails_keeps_the_previous_tree_serving(lib, small_library, monkeypatch, tmp_path):
    ops = MusicOperations(lib.build_tree(), reader=None)
    daemon = Daemon(lib.cfg, Notifier(""))
    daemon.lib, daemon.ops = lib, ops
    old = ops.tree
    victim = next(p for p in small_library[2] if p.suffix == ".mp3")
    hidden = tmp_path / "hidden"
    os.rename(victim, hidden)
    try:
        def half_built():
            lib.catalog.files()
            raise RuntimeError("tree build failed halfway")

        monkeypatch.setattr(lib, "build_tree", half_built)
        monkeypatch.setattr(lib, "scan", lambda *a, **k: type("R", (), {"touched": True})())
        lib.catalog.delete_paths([str(victim.relative_to(small_library[0]))])
        with pytest.raises(RuntimeError):
            await daemon.rescan()
        assert ops.tree is old and ops.tree.track_count == len(small_library[1])
    finally:
        os.rename(hidden, victim)
