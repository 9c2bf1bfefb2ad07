"""`musicfs status`: from a daemon's socket, from the files when none runs, and never hanging on a stale socket."""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from musicfs.cache.cas import CasStore
from musicfs.commands.status import (
    EXIT_ERROR,
    EXIT_NOT_RUNNING,
    EXIT_RUNNING,
    DaemonUnresponsive,
    query_daemon,
    render_table,
    status_from_files,
)
from musicfs_test_utils.fixtures import make_library

DOC = {
    "pid": 4242, "version": "0.1.0", "mountpoint": "/srv/musicfs", "sources": ["/srv/music", "s3://bucket/music"],
    "state": "running", "offline": False, "uptime_s": 3725.5, "tracks": 1234,
    "cache": {"used_bytes": 123456789, "quota_bytes": 10737418240, "chunks": 118, "state": "normal"},
    "origins": [{"name": "/srv/music", "state": "healthy", "last_error": ""},
                {"name": "s3://bucket/music", "state": "down", "last_error": "OriginTimeout: connect timed out"}],
    "tasks": {"fuse": {"state": "running", "failures": 0, "restarts": 0, "last_error": ""},
              "rescan": {"state": "restarting", "failures": 2, "restarts": 1, "last_error": "OriginError: gone"}},
    "degraded": [],
    "reader": {"open_files": 2, "open_handles": 3, "memory_hits": 700, "memory_bytes": 1 << 20, "cache_hits": 4100,
               "origin_fetches": 200, "changed_files": 0, "manifest_failures": 0},
    "fuse": {"requests": 5000, "errors": 3, "errors_by_handler": {"read": 3}, "open_files": 3, "open_dirs": 0,
             "known_inodes": 40, "retired_inodes": 0},
}


def musicfs(*args: str, env_extra: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "FAILPOINTS")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "musicfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


class FakeDaemon:
    """What the daemon's status socket does: accept, write one JSON document, close."""

    def __init__(self, state_dir: Path, doc: dict):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = str(state_dir / "daemon.sock")
        payload = json.dumps(doc).encode()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(payload)

        old = os.umask(0o177)
        try:
            self.server = socketserver.UnixStreamServer(self.path, Handler)
        finally:
            os.umask(old)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fake-daemon", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        os.unlink(self.path)


# -- a running daemon ---------------------------------------------------------------------------------------
def test_status_json_prints_the_daemons_document(tmp_path):
    state = tmp_path / "state"
    with FakeDaemon(state, DOC) as fake:
        assert os.stat(fake.path).st_mode & 0o777 == 0o600
        result = musicfs("status", "--state-dir", str(state), "--json")
    assert result.returncode == EXIT_RUNNING, result.stderr
    assert json.loads(result.stdout) == DOC
    assert result.stderr == ""


def test_status_table_shows_the_figures(tmp_path):
    state = tmp_path / "state"
    with FakeDaemon(state, DOC):
        result = musicfs("status", "--state-dir", str(state))
    assert result.returncode == EXIT_RUNNING, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].split() == ["state", "running", "(pid", "4242,", "up", "1h", "2m)"]
    for figure in ("1234", "123456789 bytes", "118 chunks", "117.7 MiB of 10.0 GiB", "normal", "/srv/musicfs",
                   "s3://bucket/music", "OriginTimeout: connect timed out", "failures 2", "restarts 1",
                   "OriginError: gone", "5000", "4100"):
        assert figure in out, figure
    # key/value lines are aligned: every value starts in the same column
    head = lines[:lines.index("origins:")]
    assert len(head) >= 6 and len({re.match(r"^(.+?)  +(?=\S)", line).end() for line in head}) == 1
    assert "origins:" in lines and "tasks:" in lines and "reader:" in lines and "fuse:" in lines


def test_default_state_dir_is_the_only_library(tmp_path):
    xdg = tmp_path / "xdg"
    (xdg / "musicfs" / "lib" / "index").mkdir(parents=True)
    with FakeDaemon(xdg / "musicfs" / "lib", DOC):
        result = musicfs("status", "--json", env_extra={"XDG_STATE_HOME": str(xdg)})
    assert result.returncode == EXIT_RUNNING, result.stderr
    assert json.loads(result.stdout)["pid"] == 4242


def test_several_libraries_are_listed_running_or_not(tmp_path):
    """Issue 13: with two libraries, status lists both (a table; --json a list), by sources and mountpoint,
    and exits 0 though one is stopped (issue 22: a stopped library does not fail the listing); --state-dir and
    --mount still pick one, and exit 3 when that one is not running."""
    xdg = tmp_path / "xdg"
    for name in ("a", "b"):
        (xdg / "musicfs" / name / "index").mkdir(parents=True)
    (xdg / "musicfs" / "a" / "daemon.json").write_text(json.dumps(
        {"mountpoint": "/mnt/a", "sources": ["/music/a"], "pid": None}))
    env = {"XDG_STATE_HOME": str(xdg)}
    with FakeDaemon(xdg / "musicfs" / "b", DOC):
        listed = musicfs("status", "--json", env_extra=env)
        table = musicfs("status", env_extra=env)
    assert listed.returncode == 0, listed.stderr
    docs = json.loads(listed.stdout)
    assert [(d["state"], d["mountpoint"], d["sources"]) for d in docs] == [
        ("stopped", "/mnt/a", ["/music/a"]), ("running", "/srv/musicfs", DOC["sources"])]
    assert docs[1]["pid"] == 4242 and docs[0]["state_dir"] == str(xdg / "musicfs" / "a")
    assert table.returncode == 0, table.stderr
    header, row_a, row_b = table.stdout.splitlines()[:3]
    assert header.split()[:4] == ["STATE", "PID", "TRACKS", "MOUNTPOINT"]
    assert row_a.split()[0] == "stopped" and "/mnt/a" in row_a and "/music/a" in row_a
    assert row_b.split()[:2] == ["running", "4242"] and "/srv/musicfs" in row_b and "s3://bucket/music" in row_b
    picked = musicfs("status", "--json", "--mount", "/mnt/a/Some Artist/Album", env_extra=env)
    assert picked.returncode == EXIT_NOT_RUNNING and json.loads(picked.stdout)["mountpoint"] == "/mnt/a"
    bad = musicfs("status", "--mount", "/elsewhere", env_extra=env)
    assert bad.returncode == 2 and "--mount" in bad.stderr and "/mnt/a" in bad.stderr


def test_no_library_at_all_is_not_running(tmp_path):
    result = musicfs("status", env_extra={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert result.returncode == EXIT_NOT_RUNNING
    assert result.stdout.startswith("not running: no library under")
    assert not (tmp_path / "xdg").exists()
    result = musicfs("status", "--state-dir", str(tmp_path / "nope"))
    assert result.returncode == EXIT_ERROR and "no such folder" in result.stderr


def test_query_works_beyond_the_unix_socket_path_limit(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)  # bind relative: the server side has the same 108-byte limit
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("daemon.sock")
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.sendall(json.dumps(DOC).encode())

    t = threading.Thread(target=answer)
    t.start()
    try:
        assert len(str(deep / "daemon.sock")) > 108
        assert query_daemon(str(deep)) == DOC
    finally:
        t.join(5)
        server.close()


# -- no daemon ------------------------------------------------------------------------------------------
def _tree_snapshot(*roots: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))}


@pytest.fixture
def stopped_library(tmp_path):
    """A real catalog made by `musicfs scan`, a real chunk cache, and the daemon.json a daemon leaves."""
    src, state, cache = tmp_path / "music", tmp_path / "state", tmp_path / "cache"
    made = make_library(src, 8)
    scan = musicfs("scan", str(src), "--state-dir", str(state), env_extra={"XDG_STATE_HOME": str(tmp_path / "x")})
    assert scan.returncode == 0, scan.stderr
    cas = CasStore(str(cache), 1 << 30)
    chunks = [os.urandom(3000), os.urandom(70_000), b"x" * 5]
    for data in chunks:
        cas.put(data)
    cas.close()
    (state / "daemon.json").write_text(json.dumps({
        "pid": 2 ** 22 + 12345, "mountpoint": str(tmp_path / "mnt"), "sources": [str(src)], "cache_dir": str(cache),
        "cache_size": 1 << 30, "started_at": time.time() - 60}))
    return {"state": state, "cache": cache, "tracks": len(made), "bytes": sum(map(len, chunks)),
            "chunks": len(chunks), "src": src}


def test_status_from_files_when_stopped(stopped_library):
    lib = stopped_library
    before = _tree_snapshot(lib["state"], lib["cache"])
    result = musicfs("status", "--state-dir", str(lib["state"]), "--json")
    assert result.returncode == EXIT_NOT_RUNNING, result.stderr
    doc = json.loads(result.stdout)
    assert doc["state"] == "stopped" and doc["pid"] is None
    assert doc["tracks"] == lib["tracks"]
    assert doc["cache"]["used_bytes"] == lib["bytes"] and doc["cache"]["chunks"] == lib["chunks"]
    assert doc["cache"]["quota_bytes"] == 1 << 30
    assert doc["sources"] == [str(lib["src"])]
    assert time.time() - 600 < doc["last_scan"] <= time.time()
    assert doc["problems"] == []
    table = musicfs("status", "--state-dir", str(lib["state"]))
    assert table.returncode == EXIT_NOT_RUNNING
    assert table.stdout.startswith("state ") and "stopped" in table.stdout.splitlines()[0]
    assert f"tracks      {lib['tracks']}\n" in table.stdout and f"({lib['bytes']} bytes, 3 chunks)" in table.stdout
    assert _tree_snapshot(lib["state"], lib["cache"]) == before  # read-only: not even a -wal or -shm file


def test_stale_socket_is_not_running_and_does_not_hang(stopped_library):
    state = stopped_library["state"]
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(state / "daemon.sock"))  # what a daemon killed with -9 leaves: a socket file, nobody listening
    dead.close()
    assert query_daemon(str(state)) is None  # refused at once (ECONNREFUSED): nothing to wait for
    result = musicfs("status", "--state-dir", str(state), "--json")
    assert result.returncode == EXIT_NOT_RUNNING, result.stderr
    assert json.loads(result.stdout)["tracks"] == stopped_library["tracks"]


def test_a_daemon_that_never_answers_is_an_error_within_the_timeout(stopped_library):
    state = stopped_library["state"]
    wedged = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wedged.bind(str(state / "daemon.sock"))
    wedged.listen(4)  # the kernel accepts connections; nobody ever writes
    try:
        with pytest.raises(DaemonUnresponsive, match="0.3"):  # the given timeout is what gave up
            query_daemon(str(state), timeout=0.3)
        result = musicfs("status", "--state-dir", str(state), "--json")
        assert result.returncode == EXIT_ERROR
        doc = json.loads(result.stdout)
        assert doc["state"] == "unresponsive" and "did not answer within 2s" in doc["problems"][0]
        assert doc["tracks"] == stopped_library["tracks"]
    finally:
        wedged.close()


def test_garbage_answer_is_an_error(tmp_path):
    with FakeDaemon(tmp_path / "s", {"x": 1}) as fake:
        fake.server.RequestHandlerClass.handle = lambda self: self.wfile.write(b"<html>")
        result = musicfs("status", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == EXIT_ERROR and "not JSON" in result.stderr


def test_files_that_say_little_still_render(tmp_path):
    (tmp_path / "index").mkdir()
    doc = status_from_files(str(tmp_path))
    assert doc["state"] == "stopped" and doc["tracks"] is None
    assert any("never scanned" in p for p in doc["problems"])
    text = render_table(doc)
    assert "tracks" in text and "problems:" in text
    assert render_table({}) == "state  unknown\n"
    assert "state  running" in render_table({"state": "running", "tasks": {"x": "not a dict"}, "origins": [3]})


def test_the_names_agree_with_the_daemon_side():
    from musicfs.commands import status
    from musicfs.daemon import control
    from musicfs.shared import statefiles

    assert (status.SOCKET_NAME, control.SOCKET_NAME, control.STATE_FILE) == \
        (statefiles.SOCKET_NAME, statefiles.SOCKET_NAME, statefiles.STATE_FILE)


def test_stopped_status_shows_what_quarantine_keeps(stopped_library):
    lib = stopped_library
    quarantine = lib["cache"] / "quarantine"
    quarantine.mkdir(exist_ok=True)
    (quarantine / ("ab" * 32 + ".1700000000")).write_bytes(b"q" * 3000)
    (quarantine / ("cd" * 32 + ".1700000001")).write_bytes(b"q" * 2000)
    doc = status_from_files(str(lib["state"]))
    assert (doc["cache"]["quarantine_bytes"], doc["cache"]["quarantine_files"]) == (5000, 2)
    assert doc["cache"]["used_bytes"] == lib["bytes"]  # chunks alone, as before
    assert "quarantine 2 files (4.9 KiB)" in render_table(doc)


# -- the daemon's own process figures (psutil) ----------------------------------------------------------------
def test_process_figures_follow_descriptors_and_threads():
    import psutil

    from musicfs.daemon.main import process_figures

    before = process_figures()
    assert abs(before["rss_bytes"] - psutil.Process().memory_info().rss) < 16 << 20
    fd = os.open(os.devnull, os.O_RDONLY)
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        during = process_figures()
    finally:
        release.set()
        thread.join()
        os.close(fd)
    assert (during["open_fds"], during["threads"]) == (before["open_fds"] + 1, before["threads"] + 1)


def test_the_process_row_renders_and_tolerates_missing_figures():
    text = render_table({"state": "running", "process": {"rss_bytes": 50 << 20, "open_fds": 23, "threads": 7}})
    assert "process  RSS 50.0 MiB, 23 open fds, 7 threads" in text
    unknown = render_table({"state": "running", "process": {"rss_bytes": None, "open_fds": None, "threads": None}})
    assert "process  RSS ?, ? open fds, ? threads" in unknown


def test_credentials_in_a_source_url_are_never_shown(tmp_path):
    state = tmp_path / "state"
    leaky = {**DOC, "sources": ["s3://AKIAEXAMPLE:wJalr/SECRET+x@bucket/music"],
             "origins": [{"name": "s3://AKIAEXAMPLE:wJalr/SECRET+x@bucket/music", "state": "healthy", "last_error": ""}]}
    with FakeDaemon(state, leaky):
        table = musicfs("status", "--state-dir", str(state))
        as_json = musicfs("status", "--state-dir", str(state), "--json")
    for result in (table, as_json):
        assert result.returncode == EXIT_RUNNING, result.stderr
        assert "s3://***@bucket/music" in result.stdout
        assert "AKIAEXAMPLE" not in result.stdout and "SECRET" not in result.stdout


async def test_the_daemon_snapshot_is_the_components_statistics_records(small_library, tmp_path):
    from dataclasses import fields

    from musicfs.cache.chunk_cache import CacheStatistics
    from musicfs.daemon.build import build
    from musicfs.daemon.fuse_ops import MusicOperations
    from musicfs.daemon.main import Daemon
    from musicfs.daemon.notify import Notifier
    from musicfs.library.storage import Library
    from musicfs.shared.config import Config

    cfg = Config(sources=(str(small_library[0]),), state_dir=str(tmp_path / "state"),
                 cache_dir=str(tmp_path / "cache")).resolved()
    lib = Library.open(cfg)
    try:
        lib.scan()
        [scanned] = lib.registry.statistics()  # the scan's tag reads count as fetched bytes too
        daemon = Daemon(cfg, Notifier(""))
        daemon.lib, daemon.services = lib, build(cfg, lib, tree=lambda: daemon.ops.tree)
        daemon.ops = MusicOperations(lib.build_tree(), daemon.services.reader)
        row = lib.catalog.files("track")[0]
        fh = await daemon.services.reader.open(row)
        assert len(await daemon.services.reader.read(fh, 0, row.size)) == row.size
        doc = json.loads(json.dumps(daemon.snapshot()))  # what the socket sends
        daemon.services.reader.release(fh)
        # the cache holds the chunk read and the blocks the scan kept of every track's tags (blocks.py)
        held = {d: n for r in lib.catalog.files("track") for _, n, d in lib.catalog.blocks(r.version)}
        held.update({d: row.size for d in lib.catalog.manifest(row.version).values()})
    finally:
        lib.close()
    assert set(doc["cache"]) == {f.name for f in fields(CacheStatistics)}
    assert doc["cache"]["state"] == "normal" and doc["cache"]["used_bytes"] == sum(held.values())
    # the scan read this small track whole for its tags: the read is served from those blocks, no origin request
    assert doc["reader"]["origin_fetches"] == 0 and doc["cache"]["chunks"] == len(held)
    assert doc["reader"]["block_fetches"] == 0 and doc["reader"]["block_hits"] >= 1
    assert doc["reader"]["open_handles"] == 1
    [origin] = doc["origins"]
    assert origin["bytes_fetched"] == scanned.bytes_fetched > 0
    assert origin["results"] == {"ok": origin["requests"]}
    assert doc["fuse"]["requests"] == 0 and doc["tasks"] == {} and doc["degraded"] == []
    text = render_table(doc)
    assert "reader:" in text and "fuse:" in text and "origin_fetches" in text


def test_the_origins_section_shows_the_connections_an_origin_keeps():
    doc = {"state": "running", "origins": [
        {"name": "sftp://me@nas/music", "state": "healthy", "last_error": "",
         "sessions": {"sessions": 2, "starting": 0, "started": 5, "replaced": 1, "requests_waiting": 0}},
        {"name": "sftp://me@backup/music", "state": "unhealthy", "last_error": "ssh: connection refused",
         "sessions": {"sessions": 1, "starting": 1, "started": 1, "replaced": 0, "requests_waiting": 0}},
        {"name": "/srv/music", "state": "healthy", "last_error": "", "sessions": None}]}
    lines = render_table(doc).splitlines()
    origins = lines[lines.index("origins:") + 1:]
    assert [line.split() for line in origins] == [
        ["sftp://me@nas/music", "healthy", "2", "sessions", "(5", "started,", "1", "replaced)"],
        ["sftp://me@backup/music", "unhealthy", "1", "session", "(1", "started,", "0", "replaced)", "ssh:",
         "connection", "refused"],
        ["/srv/music", "healthy"]]
