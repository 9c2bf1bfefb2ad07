"""Failpoints on the write paths: chunk store, manifests, search index, tree swap.

Run with `pytest --failpoints -p no:xdist`. Row 5.7 (L1 half): a crash between a chunk file landing
and its index row is simulated with `panic` at cas-put-after-write-before-index followed by reopening
the store (what a restart does); the L2 half (a real daemon SIGKILLed there) is in
tests/resilience/test_crash_points.py. Every other point: armed with panic, the previous state stays
intact and the next operation succeeds.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

import pytest

from musicfs import failpoints
from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.daemon.fuse_ops import MusicOperations
from musicfs.daemon.main import Daemon
from musicfs.daemon.notify import Notifier
from musicfs.failpoints import FailPointPanic
from musicfs.library.search import IndexDoc, SearchIndex
from musicfs.library.storage import Library
from musicfs.read import build_reader
from musicfs.shared import points
from musicfs.shared.config import Config
from musicfs.shared.errors import ChunkMissing
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.reader_rig import ReaderRig
from musicfs_test_utils.reader_rig import pattern_bytes as shared_pattern_bytes

CHUNK = 4096
KB = 1024
BEFORE_WRITE = points.CAS_PUT_BEFORE_WRITE
AFTER_WRITE = points.CAS_PUT_AFTER_WRITE_BEFORE_INDEX
QUARANTINED = r"musicfs\.cache\.cas: cache: chunk [0-9a-f]{12} failed verification; moved to"
REFETCHED = r"musicfs\.cache\.chunk_cache: cache: chunk [0-9a-f]{64} failed verification and was quarantined; fetching it again"
pattern_bytes = functools.partial(shared_pattern_bytes, step=13, salt=101, period=256)


@pytest.fixture
def env(tmp_path):
    files = {"one.flac": pattern_bytes(1, 3000), "three.flac": pattern_bytes(2, 2 * CHUNK + 500)}
    made = ReaderRig.build(tmp_path, files, chunk_size=CHUNK, memory_cache=1 << 20, read_timeout=10.0)
    yield made
    made.close()


# -- cas-put-before-write ------------------------------------------------------------------------------
async def test_panic_before_chunk_write_leaves_nothing_behind(env):
    data = env.files["one.flac"]
    digest = chunk_hash(data)
    failpoints.cfg(BEFORE_WRITE, "panic")
    with pytest.raises(FailPointPanic):
        env.cas.put(data)
    with pytest.raises(FailPointPanic):
        await env.read("one.flac")  # the read fails; it never returns bytes it could not account for
    assert env.chunk_files() == set() and env.index_rows() == set()
    assert os.listdir(env.cache_dir / "tmp") == []
    assert not env.cas.has(digest) and env.cas.usage() == (0, 0)
    assert env.manifest("one.flac") == {}

    failpoints.remove(BEFORE_WRITE)
    assert await env.read("one.flac") == data
    assert env.cas.has(digest) and env.index_rows() == {digest} and env.manifest("one.flac") == {0: digest}
    env.restart_cache()
    fetched = env.origin.calls["read"]
    assert await env.read("one.flac") == data
    assert env.origin.calls["read"] == fetched  # served from the cache now


# -- cas-put-after-write-before-index (row 5.7, L1) --------------------------------------------------
@pytest.mark.resilience("5.7")
async def test_crash_between_chunk_write_and_index_insert_adopts_the_orphan(env):
    data = env.files["one.flac"]
    digest = chunk_hash(data)
    failpoints.cfg(AFTER_WRITE, "panic")
    with pytest.raises(FailPointPanic):
        await env.read("one.flac")
    failpoints.remove(AFTER_WRITE)
    # the crash point: the chunk file is complete and in place, the index knows nothing of it
    with open(env.chunk_file(digest), "rb") as fh:
        assert fh.read() == data
    assert digest not in env.index_rows() and not env.cas.has(digest)
    assert env.manifest("one.flac") == {}
    inode = os.stat(env.chunk_file(digest)).st_ino

    with assert_logs(f"adopted chunk {digest[:12]}", count=1, level=logging.INFO):
        env.restart_cache()
    assert env.index_rows() == {digest} and env.cas.has(digest)  # verified and indexed
    assert env.cas.usage() == (len(data), 1)
    assert env.cas.get(digest) == data
    assert await env.read("one.flac") == data
    assert os.stat(env.chunk_file(digest)).st_ino == inode  # the adopted file was used, not rewritten
    assert env.manifest("one.flac") == {0: digest}


@pytest.mark.resilience("5.7")
@pytest.mark.expected_log(r"musicfs\.cache\.cas: cache: removed orphan chunk [0-9a-f]{12} whose bytes do not match its name")
async def test_half_written_orphan_chunk_is_removed_never_served(env):
    data = env.files["three.flac"]
    first = data[:CHUNK]
    digest = chunk_hash(first)
    failpoints.cfg(AFTER_WRITE, "panic")
    with pytest.raises(FailPointPanic):
        await env.read("three.flac", 0, 100)
    failpoints.remove(AFTER_WRITE)
    with open(env.chunk_file(digest), "r+b") as fh:  # as if the disk lost the second half
        fh.truncate(CHUNK // 2)

    env.restart_cache()
    assert not os.path.exists(env.chunk_file(digest))  # not adopted: removed
    assert digest not in env.index_rows() and not env.cas.has(digest)
    with pytest.raises(ChunkMissing):
        env.cas.get(digest)
    assert await env.read("three.flac") == data  # fetched again, whole
    with open(env.chunk_file(digest), "rb") as fh:
        assert fh.read() == first
    assert env.cas.has(digest)


async def test_half_written_temp_file_is_discarded_at_open(env):
    data = env.files["one.flac"]
    digest = chunk_hash(data)
    tmp = env.cache_dir / "tmp" / f"{digest}.12345"
    with open(tmp, "wb") as fh:  # a crash in the middle of writing the temp file
        fh.write(data[:1000])
    env.restart_cache()
    assert os.listdir(env.cache_dir / "tmp") == []
    assert env.chunk_files() == set() and env.index_rows() == set()
    assert await env.read("one.flac") == data


# -- cas-quarantine -------------------------------------------------------------------------------------
@pytest.mark.expected_log(QUARANTINED, REFETCHED)
async def test_panic_before_quarantine_never_serves_the_bad_chunk(env):
    data = env.files["one.flac"]
    digest = chunk_hash(data)
    assert await env.read("one.flac") == data
    with open(env.chunk_file(digest), "r+b") as fh:
        fh.write(b"\x00\xff")  # bit rot
    env.reader = env.new_reader()  # nothing in memory: the next read goes to the disk

    failpoints.cfg(points.CAS_QUARANTINE, "panic")
    with pytest.raises(FailPointPanic):
        await env.read("one.flac")
    failpoints.remove(points.CAS_QUARANTINE)
    assert env.cas.has(digest) and os.path.exists(env.chunk_file(digest))  # untouched: nothing half moved
    assert os.listdir(env.cache_dir / "quarantine") == []

    assert await env.read("one.flac") == data  # now quarantined and fetched again
    [kept] = os.listdir(env.cache_dir / "quarantine")
    assert kept.startswith(digest)
    with open(env.chunk_file(digest), "rb") as fh:
        assert fh.read() == data


# -- cas-evict ---------------------------------------------------------------------------------------------
def test_panic_before_eviction_keeps_every_chunk(tmp_path):
    cas = CasStore(str(tmp_path / "cache"), 100 * KB, high=0.9, low=0.5)
    try:
        blobs = [pattern_bytes(i, 10 * KB) for i in range(9)]
        digests = [cas.put(b) for b in blobs]
        before = cas.usage()
        failpoints.cfg(points.CAS_EVICT, "panic")
        with pytest.raises(FailPointPanic):
            cas.evict_to(0)
        with pytest.raises(FailPointPanic):
            cas.put(pattern_bytes(99, 10 * KB))  # needs room: eviction runs, and fails
        failpoints.remove(points.CAS_EVICT)
        assert cas.usage() == before
        assert all(cas.get(d) == b for d, b in zip(digests, blobs))
        assert not cas.has(chunk_hash(pattern_bytes(99, 10 * KB)))

        new = cas.put(pattern_bytes(99, 10 * KB))
        assert cas.has(new) and cas.usage()[0] <= 50 * KB
        assert cas.evict_to(0) > 0 and cas.usage() == (0, 0)
    finally:
        cas.close()


# -- manifest-write -----------------------------------------------------------------------------------
async def test_panic_before_manifest_write_keeps_the_previous_manifest(env):
    data = env.files["three.flac"]
    assert await env.read("three.flac", 0, 10) == data[:10]
    m0 = env.manifest("three.flac")
    assert list(m0) == [0]

    failpoints.cfg(points.MANIFEST_WRITE, "panic")
    with pytest.raises(FailPointPanic):
        await env.read("three.flac", CHUNK + 10, 10)
    failpoints.remove(points.MANIFEST_WRITE)
    assert env.manifest("three.flac") == m0

    assert await env.read("three.flac", CHUNK + 10, 10) == data[CHUNK + 10: CHUNK + 20]
    assert sorted(env.manifest("three.flac")) == [0, 1]
    env.restart_cache()
    fetched = env.origin.calls["read"]
    assert await env.read("three.flac") == data
    assert env.origin.calls["read"] == fetched + 1  # only chunk 2 was never cached


# -- index-commit -------------------------------------------------------------------------------------
def _docs(word: str, n: int) -> list[IndexDoc]:
    return [IndexDoc(i + 1, f"{word.title()} Artist/Album/{i:02d} - {word} song.flac", artist=f"{word} artist",
                     title=f"{word} song {i}") for i in range(n)]


def test_panic_before_index_commit_keeps_the_committed_documents(tmp_path):
    path = str(tmp_path / "index")
    index = SearchIndex(path)
    assert index.rebuild(_docs("alpha", 3)) == 3
    committed = sorted(index.search("alpha"))
    assert len(committed) == 3

    failpoints.cfg(points.INDEX_COMMIT, "panic")
    with pytest.raises(FailPointPanic):
        index.rebuild(_docs("beta", 5))
    failpoints.remove(points.INDEX_COMMIT)
    assert sorted(index.search("alpha")) == committed and index.search("beta") == []
    assert index.count() == 3
    reopened = SearchIndex(path, create=False)
    assert sorted(reopened.search("alpha")) == committed and reopened.count() == 3

    assert index.rebuild(_docs("beta", 5)) == 5  # no writer lock left behind
    assert index.search("alpha") == [] and len(index.search("beta")) == 5


# -- tree-swap ------------------------------------------------------------------------------------------
def _retag(path: Path, **values: str) -> None:
    import mutagen

    audio = mutagen.File(path, easy=True)
    for key, value in values.items():
        audio[key] = value
    audio.save()


@pytest.fixture
def daemon_parts(tmp_path, monkeypatch):
    """A Daemon with its library and a tree, not mounted (kernel invalidations are recorded, not sent)."""
    import musicfs.daemon.main as daemon_module

    root = tmp_path / "library"
    make_library(root, 6, hostile=False)
    cfg = Config(sources=(str(root),), mountpoint=str(tmp_path / "mnt"), state_dir=str(tmp_path / "state"),
                 cache_dir=str(tmp_path / "cache"), rescan_interval=3600.0)
    sent: list = []
    monkeypatch.setattr(daemon_module.pyfuse3, "invalidate_entry_async", lambda *a, **k: sent.append(a))
    monkeypatch.setattr(daemon_module.pyfuse3, "invalidate_inode", lambda *a, **k: sent.append(a))
    daemon = Daemon(cfg, Notifier(""))
    lib = daemon.lib = Library.open(cfg)
    lib.scan()
    tree = lib.build_tree()
    lib.reindex(tree)
    daemon.ops = MusicOperations(tree, build_reader(lib.catalog, ChunkCache(lib.cas), lib.registry, chunk_size=CHUNK,
                                                  memory_cache=1 << 20, read_timeout=10.0))
    yield root, daemon
    lib.close()


def _add_track(root: Path) -> str:
    source = next(p for p in sorted(root.rglob("*.flac")))
    new = root / "Fresh Artist" / "Fresh Album" / "01 Fresh.flac"
    new.parent.mkdir(parents=True)
    shutil.copyfile(source, new)
    _retag(new, artist="Fresh Artist", albumartist="Fresh Artist", album="Fresh Album", title="Fresh Song",
           tracknumber="1")
    return "Fresh Artist/Fresh Album/01 - Fresh Song.flac"


def _tree_paths(daemon: Daemon) -> set[str]:
    tree = daemon.ops.tree
    return {tree.path(n.ino) for n in tree.walk_files()}


async def test_panic_before_tree_swap_keeps_serving_the_old_tree(daemon_parts):
    root, daemon = daemon_parts
    old_tree = daemon.ops.tree
    old_paths = _tree_paths(daemon)
    new_path = _add_track(root)
    failpoints.cfg(points.TREE_SWAP, "panic")
    with pytest.raises(FailPointPanic):
        await daemon.rescan()
    failpoints.remove(points.TREE_SWAP)
    assert daemon.ops.tree is old_tree and _tree_paths(daemon) == old_paths  # no half tree visible
    assert new_path not in old_paths
    for node in old_tree.walk_files():  # and the old tree still serves lookups and reads
        parent = old_tree.get(node.parent)
        assert daemon.ops.tree.lookup(parent.ino, node.name) is node
    assert daemon.lib.index.count() == old_tree.track_count


async def test_next_rescan_after_a_failed_tree_swap_serves_the_new_tree(daemon_parts):
    root, daemon = daemon_parts
    new_path = _add_track(root)
    failpoints.cfg(points.TREE_SWAP, "panic")
    with pytest.raises(FailPointPanic):
        await daemon.rescan()
    failpoints.remove(points.TREE_SWAP)
    await daemon.rescan()
    assert new_path in _tree_paths(daemon)
    assert daemon.lib.index.search("Fresh Song") == [new_path]
