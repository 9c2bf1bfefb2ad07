"""L2: the real daemon and its state folder — odd things in place of its state files, private permissions."""

from __future__ import annotations

import json
import os
import re

import pytest

from musicfs.control import SOCKET_NAME, STATE_FILE
from musicfs.damage import RunMarker
from musicfs.status import query_daemon
from musicfs_test_utils.assertions import assert_mount_matches_origin

pytestmark = pytest.mark.l2


def test_folders_in_place_of_state_files_are_moved_aside_and_the_daemon_starts(small_library, daemons):
    daemon = daemons([small_library[0]])
    daemon.start()
    daemon.wait_for_mount()
    daemon.stop()
    for name in (STATE_FILE, SOCKET_NAME, RunMarker.NAME):
        if (daemon.state_dir / name).exists():
            (daemon.state_dir / name).unlink()
        (daemon.state_dir / name).mkdir()
        (daemon.state_dir / name / "inside").write_text("kept")
    daemon.start()
    daemon.wait_for_mount()
    assert query_daemon(str(daemon.state_dir))["state"] == "running"  # the status task serves, once
    assert json.loads((daemon.state_dir / STATE_FILE).read_text())["pid"] == daemon.pid
    assert_mount_matches_origin(daemon.mountpoint, small_library[2])
    log = daemon.log_text()
    for name, kind in ((STATE_FILE, "a file"), (SOCKET_NAME, "a socket"), (RunMarker.NAME, "a file")):
        lines = re.findall(rf"WARNING .*/{re.escape(name)} is a folder, not {kind}: moved to (\S+)", log)
        assert len(lines) == 1, f"{name}: {lines}\n{log}"
        assert open(os.path.join(lines[0], "inside")).read() == "kept"
    assert "Traceback" not in log and "task status failed" not in log
    assert daemon.stop() == 0
