"""L2 (issue 13): run it like a service — one daemon per library, refusals before anything is written, a
mountpoint created and removed again, every library in one `musicfs status`, search over all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.shared.statefiles import LOCK_FILE, SOCKET_NAME
from musicfs_test_utils.daemon import is_mounted

pytestmark = pytest.mark.l2

EX_USAGE = 2


def musicfs(*args: str, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "FAILPOINTS")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "musicfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _second_of(first, daemons, name: str, mountpoint: Path | None = None):
    """A daemon of the same library (same sources, same state folder) as `first`."""
    second = daemons(first.sources, name)
    second.state_dir = first.state_dir
    if mountpoint is not None:
        second.mountpoint = str(mountpoint)
    return second


# -- one daemon per library ----------------------------------------------------------------------------------
def test_a_second_daemon_of_a_mounted_library_is_refused_naming_the_holder(small_library, daemons, tmp_path):
    first = daemons([small_library[0]], "first")
    first.start()
    first.wait_for_mount()
    other_mnt = tmp_path / "other-mnt"
    second = _second_of(first, daemons, "second", other_mnt)
    second.start()
    code = second.wait(60)
    log = second.log_text()
    assert code == 1, log
    assert f"pid {first.pid}" in log and first.mountpoint in log and "already mounted" in log, log
    assert "Traceback" not in log
    assert not is_mounted(str(other_mnt)) and not other_mnt.exists()  # refused before anything was made
    # the first still serves, and its status socket is still there
    assert (first.state_dir / SOCKET_NAME).exists()
    assert first.status()["pid"] == first.pid
    status = musicfs("status", "--state-dir", str(first.state_dir), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "running", status.stdout
    assert first.stop() == 0


def test_a_killed_daemons_lock_never_blocks_the_next_start(small_library, daemons):
    daemon = daemons([small_library[0]])
    daemon.start()
    daemon.wait_for_mount()
    killed = daemon.pid
    daemon.kill9()  # the lock file stays behind, the flock goes with the process
    assert json.loads((daemon.state_dir / LOCK_FILE).read_text())["pid"] == killed
    daemon.start()
    daemon.wait_for_mount()
    assert daemon.status()["pid"] == daemon.pid != killed
    assert json.loads((daemon.state_dir / LOCK_FILE).read_text())["pid"] == daemon.pid
    assert daemon.stop() == 0


# -- the mountpoint ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["the-source", "inside-the-source", "holds-the-source"])
def test_a_mountpoint_that_is_or_holds_or_is_inside_the_source_is_refused(library_copy, daemons, tmp_path, where):
    root = library_copy[0]
    mountpoint = {"the-source": root, "inside-the-source": root / "Some Folder",
                  "holds-the-source": root.parent}[where]
    daemon = daemons([root])
    daemon.mountpoint = str(mountpoint)
    daemon.extra_args = ["--allow-non-empty"]  # the overlap is refused whatever the folder holds
    daemon.start()
    code = daemon.wait(60)
    log = daemon.log_text()
    assert code == EX_USAGE, log
    assert log.startswith("musicfs: MOUNTPOINT: ") and str(root) in log, log
    assert not daemon.state_dir.exists() and not daemon.cache_dir.exists()  # nothing written
    assert not is_mounted(str(mountpoint))
    assert not (root / "Some Folder").exists()


def test_a_non_empty_mountpoint_is_refused_unless_allowed(small_library, daemons, tmp_path):
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    (mountpoint / "notes.txt").write_text("mine")
    daemon = daemons([small_library[0]])
    daemon.mountpoint = str(mountpoint)
    daemon.start()
    assert daemon.wait(60) == EX_USAGE
    log = daemon.log_text()
    assert "MOUNTPOINT" in log and "not empty" in log and "--allow-non-empty" in log, log
    assert not daemon.state_dir.exists()
    daemon.extra_args = ["--allow-non-empty"]
    daemon.start()
    daemon.wait_for_mount()
    assert "notes.txt" not in os.listdir(mountpoint) and os.listdir(mountpoint)  # the library hides it
    assert daemon.stop() == 0
    assert (mountpoint / "notes.txt").read_text() == "mine"  # and it is there again, never removed


def test_a_missing_mountpoint_is_created_and_removed_again_at_stop(small_library, daemons, tmp_path):
    mountpoint = tmp_path / "made" / "by" / "musicfs"
    daemon = daemons([small_library[0]])
    daemon.mountpoint = str(mountpoint)
    daemon.start()
    daemon.wait_for_mount()
    assert os.listdir(mountpoint)
    assert daemon.stop() == 0
    assert not (tmp_path / "made").exists()
    log = daemon.log_text()
    assert f"created the mountpoint {mountpoint}" in log and f"removed the mountpoint {mountpoint}" in log, log
    # a folder that was there before stays
    existing = tmp_path / "mine"
    existing.mkdir()
    daemon.mountpoint = str(existing)
    daemon.start()
    daemon.wait_for_mount()
    assert daemon.stop() == 0
    assert existing.is_dir()


# -- several libraries ---------------------------------------------------------------------------------------
def test_two_libraries_both_show_in_status_and_search_covers_both(small_library, daemons, tmp_path):
    xdg = tmp_path / "xdg-state"
    env = {"XDG_STATE_HOME": str(xdg)}
    second_root = tmp_path / "second-library"
    import shutil

    shutil.copytree(small_library[0], second_root)
    started = []
    for name, root in (("one", small_library[0]), ("two", second_root)):
        daemon = daemons([root], name)
        daemon.state_dir = xdg / "musicfs" / name
        daemon.start()
        started.append(daemon)
    for daemon in started:
        daemon.wait_for_mount()
    one, two = started

    table = musicfs("status", env_extra=env)
    assert table.returncode == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["STATE", "PID", "TRACKS", "MOUNTPOINT"]
    for daemon, line in zip(started, lines[1:3]):
        assert line.split()[:2] == ["running", str(daemon.pid)], table.stdout
        assert daemon.mountpoint in line and daemon.sources[0] in line
    listed = musicfs("status", "--json", env_extra=env)
    docs = json.loads(listed.stdout)
    assert listed.returncode == 0 and [d["pid"] for d in docs] == [one.pid, two.pid]
    assert [d["mountpoint"] for d in docs] == [one.mountpoint, two.mountpoint]

    # a path inside a mount picks that library
    artist = sorted(os.listdir(two.mountpoint))[0]
    picked = musicfs("status", "--json", "--mount", os.path.join(two.mountpoint, artist), env_extra=env)
    assert picked.returncode == 0 and json.loads(picked.stdout)["pid"] == two.pid, picked.stderr

    # search: every library, each hit a path inside its own mount; --mount narrows it to one
    word = artist.split()[0]  # both libraries hold the same tracks
    both = musicfs("search", word, "--limit", "100", env_extra=env)
    assert both.returncode == 0, both.stderr
    paths = both.stdout.splitlines()
    assert any(p.startswith(one.mountpoint + "/") for p in paths) and any(p.startswith(two.mountpoint + "/")
                                                                           for p in paths), paths
    assert all(os.path.exists(p) for p in paths)
    only = musicfs("search", word, "--limit", "100", "--mount", two.mountpoint, env_extra=env)
    assert only.stdout.splitlines() and all(p.startswith(two.mountpoint + "/") for p in only.stdout.splitlines())
    fsck = musicfs("fsck", "--mount", os.path.join(one.mountpoint, artist), env_extra=env, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # without --mount: two libraries, it could not choose

    # one stopped: still listed, by its sources and mountpoint; the listing worked (exit 0); asked about by its
    # mountpoint, the stopped one is not running (exit 3)
    assert two.stop() == 0
    listed = musicfs("status", "--json", env_extra=env)
    assert listed.returncode == 0
    states = {d["mountpoint"]: (d["state"], d["sources"]) for d in json.loads(listed.stdout)}
    assert states == {one.mountpoint: ("running", one.sources), two.mountpoint: ("stopped", two.sources)}
    assert musicfs("status", "--mount", two.mountpoint, env_extra=env).returncode == 3
    # search: the mounted library only (a stopped one's paths lead nowhere); --all searches both again
    mounted = musicfs("search", word, "--limit", "100", env_extra=env).stdout.splitlines()
    assert mounted and all(p.startswith(one.mountpoint + "/") for p in mounted), mounted
    every = musicfs("search", word, "--limit", "100", "--all", env_extra=env).stdout.splitlines()
    assert any(p.startswith(two.mountpoint + "/") for p in every) and len(every) > len(mounted)
    assert one.stop() == 0
