"""L2, row 6.1: a file larger than the cache quota, read through a real mount and closed, leaves the cache
within its quota (an open file pins only the chunks around where it is read, and a release trims at once)."""

from __future__ import annotations

import json

import pytest

from musicfs.demo import BIG_FILE_PATH
from musicfs.status import query_daemon
from musicfs_test_utils.assertions import file_digest
from musicfs_test_utils.daemon import wait_until
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.mount_io import mount_file_for, read_digest

pytestmark = pytest.mark.l2

QUOTA = 2 << 20


@pytest.mark.resilience("6.1")
def test_a_file_larger_than_the_quota_read_and_closed_leaves_the_cache_within_it(tmp_path, daemons):
    root = tmp_path / "library"
    make_library(root, 1, big_file_mb=6, hostile=False)
    track = root / BIG_FILE_PATH
    config = tmp_path / "musicfs.toml"
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in
                                {"chunk_size": "256K", "cache_size": "2M", "readahead": "1M"}.items()))
    daemon = daemons([root], extra_args=["--config", str(config)])
    daemon.start()
    daemon.wait_for_mount()
    mounted = mount_file_for(daemon.mountpoint, track)
    assert track.stat().st_size > 2 * QUOTA

    assert read_digest(mounted) == file_digest(track)  # read whole in a child process, then closed

    def cache() -> dict:
        doc = query_daemon(str(daemon.state_dir))
        assert doc is not None, "the daemon does not answer on its status socket"
        return doc["cache"]

    wait_until(lambda: cache()["used_bytes"] <= QUOTA, 10, "the cache back within its quota after the close")
    assert cache()["pinned"] == 0
    assert read_digest(mounted) == file_digest(track)  # and it reads right again
    assert daemon.stop() == 0
