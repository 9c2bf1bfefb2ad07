"""A new user's first mistakes, through the real CLI (issue 22, items 1-3 and 6): a source with no audio refuses to
mount and leaves nothing behind, a failed first mount leaves no trace, one library has one state folder whatever
the spelling of its source, `forget` removes a stopped library, and a malformed source is one line, exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.shared import LibraryLock
from musicfs_test_utils.eventually import eventually

EX_USAGE = 2


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache")}
    return subprocess.run([sys.executable, "-m", "musicfs", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def folders(home: Path) -> list[str]:
    """The library folders under the user's state and cache bases."""
    return sorted(str(p.relative_to(home)) for base in ("state/musicfs", "cache/musicfs")
                  for p in (home / base).glob("*"))


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_a_source_with_no_audio_refuses_to_mount_leaving_nothing_and_allow_empty_mounts_it(tmp_path):
    source, mnt = tmp_path / "typo", tmp_path / "mnt"
    source.mkdir()
    (source / "readme.txt").write_text("not music")
    result = run(tmp_path, "mount", str(source), str(mnt))
    assert result.returncode == 1
    assert last_line(result) == (f"musicfs: no audio files under {source} (1 files listed: 1 not audio, 0 hidden, "
                                 "0 unreadable); check the source, or mount it with --allow-empty")
    assert folders(tmp_path) == [] and not os.path.ismount(mnt)

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    daemon = subprocess.Popen([sys.executable, "-m", "musicfs", "mount", str(source), str(mnt), "--allow-empty"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        eventually(lambda: os.path.ismount(mnt) or daemon.poll() is not None, 60, "the empty library mounted")
        assert os.path.ismount(mnt) and os.listdir(mnt) == []
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    assert daemon.returncode == 0
    assert len(folders(tmp_path)) == 2  # mounted once: its state and cache stay


def test_a_failed_first_mount_leaves_no_trace_and_a_known_library_keeps_its_state(tmp_path):
    from musicfs_test_utils.fixtures import make_library

    result = run(tmp_path, "mount", str(tmp_path / "nosuch"), str(tmp_path / "mnt"))
    assert result.returncode == 1 and "nosuch" in last_line(result)
    assert folders(tmp_path) == []

    source = tmp_path / "library"
    make_library(source, 2, hostile=False)
    assert run(tmp_path, "scan", str(source)).returncode == 0
    known = folders(tmp_path)
    assert known
    (tmp_path / "file").write_text("not a folder")
    assert run(tmp_path, "mount", str(source), str(tmp_path / "file")).returncode == EX_USAGE
    assert folders(tmp_path) == known  # a known library's state is never removed by a failed mount


def test_a_state_folder_with_a_committed_scan_is_kept(tmp_path):
    from musicfs.shared import holds_nothing
    from musicfs_test_utils.fixtures import make_library

    source = tmp_path / "library"
    make_library(source, 2, hostile=False)
    assert run(tmp_path, "scan", str(source)).returncode == 0
    [state] = (tmp_path / "state" / "musicfs").iterdir()
    assert not holds_nothing(str(state))  # a first scan cut short resumes from what it committed: never removed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert holds_nothing(str(empty))


def test_one_library_whatever_the_spelling_of_its_source_and_forget_removes_it(tmp_path):
    from musicfs_test_utils.fixtures import make_library

    source = tmp_path / "library"
    make_library(source, 2, hostile=False)
    assert run(tmp_path, "scan", str(source) + "/").returncode == 0
    state = folders(tmp_path)
    assert run(tmp_path, "scan", f"{tmp_path}//library/./").returncode == 0
    assert folders(tmp_path) == state  # one state folder, one lock

    [library] = [p for p in (tmp_path / "state" / "musicfs").iterdir()]
    lock = LibraryLock(str(library)).acquire({"mountpoint": "", "sources": [str(source)]})
    try:
        busy = run(tmp_path, "forget", str(source))
        assert busy.returncode == 1 and str(os.getpid()) in last_line(busy)
        assert folders(tmp_path) == state
    finally:
        lock.release()
    gone = run(tmp_path, "forget", str(source) + "/")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.startswith(f"forgot {library} and its cache ") and "freed" in gone.stdout
    assert folders(tmp_path) == []
    missing = run(tmp_path, "forget", str(source))
    assert missing.returncode == EX_USAGE and "no library is" in last_line(missing)


@pytest.mark.parametrize("source,words", [
    ("s3:/music/library", "looks like a URL with one slash: write s3://music/library"),
    ("sftp:/nas/music", "looks like a URL with one slash: write sftp://nas/music"),
    ("s3://Music Bucket/library", "'Music Bucket' is not a bucket name"),
    ("s3://music/a/../b", "'..' in a source's path is not allowed"),
])
def test_a_malformed_source_is_one_line_and_exit_2(tmp_path, source, words):
    result = run(tmp_path, "mount", source, str(tmp_path / "mnt"))
    assert result.returncode == EX_USAGE
    assert result.stderr.strip().count("\n") == 0 and words in result.stderr and "regex" not in result.stderr
    assert folders(tmp_path) == []


def test_a_mount_is_found_from_a_path_inside_it_whatever_its_state_folder(daemons, small_library, tmp_path):
    """The system unit passes --state-dir: commands given only a path inside the mount still find the library,
    from the mount table (its source names the state folder), with nothing under the caller's XDG state."""
    daemon = daemons([small_library[0]])
    daemon.start()
    daemon.wait_for_mount()
    album = next(p for p in Path(daemon.mountpoint).iterdir() if p.is_dir())
    elsewhere = tmp_path / "nobody"  # this user's XDG state holds no library at all
    status = run(elsewhere, "status", "--mount", str(album), "--json")
    assert status.returncode == 0, status.stderr
    pinned = run(elsewhere, "pin", str(album))
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.startswith(f"pinned {album.name}")
    assert folders(elsewhere) == []
