"""Mount table reading and stale FUSE mount cleanup (a killed daemon leaves ENOTCONN behind)."""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess

from .errors import MusicFSError

log = logging.getLogger(__name__)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entry(path: str, mountinfo: str = "/proc/self/mountinfo") -> dict | None:
    """The mountinfo entry for `path` (last one wins: stacked mounts), or None."""
    target = os.path.abspath(path)
    found = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape(fields[4]) == target:
                rfields = right.split()
                found = {"fstype": rfields[0] if rfields else "", "source": rfields[1] if len(rfields) > 1 else ""}
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


class MountpointBusy(MusicFSError):
    """Something alive is already mounted there."""


def prepare_mountpoint(path: str) -> None:
    """Create the mountpoint; clean a stale FUSE mount; refuse a live one."""
    entry = mount_entry(path)
    if entry is not None:
        if not is_stale(path):
            raise MountpointBusy(f"{path} is already mounted ({entry['fstype']} from {entry['source']}); "
                                 "unmount it first or pick another mountpoint")
        log.warning("cleaning a stale mount left on %s by a daemon that died", path)
        if not unmount(path) and not unmount(path, lazy=True):
            raise MountpointBusy(f"{path} holds a stale mount that fusermount3 could not remove")
    os.makedirs(path, exist_ok=True)
