"""Row 6.2: `musicfs fsck [--repair]` over real library state damaged on disk.

A library is scanned, indexed and partly read into the cache once (module template), copied per test,
damaged, and checked: every damage is reported with a non-zero exit; --repair fixes it (damaged files
moved aside, never deleted) and says what it did; a second run is clean.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from musicfs.cache.cas import chunk_hash
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.commands import cli
from musicfs.commands.fsck import (
    EXIT_CLEAN,
    EXIT_ERROR,
    EXIT_LEFT,
    EXIT_REPAIRED,
    run_fsck,
)
from musicfs.library.search import SearchIndex
from musicfs.library.storage import Library
from musicfs.read import build_reader
from musicfs.shared.config import Config
from musicfs.shared.damage import RunMarker, pid_is_musicfs
from musicfs_test_utils.eventually import eventually

CHUNK = 64 * 1024
# what the storage modules log while --repair moves damaged files aside and rebuilds
QUARANTINED = r"musicfs\.cache\.cas: cache: chunk [0-9a-f]{12} failed verification; moved to .*quarantine"
CAS_INDEX_MOVED = r"musicfs\.cache\.cas: cache: index .*index\.db is damaged \(.*\): moved to .*index\.db\.damaged-"
CAS_INDEX_REBUILT = r"musicfs\.cache\.cas: cache: index .*index\.db rebuilt: \d+ chunk files"
CATALOG_MOVED = r"musicfs\.library\.catalog: catalog .*catalog\.db is damaged \(.*\): moved to .*catalog\.db\.damaged-"
INDEX_MOVED = r"musicfs\.library\.search: search index .*index is damaged \(.*\): moved to .*index\.damaged-"


@pytest.fixture(scope="module")
def template(small_library, tmp_path_factory):
    base = tmp_path_factory.mktemp("fsck-template")
    cfg = Config(sources=(str(small_library[0]),), state_dir=str(base / "state"), cache_dir=str(base / "cache"),
                 chunk_size=CHUNK)
    lib = Library.open(cfg)
    try:
        lib.scan()
        lib.reindex(lib.build_tree())
        rows = sorted(lib.catalog.files("track"), key=lambda r: -r.size)[:3]  # the biggest: several chunks each

        async def read_some():
            reader = build_reader(lib.catalog, ChunkCache(lib.cas), lib.registry, chunk_size=CHUNK, memory_cache=0, read_timeout=30)
            for row in rows:
                fh = await reader.open(row)
                assert len(await reader.read(fh, 0, row.size)) == row.size
                reader.release(fh)

        trio.run(read_some)
        assert lib.cas.usage()[1] >= 4
    finally:
        lib.close()
    return base


@pytest.fixture
def lib_dirs(template, tmp_path):
    shutil.copytree(template, tmp_path / "lib")
    return tmp_path / "lib" / "state", tmp_path / "lib" / "cache"


def fsck(state: Path, cache: Path, repair: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = run_fsck(str(state), str(cache), repair=repair, out=out)
    return code, out.getvalue()


def chunk_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "chunks").rglob("*") if p.is_file())


def db_exec(path: Path, sql: str, args=()) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        with con:
            return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_a_healthy_library_is_clean(lib_dirs):
    state, cache = lib_dirs
    code, out = fsck(state, cache)
    assert code == EXIT_CLEAN, out
    assert out.rstrip().endswith("clean")
    assert "every one verified against its hash" in out and "matches the catalog" in out
    assert "integrity_check ok" in out


@pytest.mark.resilience("6.2")
@pytest.mark.expected_log(QUARANTINED)
def test_every_kind_of_cache_and_manifest_damage_is_found_and_repaired(lib_dirs):
    state, cache = lib_dirs
    files = chunk_files(cache)
    corrupt, gone, orphan = files[0], files[1], files[2]
    rotten = bytearray(corrupt.read_bytes())
    rotten[10] ^= 0x40
    corrupt.write_bytes(bytes(rotten))  # bit rot
    gone.unlink()  # the index still lists it
    db_exec(cache / "index.db", "DELETE FROM chunks WHERE hash = ?", (orphan.name,))  # a crash before the insert
    stray = cache / "chunks" / "zz" / "not-a-chunk"
    stray.parent.mkdir()
    stray.write_bytes(b"left here by something else")
    (cache / "tmp" / f"{chunk_hash(b'x')}.1234").write_bytes(b"half a chunk")
    cat = state / "catalog.db"
    file_id, ident, size = db_exec(cat, "SELECT id, size || ':' || mtime_ns || ':' || etag, size FROM files "
                                        "WHERE kind = 'track' LIMIT 1")[0]
    db_exec(cat, "INSERT INTO manifests VALUES(?, ?, ?, ?)", (file_id, ident, size // CHUNK + 5, "0" * 64))
    db_exec(cat, "INSERT INTO manifests VALUES(?, ?, ?, ?)", (file_id, "1:2:old", 0, "1" * 64))
    db_exec(cat, "INSERT INTO manifests VALUES(?, ?, ?, ?)", (99999, "1:2:", 0, "2" * 64))

    code, out = fsck(state, cache)
    assert code == EXIT_LEFT, out
    for expected in (f"chunk {corrupt.name[:16]}… fails verification", "1 index rows have no chunk file",
                     "1 good chunk files are not in the index", f"{stray} is not a chunk file",
                     "1 half-written temp files", "1 manifest rows name chunks past the end of their file",
                     "1 manifest rows describe an old version of their file",
                     "1 manifest rows belong to files the catalog no longer has"):
        assert expected in out, f"{expected!r} not reported:\n{out}"
    assert out.count("PROBLEM") == 8 and "--repair" in out
    assert corrupt.read_bytes() == bytes(rotten)  # checking wrote nothing

    code, out = fsck(state, cache, repair=True)
    assert code == EXIT_REPAIRED, out
    assert out.count("REPAIRED") >= 5 and "LEFT" not in out and "8 problems found, all repaired" in out
    [kept] = [p for p in (cache / "quarantine").iterdir() if p.name.startswith(corrupt.name)]
    assert kept.read_bytes() == bytes(rotten)  # moved aside, never deleted
    assert [p.read_bytes() for p in (cache / "quarantine").iterdir() if ".stray-" in p.name] == \
        [b"left here by something else"]
    assert not corrupt.exists() and not stray.exists()

    code, out = fsck(state, cache)
    assert code == EXIT_CLEAN, out


@pytest.mark.resilience("6.2")
@pytest.mark.expected_log(CATALOG_MOVED)
def test_a_damaged_catalog_is_reported_and_moved_aside(lib_dirs):
    state, cache = lib_dirs
    cat = state / "catalog.db"
    raw = bytearray(cat.read_bytes())
    raw[4096:len(raw) - 4096] = b"\x5a" * (len(raw) - 8192)
    cat.write_bytes(bytes(raw))
    code, out = fsck(state, cache)
    assert code == EXIT_LEFT and "catalog.db is damaged" in out, out

    code, out = fsck(state, cache, repair=True)
    assert code == EXIT_REPAIRED, out
    assert "the next mount rebuilds it by rescanning the origins" in out
    [moved] = [p for p in state.iterdir() if p.name.startswith("catalog.db.damaged-")]
    assert moved.read_bytes() == bytes(raw)
    assert fsck(state, cache)[0] == EXIT_CLEAN


@pytest.mark.resilience("6.2")
@pytest.mark.expected_log(CAS_INDEX_MOVED, CAS_INDEX_REBUILT, INDEX_MOVED)
@pytest.mark.parametrize("damage", ["cache index", "search index", "index out of date"])
def test_damaged_derived_stores_are_rebuilt(lib_dirs, damage):
    state, cache = lib_dirs
    if damage == "cache index":
        (cache / "index.db").write_bytes(b"\x00" * 8192)
        expect = "index.db is damaged"
    elif damage == "search index":
        (state / "index" / "meta.json").unlink()
        expect = "meta.json is missing"
    else:
        index = SearchIndex(str(state / "index"))
        index.rebuild([])
        expect = "the index disagrees with the catalog"
    code, out = fsck(state, cache)
    assert code == EXIT_LEFT and expect in out, out
    code, out = fsck(state, cache, repair=True)
    assert code == EXIT_REPAIRED, out
    code, out = fsck(state, cache)
    assert code == EXIT_CLEAN, out
    assert SearchIndex(str(state / "index"), create=False).search("Symphony")


def test_repair_is_refused_while_the_daemon_uses_the_library(lib_dirs):
    state, cache = lib_dirs
    daemon = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "musicfs", "mount"],
                              stdin=subprocess.PIPE)
    try:
        eventually(lambda: pid_is_musicfs(daemon.pid), 10, "the stand-in daemon to exec")
        (state / RunMarker.NAME).write_text(json.dumps({"pid": daemon.pid}))
        code, out = fsck(state, cache, repair=True)
        assert code == EXIT_ERROR and f"the daemon (pid {daemon.pid}) is using this library" in out
        code, out = fsck(state, cache)  # looking is allowed, with a warning about writes in flight
        assert code == EXIT_CLEAN and "is running" in out, out
    finally:
        daemon.stdin.close()
        daemon.wait(10)


@pytest.fixture
def cli_logging():
    """cli.main installs the daemon's log handler on the root logger: take it away again afterwards."""
    import logging

    from musicfs.shared.logsetup import teardown_logging

    level = logging.getLogger().level
    yield
    teardown_logging()
    logging.getLogger().setLevel(level)


def test_the_command_line_finds_the_only_library_and_its_cache(lib_dirs, tmp_path, monkeypatch, capsys, cli_logging):
    state, cache = lib_dirs
    xdg_state = tmp_path / "xdg-state" / "musicfs"
    xdg_state.mkdir(parents=True)
    moved = xdg_state / "0123456789abcdef"
    shutil.move(str(state), moved)
    (moved / "daemon.json").write_text(json.dumps({"cache_dir": str(cache)}))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    assert cli.main(["fsck"]) == EXIT_CLEAN
    out = capsys.readouterr().out
    assert f"state {moved}, cache {cache}" in out and "clean" in out
    chunk_files(cache)[0].write_bytes(b"rot")
    assert cli.main(["fsck"]) == EXIT_LEFT
    umask = os.umask(0o022)
    try:
        assert cli.main(["fsck", "--repair"]) == EXIT_REPAIRED
    finally:
        assert os.umask(umask) == 0o077  # --repair creates private files
    assert not (moved.stat().st_mode | cache.stat().st_mode) & 0o077  # and made the library's folders private
    assert cli.main(["fsck"]) == EXIT_CLEAN


def test_no_library_is_an_operational_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "nothing"))
    out = io.StringIO()
    assert run_fsck(None, None, out=out) == EXIT_ERROR
    assert "no library found" in out.getvalue()
    assert run_fsck(str(tmp_path / "absent"), None, out=io.StringIO()) == EXIT_ERROR


def test_fsck_never_writes_without_repair(lib_dirs):
    state, cache = lib_dirs
    chunk_files(cache)[0].write_bytes(b"rot")
    (state / "index" / "meta.json").unlink()

    def snapshot():
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in (state, cache) for p in root.rglob("*")
                if p.is_file()}

    before = snapshot()
    assert fsck(state, cache)[0] == EXIT_LEFT
    assert snapshot() == before

