"""The persisted tree snapshot (tree.py, Library.build_tree): start-up loads the tree the last build made
for exactly this catalog generation; any change to files or inodes, a replaced catalog, a damaged or
foreign snapshot, an unclean stop: the tree is built from the catalog again. Never a stale tree."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys

import pytest

from musicfs.library.catalog import FileRow
from musicfs.library.storage import Library
from musicfs.library.tree import SNAPSHOT_NAME, VirtualTree
from musicfs.shared.damage import RunMarker
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.large import large_config, synthetic_rows

DAMAGED = r"musicfs\.library\.tree: tree snapshot .* is damaged \(.*\): ignored; building the tree from the catalog"
UNCLEAN = r"did not stop cleanly"


def shape(tree: VirtualTree) -> dict:
    """Everything a tree serves, node by node (the snapshot's nodes are another class: compare fields)."""
    return {ino: (n.name, n.parent, n.is_dir, n.size, n.mtime_ns, n.file and dataclasses.asdict(n.file),
                  dict(n.children))
            for ino, n in tree.nodes.items()} | {"listings": tree.listings, "total": tree.total_size,
                                                  "tracks": tree.track_count}


@pytest.fixture
def cfg(tmp_path):
    cfg = large_config(tmp_path / "source", tmp_path / "lib")
    lib = Library.open(cfg)
    lib.catalog.upsert_files(synthetic_rows(300))
    lib.catalog.set_scan_state(completed_at="1", origin=cfg.sources[0])
    lib.close()
    return cfg


def fresh_tree(lib: Library) -> VirtualTree:
    """The tree built from the catalog, snapshot out of the way."""
    os.unlink(lib.snapshot_path)
    tree = lib.build_tree()
    assert not lib.tree_from_snapshot
    return tree


def test_a_restart_loads_the_same_tree_from_the_snapshot(cfg):
    lib = Library.open(cfg)
    built = lib.build_tree()
    assert not lib.tree_from_snapshot and os.path.exists(lib.snapshot_path)
    lib.close()
    lib = Library.open(cfg)
    loaded = lib.build_tree()
    assert lib.tree_from_snapshot
    assert shape(loaded) == shape(built)
    artist = loaded.lookup(1, b"Artist 00001").ino
    node = loaded.lookup(loaded.lookup(artist, b"Album 03").ino, b"05 - Track 134.mp3")
    assert node.file == FileRow(**{**dataclasses.asdict(node.file)})  # a real FileRow, made when asked for
    assert node.file.path == "Artist 00001/Album 03/05 Track.mp3" and node.file.id > 0
    lib.close()


@pytest.mark.parametrize("change", ["add", "retag", "delete", "inode"])
def test_a_catalog_change_rebuilds_the_tree_and_the_snapshot(cfg, change):
    lib = Library.open(cfg)
    lib.build_tree()
    before = lib.catalog.generation()
    if change == "add":
        lib.catalog.upsert_files([FileRow(path="New/x.mp3", kind="track", size=5, mtime_ns=1, artist="New",
                                          album="Album", title="Fresh", track_no=1)])
    elif change == "retag":
        row = lib.catalog.files()[7]
        lib.catalog.upsert_files([dataclasses.replace(row, title="Renamed")])
    elif change == "delete":
        lib.catalog.delete_paths([lib.catalog.files()[7].path])
    else:  # inode numbers alone (fsck --repair, an older version's write): the tree's numbers would differ
        lib.catalog._run("UPDATE inodes SET ino = ino + 100000 WHERE ino = (SELECT max(ino) FROM inodes)")
    assert lib.catalog.generation() != before
    lib.close()

    lib = Library.open(cfg)
    tree = lib.build_tree()
    assert not lib.tree_from_snapshot
    assert shape(tree) == shape(fresh_tree(lib))
    names = {n.name for n in tree.walk_files()}
    assert (b"01 - Fresh.mp3" in names) == (change == "add")
    assert (b"08 - Renamed.mp3" in names) == (change == "retag")
    lib.close()
    lib = Library.open(cfg)  # the rebuild saved a snapshot of the new generation
    assert shape(lib.build_tree()) == shape(tree) and lib.tree_from_snapshot
    lib.close()


def test_a_replaced_catalog_with_the_same_rows_never_gets_the_old_snapshot(cfg):
    lib = Library.open(cfg)
    lib.build_tree()
    lib.close()
    os.unlink(os.path.join(cfg.state_dir, "catalog.db"))  # as if moved aside and rebuilt by a rescan
    lib = Library.open(cfg)
    lib.catalog.upsert_files(synthetic_rows(300))
    tree = lib.build_tree()
    assert not lib.tree_from_snapshot and tree.track_count == 300
    lib.close()


def test_manifest_and_scan_state_writes_keep_the_snapshot(cfg):
    """Reads record manifests all the time: they do not change the tree and must not cost the snapshot."""
    lib = Library.open(cfg)
    lib.build_tree()
    row = lib.catalog.files()[0]
    lib.catalog.set_manifest_chunk(row.version, 0, "ab" * 32)
    lib.catalog.set_scan_state(completed_at="2")
    lib.close()
    lib = Library.open(cfg)
    lib.build_tree()
    assert lib.tree_from_snapshot
    lib.close()


@pytest.mark.parametrize("damage", ["payload", "truncated", "garbage", "empty"])
def test_a_damaged_snapshot_is_ignored_with_one_log_line_and_rebuilt(cfg, damage):
    lib = Library.open(cfg)
    good = shape(lib.build_tree())
    lib.close()
    path = os.path.join(cfg.state_dir, SNAPSHOT_NAME)
    raw = bytearray(open(path, "rb").read())
    if damage == "payload":
        raw[-1000] ^= 0x40
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(b"\x00" * 4096)
    else:
        raw = bytearray()
    open(path, "wb").write(raw)

    lib = Library.open(cfg)
    with assert_logs("^musicfs.library.tree: ", count=1, level=logging.INFO) as lines:
        tree = lib.build_tree()
    assert not lib.tree_from_snapshot and shape(tree) == good
    assert re.search(DAMAGED, lines[0]) and lines.records[0].levelno == logging.WARNING
    lib.close()
    lib = Library.open(cfg)
    assert shape(lib.build_tree()) == good and lib.tree_from_snapshot  # rewritten
    lib.close()


def test_a_snapshot_of_other_tree_rules_is_not_used(cfg, monkeypatch):
    from musicfs.library import tree as tree_mod
    lib = Library.open(cfg)
    lib.build_tree()
    lib.close()
    monkeypatch.setattr(tree_mod, "_rules", lambda: b"0" * 64)  # tree.py or text.py changed
    lib = Library.open(cfg)
    lib.build_tree()
    assert not lib.tree_from_snapshot
    lib.close()


@pytest.mark.expected_log(UNCLEAN)
def test_after_an_unclean_stop_the_tree_is_built_from_the_catalog(cfg):
    lib = Library.open(cfg)
    lib.build_tree()
    lib.close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    RunMarker(cfg.state_dir).begin()
    marker = os.path.join(cfg.state_dir, "running.json")
    text = open(marker).read().replace(str(os.getpid()), str(dead.pid))
    open(marker, "w").write(text)
    lib = Library.open(cfg)
    assert lib.unclean
    lib.build_tree()
    assert not lib.tree_from_snapshot
    lib.close()
