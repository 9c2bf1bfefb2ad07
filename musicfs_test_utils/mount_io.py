"""Reading through a mount from a child process: the mount may die or hang under the reader, the test never."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .assertions import tree_files

READ_SCRIPT = r"""
import hashlib, os, sys, time
started = time.monotonic()
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # no page cache: the daemon must answer
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
except OSError as exc:
    print("ERR", exc.errno, time.monotonic() - started)
else:
    print("OK", hashlib.sha256(data).hexdigest(), time.monotonic() - started)
"""


def reader_process(path: Path | str) -> subprocess.Popen:
    """Start reading `path` in a child process (for reads that must be in flight while the test acts)."""
    return subprocess.Popen([sys.executable, "-c", READ_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True)


def reader_result(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[str, str, float]:
    """("OK", sha256, seconds) or ("ERR", errno, seconds) of a reader process, which must finish."""
    out = proc.communicate(timeout=timeout)[0].split()
    return out[0], out[1], float(out[2])


def read_in_child(path: Path | str, timeout: float = 60.0) -> tuple[str, str, float]:
    return reader_result(reader_process(path), timeout)


def read_digest(path: Path | str, timeout: float = 60.0) -> str:
    """The SHA-256 of the whole file, read past the page cache; an error fails the test."""
    status, value, _ = read_in_child(path, timeout)
    assert status == "OK", f"{path}: read failed with errno {value}"
    return value


def read_until_cached(daemon, path: Path | str, timeout: float = 15.0) -> str:
    """Read `path` whole until a read fetches nothing of a racy version (origins/base.py, settled): from then on
    the daemon keeps what it fetches, so the file is cached after that read. Its SHA-256."""
    from .daemon import eventually

    def settled_read() -> str | None:
        racy = daemon.status()["reader"]["racy_fetches"]
        digest = read_digest(path)
        return digest if daemon.status()["reader"]["racy_fetches"] == racy else None

    return eventually(settled_read, timeout, f"a read of {path} past its racy moment", step=0.2)


def mount_files_by_size(mountpoint: str, origin_files: list[Path]) -> dict[Path, Path]:
    """origin file -> its mount file, for files of a unique size (getattr only: nothing is read)."""
    mount: dict[int, list[Path]] = {}
    for p in tree_files(mountpoint):
        mount.setdefault(p.stat().st_size, []).append(p)
    sizes = [f.stat().st_size for f in origin_files]
    return {f: mount[f.stat().st_size][0] for f in origin_files
            if sizes.count(f.stat().st_size) == 1 and len(mount.get(f.stat().st_size, [])) == 1}


def mount_file_for(mountpoint: str, origin: Path) -> Path:
    """The one mount file with `origin`'s size."""
    size = origin.stat().st_size
    matches = [p for p in tree_files(mountpoint) if p.stat().st_size == size]
    assert len(matches) == 1, f"{origin}: {len(matches)} mount files of {size} bytes"
    return matches[0]
