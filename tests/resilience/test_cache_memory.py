"""L2, row 3.6: memory stays bounded over a long read soak through a real mount.

The library is read whole, many times, through the mount (each pass in a child process that drops the
page cache of every file first, so the daemon serves every byte), with a small in-memory chunk cache
that must churn. The daemon's RSS is sampled with psutil after every pass: once warm it must stop
growing — the last samples stay within a small margin of the mid-run ones. This is not a speed test.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import psutil
import pytest

from musicfs_test_utils.assertions import tree_files
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.fixtures import make_library

pytestmark = pytest.mark.l2

PASSES = 14
MARGIN = 4 << 20  # bytes an allocator may still wobble by once warm

_READ_ALL = r"""
import hashlib, os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # no page cache: the daemon must answer
    h = hashlib.sha256()
    while block := os.read(fd, 1 << 20):
        h.update(block)
    os.close(fd)
    print(h.hexdigest())
"""


@pytest.mark.resilience("3.6")
def test_rss_stays_flat_across_a_long_read_soak(tmp_path, daemons):
    root = tmp_path / "library"
    make_library(root, 12, big_file_mb=12, hostile=False)
    origin = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in tree_files(root))
    # the RAM cache holds ~1/7 of the library
    conf = write_config(tmp_path / "musicfs.toml", chunk_size="64K", memory_cache="2M")
    daemon = daemons([root], extra_args=["--config", str(conf)])
    daemon.start()
    daemon.wait_for_mount()
    files = [str(p) for p in tree_files(daemon.mountpoint)]
    proc = psutil.Process(daemon.pid)
    samples = []
    for n in range(PASSES):
        digests = subprocess.run([sys.executable, "-c", _READ_ALL, *files], capture_output=True, text=True,
                                 timeout=300, check=True).stdout.split()
        if n in (0, PASSES - 1):
            assert sorted(digests) == origin  # the soak reads the right bytes
        samples.append(proc.memory_info().rss)

    status = daemon.status()
    reader = status["reader"]
    served = reader["cache_hits"] + reader["memory_hits"]
    assert reader["cache_hits"] > 0 and served > PASSES * 12, reader  # the daemon answered, from its caches
    assert status["cache"]["state"] == "normal" and reader["open_files"] == 0 and status["fuse"]["open_files"] == 0
    # `musicfs status` reports the same psutil figure this test watches
    assert abs(status["process"]["rss_bytes"] - proc.memory_info().rss) <= MARGIN, status["process"]
    assert status["process"]["open_fds"] > 0 and status["process"]["threads"] > 1

    mid = max(samples[PASSES // 3: 2 * PASSES // 3])
    last = samples[-3:]
    mib = [round(s / (1 << 20), 1) for s in samples]
    assert max(last) <= mid + MARGIN, f"RSS keeps growing (MiB per pass): {mib}"
    assert daemon.stop() == 0

