"""L2, row 4.3: a library mounted from two replicas keeps serving every file when the primary is gone.

The replica is copied without preserving mtimes (`cp -r`), so its identities (mtime) differ from the
catalog's, which the primary's scan wrote. With the primary gone at the next mount, the rescan must wait
for it (a scan of the replica would re-key every cached file), and reads must go to the replica checked
as a replica (the catalog's size, its own stat before and after the read): failing over must not make
the replica the origin whose identities the catalog holds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from musicfs_test_utils.assertions import file_digest
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.mount_io import mount_files_by_size, read_in_child

pytestmark = pytest.mark.l2


def config_file(tmp_path: Path) -> str:
    return str(write_config(tmp_path / "musicfs.toml", read_timeout=10.0, chunk_size="64K", health_interval=0.3,
                            health_timeout=1.0))


@pytest.mark.resilience("4.3")
def test_with_the_primary_gone_a_replica_with_other_mtimes_serves_every_file(library_copy, daemons, tmp_path):
    root, files = library_copy
    replica = tmp_path / "replica"
    subprocess.run(["cp", "-r", str(root), str(replica)], check=True)  # new mtimes, same bytes
    some = files[0].relative_to(root)
    assert os.stat(replica / some).st_mtime_ns != os.stat(files[0]).st_mtime_ns
    digests = {f: file_digest(f) for f in files}

    daemon = daemons([root, replica], extra_args=["--config", config_file(tmp_path)])
    daemon.start()
    daemon.wait_for_mount()  # the first mount scans the primary: the catalog holds its identities
    pairs = mount_files_by_size(daemon.mountpoint, files)
    assert len(pairs) >= 4
    originals = list(pairs)
    cached, uncached = originals[:1], originals[1:]
    for f in cached:
        assert read_in_child(pairs[f])[:2] == ("OK", digests[f])
    assert daemon.stop() == 0

    os.rename(root, root.with_name("library-away"))  # the primary is gone; the replica is there
    daemon.start()
    daemon.wait_for_mount()
    # The background rescan at start probes the origins, finds only the replica, and waits for the primary.
    daemon.wait_for_log("rescans wait for it")
    for f in uncached + cached:
        outcome, code, _ = read_in_child(pairs[f])
        assert (outcome, code) == ("OK", digests[f]), f"{f.name}: the replica has it, got {outcome} {code}"
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "catalog identities are now" not in log  # nothing re-keyed the catalog to the replica
