"""Startup integrity (row 2.4), the CAS index rebuilt from chunk files (3.5), search index crashes (5.2).

Real files damaged on disk, then opened the way a restart opens them. Damaged files must be moved aside
(found again byte for byte), never deleted, and the log must say what happened.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.library.catalog import Catalog, FileRow
from musicfs.library.catalog_files import open_checked
from musicfs.library.search import IndexDoc, SearchIndex, check_files
from musicfs.library.storage import Library
from musicfs.shared import points
from musicfs.shared.config import Config
from musicfs.shared.damage import RunMarker
from musicfs.shared.errors import SearchIndexCorrupt

KB = 1024
MOVED_CATALOG = r"musicfs\.library\.catalog: catalog .*catalog\.db is damaged \(.*\): moved to .*catalog\.db\.damaged-\d{8}T\d{6}"
MOVED_INDEX = r"musicfs\.library\.search: search index .*index is damaged \(.*\): moved to .*index\.damaged-\d{8}T\d{6}"
MOVED_CAS = r"musicfs\.cache\.cas: cache: index .*index\.db is damaged \(.*\): moved to .*index\.db\.damaged-\d{8}T\d{6}"
CAS_REBUILT = r"musicfs\.cache\.cas: cache: index .*index\.db rebuilt: \d+ chunk files \(\d+ bytes\) verified and indexed"
UNCLEAN = r"musicfs\.library\.storage: the previous run \(pid \d+\) did not stop cleanly: running full integrity checks"


def aside(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f"{name}.damaged-"))


def blob(i: int, size: int = 10 * KB) -> bytes:
    return bytes([i % 251]) * (size - 8) + i.to_bytes(8, "big")


@pytest.fixture
def cfg(small_library, tmp_path) -> Config:
    return Config(sources=(str(small_library[0]),), mountpoint=str(tmp_path / "mnt"), state_dir=str(tmp_path / "state"),
                  cache_dir=str(tmp_path / "cache"), chunk_size=64 * KB)


def scanned(cfg: Config) -> tuple[set[str], int]:
    """Open, scan, index, close (cleanly); returns the tree's file paths and the track count."""
    lib = Library.open(cfg)
    try:
        lib.scan()
        tree = lib.build_tree()
        lib.reindex(tree)
        return {tree.path(n.ino) for n in tree.walk_files()}, tree.track_count
    finally:
        lib.close()


def tree_paths(lib: Library) -> set[str]:
    tree = lib.build_tree()
    return {tree.path(n.ino) for n in tree.walk_files()}


# -- the catalog ------------------------------------------------------------------------------------------------
@pytest.mark.resilience("2.4")
@pytest.mark.expected_log(MOVED_CATALOG)
@pytest.mark.parametrize("damage", ["header", "pages"])
def test_a_damaged_catalog_is_moved_aside_and_rebuilt_by_rescanning(cfg, damage):
    paths, tracks = scanned(cfg)
    db = Path(cfg.state_dir) / "catalog.db"
    raw = bytearray(db.read_bytes())
    assert len(raw) >= 3 * 4096, "the test needs a catalog of several pages"
    if damage == "header":  # SQLITE_NOTADB at the first statement
        raw[:100] = b"\xff" * 100
    else:  # b-tree pages scribbled over, the header intact: only the check notices
        raw[4096:len(raw) - 4096] = b"\xa5\x5a" * ((len(raw) - 8192) // 2)
    db.write_bytes(bytes(raw))

    lib = Library.open(cfg)
    try:
        [moved] = aside(db.parent, "catalog.db")
        assert moved.read_bytes() == bytes(raw)  # kept byte for byte, never deleted
        assert lib.repairs and lib.repairs[0].startswith("catalog: ")
        assert lib.catalog.count() == 0 and not lib.ever_scanned  # the daemon scans before mounting then
        lib.scan()  # ... which rebuilds it from the origins
        assert lib.catalog.count() == tracks and tree_paths(lib) == paths
    finally:
        lib.close()


def _index_only_damage(db: Path) -> None:
    """Make one entry of the manifests_hash index disagree with its table row: quick_check passes,
    integrity_check does not (row N missing from index)."""
    con = sqlite3.connect(db)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'manifests_hash'").fetchone()[0]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    digest = con.execute("SELECT hash FROM manifests LIMIT 1").fetchone()[0]
    con.close()
    raw = bytearray(db.read_bytes())
    page = raw[(root - 1) * size: root * size]
    at = page.find(digest.encode())
    assert at >= 0
    pos = (root - 1) * size + at + 63
    raw[pos] = ord("f") if raw[pos] != ord("f") else ord("e")
    db.write_bytes(bytes(raw))


@pytest.mark.resilience("2.4")
@pytest.mark.expected_log(UNCLEAN, MOVED_CATALOG)
def test_after_an_unclean_stop_the_full_integrity_check_runs(tmp_path):
    state = tmp_path / "state"
    cat, _ = open_checked(str(state))
    cat.upsert_files([FileRow(path=f"t{i}.flac", kind="track", size=100 + i, mtime_ns=1) for i in range(5)])
    for row in cat.files():
        cat.set_manifest_chunk(row.version, 0, chunk_hash(row.path.encode()))
    cat.close()
    db = state / "catalog.db"
    _index_only_damage(db)

    cat, damage = open_checked(str(state))  # a clean start: quick_check only, which cannot see it
    assert damage == "" and aside(state, "catalog.db") == []
    cat.close()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / RunMarker.NAME).write_text(json.dumps({"pid": dead.pid, "started_at": 0}))
    cfg = Config(sources=(str(tmp_path / "src"),), state_dir=str(state), cache_dir=str(tmp_path / "cache"))
    lib = Library.open(cfg, with_cache=False)  # the marker says the last run died: integrity_check
    try:
        assert len(aside(state, "catalog.db")) == 1
        assert "missing from index manifests_hash" in lib.repairs[0]
        assert lib.catalog.count() == 0
    finally:
        lib.close()


def test_the_marker_is_removed_by_a_clean_close_only(cfg):
    marker = Path(cfg.state_dir) / RunMarker.NAME
    lib = Library.open(cfg)
    assert json.loads(marker.read_text())["pid"] == os.getpid()
    assert lib.cas.full_check is False
    lib.close()
    assert not marker.exists()
    again = Library.open(cfg)  # nothing unclean about a clean stop: no warning (the log guard checks)
    again.close()


def test_a_catalog_that_cannot_be_opened_for_another_reason_is_refused_not_moved(tmp_path):
    from musicfs.shared.errors import CatalogError

    state = tmp_path / "state"
    (state / "catalog.db").mkdir(parents=True)  # not damage: something SQLite cannot open at all
    with pytest.raises(CatalogError, match="cannot open the catalog"):
        open_checked(str(state))
    assert aside(state, "catalog.db") == []


def test_a_new_chunk_size_drops_the_manifests(tmp_path):
    cat = Catalog(str(tmp_path / "catalog.db"))
    cat.upsert_files([FileRow(path="a.flac", kind="track", size=10, mtime_ns=1)])
    row = cat.files()[0]
    assert cat.set_chunk_size(1 << 20) is False
    cat.set_manifest_chunk(row.version, 0, "0" * 64)
    assert cat.set_chunk_size(1 << 20) is False and cat.manifest(row.version) == {0: "0" * 64}
    assert cat.set_chunk_size(1 << 16) is True  # chunk 0 means other bytes now
    assert cat.manifest(row.version) == {} and cat.meta("chunk_size") == str(1 << 16)
    cat.close()


# -- the search index ------------------------------------------------------------------------------------------
@pytest.mark.resilience("2.4")
@pytest.mark.expected_log(MOVED_INDEX)
@pytest.mark.parametrize("damage", ["meta.json missing", "meta.json garbage", "segment bit rot", "segment missing"])
def test_a_damaged_search_index_is_moved_aside_and_rebuilt_from_the_catalog(cfg, damage):
    paths, tracks = scanned(cfg)
    folder = Path(cfg.state_dir) / "index"
    segments = sorted(folder.glob("*.idx"))
    assert segments and tracks
    if damage == "meta.json missing":
        (folder / "meta.json").unlink()
    elif damage == "meta.json garbage":
        (folder / "meta.json").write_text("corrupted")
    elif damage == "segment bit rot":
        raw = bytearray(segments[0].read_bytes())
        raw[len(raw) // 3] ^= 0x01
        segments[0].write_bytes(bytes(raw))
    else:
        segments[0].with_suffix(".store").unlink()
    before = sorted(p.name for p in folder.iterdir())
    assert check_files(str(folder)), "the damage must be visible to the file check"

    lib = Library.open(cfg)
    try:
        [moved] = aside(Path(cfg.state_dir), "index")
        assert sorted(p.name for p in moved.iterdir()) == before  # the whole folder, kept as it was
        assert lib.index.recovered and lib.repairs == [f"search index: {lib.index.recovered}"]
        assert lib.index.count() == 0  # a new index: never silently passed off as the library's
        tree = lib.build_tree()
        assert lib.index.count() != tree.track_count  # what makes the daemon reindex at start
        lib.reindex(tree)
        assert lib.index.count() == tracks
        assert set(lib.index.paths()) <= paths and len(lib.index.search("Symphony")) > 0
    finally:
        lib.close()


def test_tantivy_never_silently_makes_an_empty_index_over_a_folder_without_meta_json(tmp_path):
    index = SearchIndex(str(tmp_path / "index"))
    index.rebuild([IndexDoc(1, "A/B/01 - x.flac", artist="alpha")])
    (tmp_path / "index" / "meta.json").unlink()
    with pytest.raises(SearchIndexCorrupt, match="meta.json is missing"):
        SearchIndex(str(tmp_path / "index"))  # create=True must not paper over it


def _fix_footer(path: Path) -> None:
    """Recompute a segment file's footer CRC after its body was changed (so only tantivy itself can tell)."""
    raw = path.read_bytes()
    flen, magic = struct.unpack("<II", raw[-8:])
    footer = json.loads(raw[-8 - flen:-8])
    body = raw[:-8 - flen]
    footer["crc"] = zlib.crc32(body)
    text = json.dumps(footer, separators=(",", ":")).encode()
    path.write_bytes(body + text + struct.pack("<II", len(text), magic))


@pytest.mark.resilience("5.2")
def test_a_tantivy_panic_is_caught_and_treated_as_corruption(tmp_path):
    """Damage tantivy only notices when it reads postings (its own checksum check is fooled): the
    PanicException (a BaseException) must come out as SearchIndexCorrupt, never escape."""
    docs = [IndexDoc(i + 1, f"A/B/{i:02d} - song{i}.flac", artist="alpha", title=f"song {i}") for i in range(50)]
    panics = 0
    for frac in (0.1, 0.3, 0.5):
        folder = tmp_path / f"index-{frac}"
        SearchIndex(str(folder)).rebuild(docs)
        [idx] = folder.glob("*.idx")
        raw = bytearray(idx.read_bytes())
        flen = struct.unpack("<I", raw[-8:-4])[0]
        start = int((len(raw) - 8 - flen) * frac)
        for i in range(start, min(start + 64, len(raw) - 8 - flen)):
            raw[i] ^= 0xFF
        idx.write_bytes(bytes(raw))
        _fix_footer(idx)
        assert check_files(str(folder)) == []
        index = SearchIndex(str(folder))
        try:
            index.search("alpha")
        except SearchIndexCorrupt as exc:
            panics += type(exc.__cause__).__name__ == "PanicException"
            assert "damaged" in str(exc)
    assert panics >= 1, "no corruption made tantivy panic: the test lost its teeth"


@pytest.mark.resilience("5.2")
@pytest.mark.expected_log(MOVED_INDEX)
def test_a_panicking_index_is_moved_aside_and_rebuilt_by_reindex(cfg):
    scanned(cfg)
    lib = Library.open(cfg)
    try:
        tree = lib.build_tree()

        class PanicException(BaseException):  # what pyo3_runtime.PanicException looks like from Python
            pass

        def panicking_writer(*args, **kwargs):
            raise PanicException("index out of bounds: the len is 100 but the index is 100")

        old = lib.index
        old._index = _Proxy(old._index, writer=panicking_writer)
        assert lib.reindex(tree) == tree.track_count
        assert lib.index is not old and lib.index.count() == tree.track_count
        assert len(aside(Path(cfg.state_dir), "index")) == 1
    finally:
        lib.close()


class _Proxy:
    def __init__(self, inner, **overrides):
        self._inner, self._overrides = inner, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._inner, name)


_CRASH_CHILD = textwrap.dedent("""
    import sys
    from musicfs import failpoints
    from musicfs.library.search import IndexDoc, SearchIndex
    failpoints.setup_from_env()
    index = SearchIndex(sys.argv[1])
    def docs(word, n):
        return [IndexDoc(i + 1, f"{word}/Album/{i:02d} - {word} song.flac", artist=word) for i in range(n)]
    index.rebuild(docs("alpha", 3))   # committed
    print("committed", flush=True)
    index.rebuild(docs("beta", 5))    # killed -9 before its commit
    print("not reached", flush=True)
""")


@pytest.mark.resilience("5.2")
def test_kill_9_before_a_commit_keeps_committed_documents_and_leaves_no_blocking_lock(tmp_path):
    folder = tmp_path / "index"
    env = {**os.environ, "FAILPOINTS": f"{points.INDEX_COMMIT}=1*off->crash", "RUST_BACKTRACE": "0"}
    child = subprocess.run([sys.executable, "-c", _CRASH_CHILD, str(folder)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split() == ["committed"]
    assert (folder / ".tantivy-writer.lock").exists()  # left behind by the dead writer

    assert check_files(str(folder)) == []
    index = SearchIndex.open_with_recovery(str(folder))
    assert index.recovered is None and index.count() == 3
    assert len(index.search("alpha")) == 3 and index.search("beta") == []  # uncommitted: lost, as documented
    assert index.rebuild([IndexDoc(9, "Gamma/Album/01 - gamma.flac", artist="gamma")]) == 1  # lock not in the way
    assert index.search("gamma") == ["Gamma/Album/01 - gamma.flac"] and index.search("alpha") == []


# -- the cache index --------------------------------------------------------------------------------------------
def _store_with_chunks(root: Path, n: int = 6) -> list[str]:
    cas = CasStore(str(root), 1 << 30)
    digests = [cas.put(blob(i)) for i in range(n)]
    cas.close()
    return digests


@pytest.mark.resilience("2.4", "3.5")
@pytest.mark.expected_log(MOVED_CAS, CAS_REBUILT, r"musicfs\.cache\.cas: cache: chunk [0-9a-f]{12} failed verification; "
                                                  r"moved to .*quarantine")
@pytest.mark.parametrize("damage", ["not a database", "pages scribbled"])
def test_a_damaged_cache_index_is_moved_aside_and_rebuilt_from_verified_chunk_files(tmp_path, damage):
    root = tmp_path / "cache"
    digests = _store_with_chunks(root)
    bad = digests[2]
    chunk = root / "chunks" / bad[:2] / bad
    chunk.write_bytes(b"bit rot" + chunk.read_bytes()[7:])  # one chunk file lies about its name
    db = root / "index.db"
    raw = bytearray(db.read_bytes())
    if damage == "not a database":
        raw[:100] = b"\x00" * 100
    else:
        raw[4096:] = b"\xa5" * (len(raw) - 4096)
    db.write_bytes(bytes(raw))

    cas = CasStore(str(root), 1 << 30)
    try:
        assert cas.available
        [moved] = aside(root, "index.db")
        assert moved.read_bytes() == bytes(raw)
        good = [d for d in digests if d != bad]
        assert all(cas.has(d) and cas.get(d) == blob(digests.index(d)) for d in good)
        assert not cas.has(bad) and not chunk.exists()
        [kept] = os.listdir(root / "quarantine")
        assert kept.startswith(bad)  # the lying chunk is kept for inspection, not served, not deleted
        assert cas.usage() == (len(good) * 10 * KB, len(good))
        assert cas.last_rebuild.chunks == len(good) and cas.last_rebuild.quarantined == [bad]
    finally:
        cas.close()
    again = CasStore(str(root), 1 << 30)  # the rebuilt index is a sound one
    assert again.usage() == (len(good) * 10 * KB, len(good)) and again.last_rebuild is None
    again.close()


@pytest.mark.resilience("3.5")
@pytest.mark.expected_log(r"musicfs\.cache\.cas: cache: index .*index\.db is missing; rebuilding it from the chunk files",
                          CAS_REBUILT)
def test_a_lost_cache_index_is_rebuilt_from_the_chunk_files(tmp_path):
    root = tmp_path / "cache"
    digests = _store_with_chunks(root, 8)
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        if (root / name).exists():
            (root / name).unlink()
    cas = CasStore(str(root), 1 << 30)
    try:
        assert cas.usage() == (8 * 10 * KB, 8)
        assert all(cas.get(d) == blob(i) for i, d in enumerate(digests))
        con = sqlite3.connect(f"file:{root / 'index.db'}?mode=ro", uri=True)
        assert {r[0]: r[1] for r in con.execute("SELECT hash, size FROM chunks")} == {d: 10 * KB for d in digests}
        con.close()
    finally:
        cas.close()


@pytest.mark.resilience("2.4")
@pytest.mark.expected_log(UNCLEAN)
def test_an_unclean_stop_makes_the_cache_check_sizes_too(cfg):
    lib = Library.open(cfg)
    digest = lib.cas.put(blob(1))
    lib.cas.close()
    lib.catalog.close()  # no lib.close(): the marker stays, as after kill -9
    con = sqlite3.connect(Path(cfg.cache_dir) / "index.db")
    with con:
        con.execute("UPDATE chunks SET size = 3 WHERE hash = ?", (digest,))  # the index lies about a size
    con.close()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    marker = Path(cfg.state_dir) / RunMarker.NAME
    marker.write_text(json.dumps({"pid": dead.pid}))
    lib = Library.open(cfg)
    try:
        assert lib.cas.full_check and lib.cas.usage() == (10 * KB, 1)
    finally:
        lib.close()
