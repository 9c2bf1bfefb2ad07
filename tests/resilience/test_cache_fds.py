"""L2, row 5.3: the running daemon runs out of file descriptors (its RLIMIT_NOFILE lowered to what it has
open, with prlimit(2)): reads answer EIO with a clear log line and nothing else breaks; with the limit
back, the same reads succeed without a restart. The L1 half is tests/unit/test_fd_exhaustion.py."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys

import pytest

from musicfs_test_utils.assertions import tree_files
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually

pytestmark = pytest.mark.l2

_READ = r"""
import hashlib, os, sys
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # no page cache: the daemon must answer
        with os.fdopen(fd, "rb") as fh:
            print("OK", hashlib.sha256(fh.read()).hexdigest())
    except OSError as exc:
        print("ERR", exc.errno)
"""


def read_all(paths) -> list[tuple[str, str]]:
    out = subprocess.run([sys.executable, "-c", _READ, *map(str, paths)], capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()
    return [tuple(line.split()) for line in out]


@pytest.mark.resilience("5.3")
def test_a_daemon_out_of_descriptors_answers_eio_and_recovers_when_they_free_up(small_library, daemons, tmp_path):
    # every read reaches the disk cache or the origin; the origin health probe runs often (see below)
    conf = write_config(tmp_path / "musicfs.toml", memory_cache="1K", health_interval=0.3, health_timeout=1.0)
    daemon = daemons([small_library[0]], extra_args=["--config", str(conf)])
    daemon.start()
    daemon.wait_for_mount()
    files = sorted(tree_files(daemon.mountpoint))
    cached, fresh = files[: len(files) // 2], files[len(files) // 2:]
    good = read_all(cached)
    assert all(status == "OK" for status, _ in good)

    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    log_before = len(daemon.log_text())
    # the limit is one more than the highest descriptor number allowed: the lowest free number is the cap
    # (the numbers themselves, not only their count as psutil's num_fds gives: /proc names them)
    used = {int(fd) for fd in os.listdir(f"/proc/{daemon.pid}/fd")}
    lowest_free = min(set(range(len(used) + 1)) - used)
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))  # not one descriptor more
    try:
        starved = read_all(cached[:2] + fresh[:2])
        assert starved == [("ERR", str(errno.EIO))] * 4, starved
        assert daemon.alive()
        eventually(lambda: daemon.log_text()[log_before:].count("fuse read: ") >= 4, 10, "the EIO log lines")
        log = daemon.log_text()[log_before:]
        assert "too many open files (EMFILE)" in log or "Too many open files" in log
    finally:
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert read_all(cached) == good  # the same daemon, no restart: cached chunks read again
    # fresh ones come from the origin again once its health probe passes: the registry counts EMFILE
    # against the origin (offline meanwhile), so this waits for one probe interval at most
    eventually(lambda: all(status == "OK" for status, _ in read_all(fresh)), 30, "uncached reads to succeed")
    assert daemon.stop() == 0
