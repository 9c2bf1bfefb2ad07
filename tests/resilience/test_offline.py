"""L2: offline mode (4.2.3) and starting offline (X.3) on a real mount of a local library.

"Every origin down" is the library folder renamed away (a NAS that is not mounted); "back" is the rename
back. Reads happen in child processes that drop the file's page cache first, so the daemon answers them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from musicfs_test_utils.assertions import file_digest, tree_files
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.mount_io import mount_files_by_size, read_in_child

pytestmark = pytest.mark.l2

READ_TIMEOUT = 10.0  # long on purpose: an offline read that waited for anything would show


def config_file(tmp_path: Path) -> str:
    return str(write_config(tmp_path / "musicfs.toml", read_timeout=READ_TIMEOUT, chunk_size="64K",
                            health_interval=0.3, health_timeout=1.0,
                            # No read-ahead: it fetches the head of the next track, and these tests must know
                            # what is cached.
                            readahead=0))


@pytest.mark.resilience("4.2.3")
def test_with_every_origin_down_cached_files_play_uncached_fail_fast_and_it_recovers(library_copy, daemons, tmp_path):
    root, files = library_copy
    daemon = daemons([root], extra_args=["--config", config_file(tmp_path)])
    daemon.start()
    daemon.wait_for_mount()
    pairs = mount_files_by_size(daemon.mountpoint, files)
    assert len(pairs) >= 6
    originals = list(pairs)
    cached, uncached = originals[::2], originals[1::2]
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", file_digest(f))
    digests = {f: file_digest(f) for f in originals}
    assert daemon.status()["offline"] is False

    os.rename(root, root.with_name("library-away"))  # every origin gone
    eventually(lambda: daemon.status()["offline"], 15, "offline")
    doc = daemon.status()
    assert doc["origins"][0]["state"] == "unhealthy" and "not a directory" in doc["origins"][0]["last_error"]
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", digests[f]), f"{f.name}: cached, must be served offline"
    for f in uncached:
        outcome, code, seconds = read_in_child(pairs[f])
        assert (outcome, code) == ("ERR", "5"), f"{f.name}: {outcome} {code}"
        assert seconds < 1.0, f"{f.name}: an offline read must fail fast, took {seconds:.2f}s"

    os.rename(root.with_name("library-away"), root)  # back, and nothing is restarted
    eventually(lambda: not daemon.status()["offline"], 15, "back online")
    assert daemon.status()["origins"][0]["state"] == "healthy"
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
    pairs = mount_files_by_size(daemon.mountpoint, files)
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
    eventually(lambda: daemon.status()["offline"], 15, "offline")
    assert sorted(str(p.relative_to(daemon.mountpoint)) for p in tree_files(daemon.mountpoint)) == names
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", digests[f])
    outcome, code, seconds = read_in_child(pairs[uncached[0]])
    assert (outcome, code) == ("ERR", "5") and seconds < 1.0

    os.rename(root.with_name("library-away"), root)
    eventually(lambda: not daemon.status()["offline"], 15, "back online")
    assert read_in_child(pairs[uncached[0]])[:2] == ("OK", digests[uncached[0]])
    assert daemon.stop() == 0
