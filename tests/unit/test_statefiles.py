"""musicfs.shared.statefiles: the one library finder, state file names, pid check, read-only SQLite, size formatter."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest

from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.daemon import control
from musicfs.shared import damage, statefiles
from musicfs.shared.statefiles import (
    NoLibrary,
    SeveralLibraries,
    cache_dir_of,
    find_library,
    human_size,
    libraries,
    pid_alive,
    read_daemon_info,
    ro_connect,
    ro_uri,
)


def test_importing_it_does_not_import_trio():
    code = "import sys, musicfs.shared.statefiles; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_daemon_side_uses_the_same_names():
    assert (control.STATE_FILE, control.SOCKET_NAME) == (statefiles.STATE_FILE, statefiles.SOCKET_NAME)
    assert damage.RunMarker.NAME == statefiles.RUNNING_FILE == "running.json"
    assert damage.ro_uri is ro_uri and damage.pid_is_musicfs is pid_alive


@pytest.mark.parametrize("marker", ["index", "catalog.db", "daemon.json", "daemon.sock"])
def test_any_marker_makes_a_library(tmp_path, marker):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "stranger").mkdir()  # a folder without markers is not one
    (tmp_path / "empty").mkdir()
    (lib / marker).mkdir() if marker == "index" else (lib / marker).write_text("")
    assert libraries(tmp_path) == [lib]
    assert find_library(base=tmp_path) == str(lib)


def test_xdg_state_home_is_the_default_base(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    (tmp_path / "musicfs" / "abc" / "index").mkdir(parents=True)
    assert find_library() == str(tmp_path / "musicfs" / "abc")


def test_no_library_names_the_base(tmp_path):
    with pytest.raises(NoLibrary, match="no library found under .*mount or scan one first") as info:
        find_library(base=tmp_path / "absent")
    assert info.value.base == tmp_path / "absent" and info.value.libraries == []


def test_several_libraries_prefer_the_only_live_one_else_list_them(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "index").mkdir(parents=True)
    assert find_library(live=lambda p: p.name == "b", base=tmp_path) == str(tmp_path / "b")
    for live in (None, lambda p: True, lambda p: False):
        with pytest.raises(SeveralLibraries, match="2 libraries under .*--state-dir") as info:
            find_library(live=live, base=tmp_path)
        assert str(tmp_path / "a") in str(info.value) and len(info.value.libraries) == 2


def test_daemon_info_missing_is_empty_and_unreadable_is_a_problem(tmp_path):
    problems: list[str] = []
    assert read_daemon_info(str(tmp_path), problems) == {} and problems == []
    (tmp_path / "daemon.json").write_text("[1]")
    assert read_daemon_info(str(tmp_path), problems) == {}
    assert problems == [f"{tmp_path / 'daemon.json'}: not a JSON object"]
    (tmp_path / "daemon.json").write_text(json.dumps({"cache_dir": "/c", "pid": 7}))
    assert read_daemon_info(str(tmp_path)) == {"cache_dir": "/c", "pid": 7}


def test_cache_dir_is_the_recorded_one_else_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    state = tmp_path / "0123"
    state.mkdir()
    assert cache_dir_of(str(state)) == str(tmp_path / "cache" / "musicfs" / "0123")
    (state / "daemon.json").write_text(json.dumps({"cache_dir": str(tmp_path / "elsewhere")}))
    assert cache_dir_of(str(state)) == str(tmp_path / "elsewhere")


def test_pid_alive_only_for_a_live_musicfs_process():
    assert pid_alive(os.getpid()) == (b"musicfs" in open(f"/proc/{os.getpid()}/cmdline", "rb").read())
    for junk in (None, "12", 1.5, True, 0, -3):
        assert pid_alive(junk) is False
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert pid_alive(dead.pid) is False
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "musicfs"])
    try:
        for _ in range(200):  # until it has exec'd and its command line says musicfs
            if pid_alive(stand_in.pid):
                break
            subprocess.run(["sleep", "0.05"])
        assert pid_alive(stand_in.pid) is True
    finally:
        stand_in.kill()
        stand_in.wait()
    assert pid_alive(stand_in.pid) is False


def test_ro_connect_reads_without_writing_beside_the_file(tmp_path):
    path = tmp_path / "x.db"
    with pytest.raises(FileNotFoundError):
        ro_connect(str(path))
    assert not path.exists()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t(v)")
        db.execute("INSERT INTO t VALUES (42)")
        db.commit()
    assert ro_uri(str(path)).endswith("?mode=ro&immutable=1")
    before = sorted(os.listdir(tmp_path))
    with closing(ro_connect(str(path))) as db:
        assert db.execute("SELECT v FROM t").fetchall() == [(42,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("INSERT INTO t VALUES (1)")
    assert sorted(os.listdir(tmp_path)) == before
    (tmp_path / "x.db-wal").write_bytes(b"")
    assert ro_uri(str(path)).endswith("?mode=ro")  # a writer may be active: use its log


def test_ro_uri_quotes_odd_names(tmp_path):
    assert "%3F" in ro_uri(str(tmp_path / "a?b.db")) and "%23" in ro_uri(str(tmp_path / "a#b.db"))


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (123456789, "117.7 MiB"),
    (10 << 30, "10.0 GiB"), (3 << 40, "3.0 TiB"), (5 << 50, "5.0 PiB"), (5 << 60, "5120.0 PiB"),
    (2.5 * 1024, "2.5 KiB"), (None, "?"), ("12", "?"), (True, "?"), (float("nan"), "?"),
])
def test_human_size(n, text):
    assert human_size(n) == text


def test_verify_chunks_is_read_only_and_finds_rot_and_strays(tmp_path):
    root = tmp_path / "cache"
    store = CasStore(str(root), 1 << 30)
    good, bad = store.put(b"a" * 1000), store.put(b"b" * 2000)
    store.close()
    (root / "chunks" / bad[:2] / bad).write_bytes(b"rot")
    (root / "chunks" / "zz").write_text("a file where a folder belongs")
    (root / "chunks" / good[:2] / "notes.txt").write_text("")
    misplaced = chunk_hash(b"elsewhere")
    (root / "chunks" / ("00" if misplaced[:2] != "00" else "01")).mkdir(exist_ok=True)
    wrong_folder = root / "chunks" / ("00" if misplaced[:2] != "00" else "01") / misplaced
    wrong_folder.write_bytes(b"elsewhere")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    checks = CasStore.verify_chunks(str(root))
    assert len(checks) == 2
    results = {c.digest: (c.ok, c.size) for c in checks}
    assert results == {good: (True, 1000), bad: (False, 3)}
    assert sorted(checks.strays) == sorted([str(root / "chunks" / "zz"), str(root / "chunks" / good[:2] / "notes.txt"),
                                            str(wrong_folder)])
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing written, moved or created


def test_verify_chunks_of_a_missing_cache_is_empty(tmp_path):
    checks = CasStore.verify_chunks(str(tmp_path / "none"))
    assert len(checks) == 0 and list(checks) == [] and checks.strays == []
    assert not (tmp_path / "none").exists()
