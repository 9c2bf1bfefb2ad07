"""The mountpoint before a mount: stale FUSE mounts cleaned (a killed daemon leaves ENOTCONN behind), a daemon that
cannot finish dying freed (its FUSE connection aborted), local sources kept out."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import time

from ..shared import MusicFSError, mount_entries, read_lock_info

log = logging.getLogger(__name__)


def mount_entry(path: str, mountinfo: str = "/proc/self/mountinfo") -> dict | None:
    """The mountinfo entry for `path` (last one wins: stacked mounts), or None."""
    target = os.path.abspath(path)
    found = None
    for entry in mount_entries(mountinfo):
        if entry.mountpoint == target:
            found = {"fstype": entry.fstype, "source": entry.source}
    return found


def is_stale(path: str) -> bool:
    """True when `path` is a FUSE mount whose daemon is gone (ENOTCONN)."""
    try:
        os.statvfs(path)
        return False
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def unmount(path: str, lazy: bool = False) -> bool:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + ["-q", path]
    try:
        return subprocess.run(args, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


FUSECTL = "/sys/fs/fuse/connections"


def dying(pid, proc: str = "/proc") -> bool:
    """Whether `pid` was killed but cannot finish dying: SIGKILL is pending, or its main thread is gone (a zombie)
    while another thread is still inside the kernel (a page store waiting on a page of its own mount)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="utf-8") as fh:
            fields = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
    except OSError:
        return False
    pending = 0
    for key in ("SigPnd", "ShdPnd"):
        try:
            pending |= int(fields.get(key, "0").strip() or "0", 16)
        except ValueError:
            pass
    threads = fields.get("Threads", "1").strip()
    zombie_with_threads = fields.get("State", "").strip().startswith("Z") and threads.isdigit() and int(threads) > 1
    return bool(pending & (1 << (signal.SIGKILL - 1))) or zombie_with_threads


def abort_connection(mountpoint: str, mountinfo: str = "/proc/self/mountinfo", fusectl: str = FUSECTL) -> bool:
    """Abort the FUSE connection of the musicfs mount at `mountpoint` (fusectl's `abort`): every request waiting on it
    fails, so a thread stuck on one returns. Found through the mount table: the mountpoint itself is never touched
    (it would hang). Whether it was aborted."""
    target = os.path.abspath(mountpoint)
    device = None
    for entry in mount_entries(mountinfo):
        if entry.mountpoint == target and entry.fstype == "fuse.musicfs":
            device = entry.device  # the last one: stacked mounts
    if device is None:
        return False
    path = os.path.join(fusectl, device.split(":")[-1], "abort")
    if not os.path.exists(path) and fusectl == FUSECTL and os.geteuid() == 0 and os.path.isdir(fusectl) \
            and not os.listdir(fusectl):
        # systemd mounts fusectl at boot; a container may not have: root can
        subprocess.run(["mount", "-t", "fusectl", "fusectl", fusectl], capture_output=True, timeout=10)
    try:
        with open(path, "w") as fh:
            fh.write("1")
        return True
    except OSError as exc:
        log.warning("cannot abort the FUSE connection of %s (%s): %s", mountpoint, path, exc.strerror or exc)
        return False


def free_dying_holder(state_dir: str, wait: float = 10.0, proc: str = "/proc", **where) -> bool:
    """A daemon of this library killed while a page store waited (page_push) cannot finish dying: it keeps the
    library's lock and its mount hangs. Abort that mount's FUSE connection so it can die, then wait (at most
    `wait` seconds) until it has. Whether one was freed."""
    holder = read_lock_info(state_dir)
    pid, mountpoint = holder.get("pid"), holder.get("mountpoint")
    if not mountpoint or not dying(pid, proc):
        return False
    log.warning("musicfs pid %s was killed but cannot finish dying (a page store waits on its mount %s): aborting "
                "that mount's FUSE connection", pid, mountpoint)
    if not abort_connection(mountpoint, **where):
        return False
    deadline = time.monotonic() + wait
    while os.path.exists(os.path.join(proc, str(pid))) and dying(pid, proc) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel lets it go once the stores it waited on fail
    return True


class MountpointBusy(MusicFSError):
    """Something alive is already mounted there."""


def check_mountpoint(mountpoint: str, sources, allow_non_empty: bool = False) -> None:
    """Refuse, before anything is written, a MOUNTPOINT that is a local SOURCE, inside one (a rescan would walk
    the mount itself) or holds one (the tree would list its own origin), and a folder that already holds files
    (mounting over it hides them) unless `allow_non_empty`. Paths are compared as realpaths. BadArgument (exit 2).
    """
    from ..shared import BadArgument

    mnt = os.path.realpath(mountpoint)
    for source in sources:
        if "://" in source:
            continue
        src = os.path.realpath(source)
        if mnt == src:
            raise BadArgument("MOUNTPOINT", f"{mountpoint} is the source {source}: mount the library somewhere else")
        if _inside(mnt, src):
            raise BadArgument("MOUNTPOINT", f"{mountpoint} is inside the source {source}: the library would "
                                            "contain its own mount; mount it outside the source")
        if _inside(src, mnt):
            raise BadArgument("MOUNTPOINT", f"the source {source} is inside {mountpoint}: the mount would hide "
                                            "its own origin; mount it somewhere else")
    if os.path.exists(mountpoint) and not os.path.isdir(mountpoint):
        raise BadArgument("MOUNTPOINT", f"{mountpoint} is not a folder")
    if allow_non_empty or mount_entry(mountpoint) is not None:
        return  # a mount there (live or stale) is for prepare_mountpoint: refused or cleaned
    try:
        with os.scandir(mountpoint) as entries:
            first = next(entries, None)
    except FileNotFoundError:
        return  # created at start
    except OSError as exc:
        raise BadArgument("MOUNTPOINT", f"cannot list {mountpoint}: {exc.strerror or exc}") from exc
    if first is not None:
        raise BadArgument("MOUNTPOINT", f"{mountpoint} is not empty (it holds {first.name!r}, which the mount "
                                        "would hide); empty it, pick another folder or pass --allow-non-empty")


def _inside(path: str, folder: str) -> bool:
    return path != folder and path.startswith(folder.rstrip("/") + "/")


def prepare_mountpoint(path: str) -> list[str]:
    """Clean a stale FUSE mount; refuse a live one; create the mountpoint (and missing parents) when missing.

    Returns the folders it created, deepest first, for `remove_created` at stop (empty when it existed)."""
    entry = mount_entry(path)
    if entry is not None:
        if not is_stale(path):
            raise MountpointBusy(f"{path} is already mounted ({entry['fstype']} from {entry['source']}); "
                                 "unmount it first or pick another mountpoint")
        log.warning("cleaning a stale mount left on %s by a daemon that died", path)
        if not unmount(path) and not unmount(path, lazy=True):
            raise MountpointBusy(f"{path} holds a stale mount that fusermount3 could not remove")
    created = []
    folder = os.path.abspath(path)
    while not os.path.lexists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    if created:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise MountpointBusy(f"cannot create the mountpoint {path}: {exc.strerror or exc}") from exc
        log.info("created the mountpoint %s (it is removed again at stop)", path)
    return created


def remove_created(created: list[str]) -> None:
    """Remove the folders prepare_mountpoint created (deepest first), each only while it is empty."""
    for folder in created:
        try:
            os.rmdir(folder)
        except OSError as exc:
            log.info("left the mountpoint folder %s in place: %s", folder, exc.strerror or exc)
            return
    if created:
        log.info("removed the mountpoint %s, which musicfs had created", created[0])
