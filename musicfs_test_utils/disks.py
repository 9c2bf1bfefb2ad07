"""Real disks that misbehave, for cache tests (root only): a tiny tmpfs (ENOSPC), a read-only remount, and
an ext4 image with 128-byte inodes (timestamps in whole seconds, as SFTP, FAT and many NAS shares give).

A filesystem with files open for writing (SQLite keeps index.db, -wal and -shm open) cannot be remounted
read-only as a whole (EBUSY). `read_only` therefore stacks a bind mount of the folder on itself and
remounts that read-only: every new open for writing under the folder fails with EROFS — chunk writes,
temp files, probes — while descriptors opened before keep working, as they do on a disk that turned
read-only underneath a running process. `remount_ro` is the whole-filesystem remount, for when nothing
holds a file open on it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from musicfs.daemon.mounts import mount_entry

__all__ = ["can_mount", "ext4_image", "tmpfs", "read_only", "remount", "usage"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30)


def can_mount() -> bool:
    """Root, and mount(8) works here (not every container allows it)."""
    return os.geteuid() == 0 and _run("mount", "--version").returncode == 0


@contextlib.contextmanager
def tmpfs(path: str | os.PathLike, size: str = "2m"):
    """A tmpfs of `size` on `path` (created if needed), unmounted (lazily if busy) at exit."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if done.returncode != 0:
        raise RuntimeError(f"mount -t tmpfs on {path} failed: {done.stderr.strip()}")
    try:
        yield path
    finally:
        while mount_entry(str(path)) is not None:  # a read_only() bind may still sit on top
            if _run("umount", str(path)).returncode != 0:
                _run("umount", "-l", str(path))


@contextlib.contextmanager
def ext4_image(path: str | os.PathLike, size: str = "64M", inode_size: int = 128):
    """An ext4 filesystem in an image file, loop-mounted on `path` (created if needed), unmounted at exit.
    With 128-byte inodes it keeps whole-second timestamps (mkfs warns that such inodes end in 2038)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    image = path.with_name(path.name + ".img")
    with open(image, "wb") as fh:
        fh.truncate(_bytes(size))
    for cmd in (("mkfs.ext4", "-q", "-F", "-I", str(inode_size), str(image)),
                ("mount", "-o", "loop", str(image), str(path))):
        done = _run(*cmd)
        if done.returncode != 0:
            image.unlink()
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))
        image.unlink()


def _bytes(size: str) -> int:
    return int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]]


@contextlib.contextmanager
def read_only(path: str | os.PathLike):
    """`path` turns read-only for every new write (see the module doc); writable again at exit."""
    path = str(path)
    for cmd in (("mount", "--bind", path, path), ("mount", "-o", "remount,bind,ro", path)):
        done = _run(*cmd)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    state = {"ro": True}

    def writable_again() -> None:
        if state["ro"]:
            done = _run("umount", path)
            if done.returncode != 0:
                raise RuntimeError(f"umount {path} failed: {done.stderr.strip()}")
            state["ro"] = False

    try:
        yield writable_again
    finally:
        if state["ro"]:
            writable_again()


def remount(path: str | os.PathLike, mode: str) -> None:
    """`mount -o remount,<mode> path` (mode: ro or rw) of a whole filesystem."""
    done = _run("mount", "-o", f"remount,{mode}", str(path))
    if done.returncode != 0:
        raise RuntimeError(f"mount -o remount,{mode} {path} failed: {done.stderr.strip()}")


def usage(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes used, bytes total) of the filesystem holding `path`."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize
