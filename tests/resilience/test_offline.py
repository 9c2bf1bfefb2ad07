"""L2: offline mode (4.2.3) and starting offline (X.3) on a real mount of a local library.

"Every origin down" is the library folder renamed away (a NAS that is not mounted); "back" is the rename
back. Reads happen in child processes that drop the file's page cache first, so the daemon answers them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.status import query_daemon
from musicfs_test_utils.assertions import file_digest, tree_files
from musicfs_test_utils.daemon import wait_until

pytestmark = pytest.mark.l2

READ_TIMEOUT = 10.0  # long on purpose: an offline read that waited for anything would show

_READER = r"""
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


def read_in_child(path: Path, timeout: float = 60.0) -> tuple[str, str, float]:
    """("OK", sha256, seconds) or ("ERR", errno, seconds); the reading process always finishes."""
    out = subprocess.run([sys.executable, "-c", _READER, str(path)], capture_output=True, text=True,
                         timeout=timeout, check=True).stdout.split()
    return out[0], out[1], float(out[2])


def status(daemon) -> dict:
    doc = query_daemon(str(daemon.state_dir))
    assert doc is not None, "the daemon does not answer on its status socket"
    return doc


def by_size(mountpoint: str, origin_files: list[Path]) -> dict[Path, Path]:
    """origin file -> its mount file, for origin files of a unique size (getattr only: nothing is read)."""
    mount_sizes: dict[int, list[Path]] = {}
    for p in tree_files(mountpoint):
        mount_sizes.setdefault(p.stat().st_size, []).append(p)
    origin_sizes = [f.stat().st_size for f in origin_files]
    return {f: mount_sizes[f.stat().st_size][0] for f in origin_files
            if origin_sizes.count(f.stat().st_size) == 1 and len(mount_sizes.get(f.stat().st_size, [])) == 1}


@pytest.fixture
def library_copy(small_library, tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "library"
    shutil.copytree(small_library[0], root)
    return root, [root / p.relative_to(small_library[0]) for p in small_library[2]]


def config_file(tmp_path: Path) -> str:
    path = tmp_path / "musicfs.toml"
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in {
        "read_timeout": READ_TIMEOUT, "chunk_size": "64K", "health_interval": 0.3, "health_timeout": 1.0}.items()))
    return str(path)


@pytest.mark.resilience("4.2.3")
def test_with_every_origin_down_cached_files_play_uncached_fail_fast_and_it_recovers(library_copy, daemons, tmp_path):
    root, files = library_copy
    daemon = daemons([root], extra_args=["--config", config_file(tmp_path)])
    daemon.start()
    daemon.wait_for_mount()
    pairs = by_size(daemon.mountpoint, files)
    assert len(pairs) >= 6
    originals = list(pairs)
    cached, uncached = originals[::2], originals[1::2]
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", file_digest(f))
    digests = {f: file_digest(f) for f in originals}
    assert status(daemon)["offline"] is False

    os.rename(root, root.with_name("library-away"))  # every origin gone
    wait_until(lambda: status(daemon)["offline"], 15, "offline")
    doc = status(daemon)
    assert doc["origins"][0]["state"] == "unhealthy" and "not a directory" in doc["origins"][0]["last_error"]
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", digests[f]), f"{f.name}: cached, must be served offline"
    for f in uncached:
        outcome, code, seconds = read_in_child(pairs[f])
        assert (outcome, code) == ("ERR", "5"), f"{f.name}: {outcome} {code}"
        assert seconds < 1.0, f"{f.name}: an offline read must fail fast, took {seconds:.2f}s"

    os.rename(root.with_name("library-away"), root)  # back, and nothing is restarted
    wait_until(lambda: not status(daemon)["offline"], 15, "back online")
    assert status(daemon)["origins"][0]["state"] == "healthy"
    for f in uncached:
        assert read_in_child(pairs[f])[:2] == ("OK", digests[f])
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "every origin is down: offline" in log and "back online" in log


@pytest.mark.resilience("X.3")
def test_a_mount_starts_with_every_origin_unreachable_and_serves_its_cache(library_copy, daemons, tmp_path):
    root, files = library_copy
    daemon = daemons([root], extra_args=["--config", config_file(tmp_path)])
    daemon.start()
    daemon.wait_for_mount()
    pairs = by_size(daemon.mountpoint, files)
    names = sorted(str(p.relative_to(daemon.mountpoint)) for p in tree_files(daemon.mountpoint))
    originals = list(pairs)
    cached, uncached = originals[1:], originals[:1]
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", file_digest(f))
    digests = {f: file_digest(f) for f in originals}
    assert daemon.stop() == 0

    os.rename(root, root.with_name("library-away"))
    daemon.start()  # same state and cache, every origin unreachable
    daemon.wait_for_mount()
    wait_until(lambda: status(daemon)["offline"], 15, "offline")
    assert sorted(str(p.relative_to(daemon.mountpoint)) for p in tree_files(daemon.mountpoint)) == names
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", digests[f])
    outcome, code, seconds = read_in_child(pairs[uncached[0]])
    assert (outcome, code) == ("ERR", "5") and seconds < 1.0

    os.rename(root.with_name("library-away"), root)
    wait_until(lambda: not status(daemon)["offline"], 15, "back online")
    assert read_in_child(pairs[uncached[0]])[:2] == ("OK", digests[uncached[0]])
    assert daemon.stop() == 0
