"""L2: the real daemon and its state folder — odd things in place of its state files, private permissions."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from musicfs.daemon.control import SOCKET_NAME, STATE_FILE
from musicfs.shared.damage import RunMarker
from musicfs_test_utils.assertions import assert_mount_matches_origin

pytestmark = pytest.mark.l2


def test_folders_in_place_of_state_files_are_moved_aside_and_the_daemon_starts(small_library, daemons):
    daemon = daemons([small_library[0]])
    daemon.start()
    daemon.wait_for_mount()
    daemon.stop()
    for name in (STATE_FILE, SOCKET_NAME, RunMarker.NAME):
        if (daemon.state_dir / name).exists():
            (daemon.state_dir / name).unlink()
        (daemon.state_dir / name).mkdir()
        (daemon.state_dir / name / "inside").write_text("kept")
    daemon.start()
    daemon.wait_for_mount()
    assert daemon.status()["state"] == "running"  # the status task serves, once
    assert json.loads((daemon.state_dir / STATE_FILE).read_text())["pid"] == daemon.pid
    assert_mount_matches_origin(daemon.mountpoint, small_library[2])
    log = daemon.log_text()
    for name, kind in ((STATE_FILE, "a file"), (SOCKET_NAME, "a socket"), (RunMarker.NAME, "a file")):
        lines = re.findall(rf"WARNING .*/{re.escape(name)} is a folder, not {kind}: moved to (\S+)", log)
        assert len(lines) == 1, f"{name}: {lines}\n{log}"
        assert open(os.path.join(lines[0], "inside")).read() == "kept"
    assert "Traceback" not in log and "task status failed" not in log
    assert daemon.stop() == 0


# -- private state: another local user reads nothing of the catalog or the cache ----------------------------
def _other_user():
    """(uid, gid) of `nobody` when this process may become it (root), else skip."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second local user")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    return entry.pw_uid, entry.pw_gid


def read_as(user: tuple[int, int], path) -> int:
    """0 when `user` can open and read `path`, else the errno it got (in a forked child that drops to it)."""
    pid = os.fork()
    if pid == 0:  # the child: only syscalls, then _exit
        code = 99
        try:
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
            with open(path, "rb") as fh:
                fh.read(1)
            code = 0
        except OSError as exc:
            code = exc.errno or 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def open_workdir(tmp_path_factory):
    """A work folder another user may walk into (pytest's own temp folders are 0700), removed afterwards."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="musicfs-private-", dir="/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_state_and_cache_are_private_to_the_daemons_user(small_library, open_workdir):
    import errno

    from musicfs_test_utils.daemon import MusicfsDaemon

    nobody = _other_user()
    control = open_workdir / "readable.txt"
    control.write_text("anyone may read this")
    control.chmod(0o644)
    assert read_as(nobody, control) == 0  # the path is open to the other user: only modes below can stop it

    (open_workdir / "d").mkdir()
    (open_workdir / "d").chmod(0o755)  # whatever this process's umask: only the daemon's own modes may stop others
    daemon = MusicfsDaemon([small_library[0]], open_workdir / "mnt", open_workdir / "d")
    try:
        daemon.start()
        daemon.wait_for_mount()
        tracks = [p for p in (open_workdir / "mnt").rglob("*.flac")]
        assert tracks and tracks[0].read_bytes()  # something is cached now
        daemon.stop()
        secrets = [daemon.state_dir / "catalog.db", *sorted(daemon.cache_dir.rglob("*"))[:20]]
        assert any(p.is_file() and p.parent != daemon.cache_dir for p in secrets)  # a chunk file is among them
        for top in (daemon.state_dir, daemon.cache_dir):
            assert stat.S_IMODE(top.stat().st_mode) == 0o700
            for p in top.rglob("*"):
                assert not stat.S_IMODE(p.lstat().st_mode) & 0o077, f"{p} is open to other users"
        for p in secrets:
            if p.is_file():
                assert read_as(nobody, p) == errno.EACCES, p

        # state left open by an older version is tightened at the next start, with one log line
        for top in (daemon.state_dir, daemon.cache_dir):
            for p in [top, *top.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
        assert read_as(nobody, daemon.state_dir / "catalog.db") == 0
        daemon.start()
        daemon.wait_for_mount()
        lines = [line for line in daemon.log_text().splitlines() if " private state " in line]
        assert len(lines) == 1 and "WARNING" in lines[0], lines
        assert str(daemon.state_dir) in lines[0] and str(daemon.cache_dir) in lines[0]
        assert read_as(nobody, daemon.state_dir / "catalog.db") == errno.EACCES
        assert stat.S_IMODE(daemon.cache_dir.stat().st_mode) == 0o700
    finally:
        daemon.stop()
