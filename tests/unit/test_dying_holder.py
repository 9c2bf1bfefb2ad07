"""A daemon killed while a page store waits on its own mount cannot finish dying (page_push): the next mount finds it
by its lock, aborts its FUSE connection through fusectl and goes on (daemon/mounts.py). Here with a /proc, a mount
table and a fusectl of files; tests/resilience/test_page_push_kill.py aborts a real connection."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from musicfs.daemon.mounts import abort_connection, dying, free_dying_holder

KILL = f"{1 << (signal.SIGKILL - 1):016x}"


def proc_with(tmp_path: Path, pid: int, *, state="S (sleeping)", threads=1, pending="0" * 16) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "status").write_text(
        f"Name:\tpython3\nState:\t{state}\nThreads:\t{threads}\nSigPnd:\t{'0' * 16}\nShdPnd:\t{pending}\n")
    return proc


def test_a_process_is_dying_when_killed_and_stuck_not_when_stopped_or_running(tmp_path):
    assert dying(7, str(proc_with(tmp_path, 7, state="Z (zombie)", threads=2)))  # main thread gone, one stuck
    assert dying(8, str(proc_with(tmp_path, 8, state="D (disk sleep)", threads=3, pending=KILL)))
    assert not dying(9, str(proc_with(tmp_path, 9, state="T (stopped)", threads=4)))  # a debugger's stop
    assert not dying(10, str(proc_with(tmp_path, 10, threads=12)))
    assert not dying(11, str(proc_with(tmp_path, 11, state="Z (zombie)", threads=1)))  # dead, not reaped: no lock
    assert not dying(12, str(tmp_path / "proc"))  # gone
    assert not dying("12", str(tmp_path / "proc")) and not dying(None, str(tmp_path / "proc"))


def mount_table(tmp_path: Path, mountpoint: Path, device: str = "0:57") -> tuple[Path, Path]:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"36 25 0:22 / /sys rw - sysfs sysfs rw\n"
                         f"99 25 {device} / {mountpoint} ro,nosuid - fuse.musicfs musicfs:/state rw\n")
    fusectl = tmp_path / "fusectl"
    (fusectl / device.split(":")[1]).mkdir(parents=True)
    (fusectl / device.split(":")[1] / "abort").write_text("")
    return mountinfo, fusectl


def test_a_connection_is_aborted_through_fusectl_found_by_the_mount_table(tmp_path):
    mnt = tmp_path / "mnt"
    mountinfo, fusectl = mount_table(tmp_path, mnt)
    assert abort_connection(str(mnt), str(mountinfo), str(fusectl))
    assert (fusectl / "57" / "abort").read_text() == "1"
    assert not abort_connection(str(tmp_path / "elsewhere"), str(mountinfo), str(fusectl))


@pytest.mark.resilience("2.7")
@pytest.mark.expected_log(r"musicfs pid 4242 was killed but cannot finish dying")
def test_the_next_mount_frees_a_dying_holder_of_its_library_and_leaves_a_live_one(tmp_path):
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    state.mkdir()
    mountinfo, fusectl = mount_table(tmp_path, mnt)
    (state / "daemon.lock").write_text(json.dumps({"pid": 4242, "mountpoint": str(mnt)}))
    where = {"mountinfo": str(mountinfo), "fusectl": str(fusectl)}

    live = proc_with(tmp_path, 4242, state="S (sleeping)", threads=9)
    assert not free_dying_holder(str(state), wait=0, proc=str(live), **where)
    assert (fusectl / "57" / "abort").read_text() == ""  # a live daemon is refused the normal way, never aborted

    stuck = proc_with(tmp_path, 4242, state="Z (zombie)", threads=2)
    assert free_dying_holder(str(state), wait=0, proc=str(stuck), **where)
    assert (fusectl / "57" / "abort").read_text() == "1"


def test_the_watcher_aborts_its_daemons_mount_when_the_daemon_is_dying_and_ends_with_it(monkeypatch):
    import os
    import subprocess
    import sys

    from musicfs.daemon import guard

    aborted = []
    monkeypatch.setattr(guard, "abort_connection", lambda mountpoint: aborted.append(mountpoint) or True)
    monkeypatch.setattr(guard, "dying", lambda pid: pid == os.getpid())
    assert guard.watch(os.getpid(), "/music", interval=0) is True
    assert aborted == ["/music"]

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert guard.watch(gone.pid, "/music", interval=0) is False  # it ended the normal way: nothing aborted
    assert aborted == ["/music"]
