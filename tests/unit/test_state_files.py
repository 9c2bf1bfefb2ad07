"""Odd things where the daemon keeps its state files: moved aside with one log line, the start goes on.

`daemon.json` or `running.json` replaced by a folder, `daemon.sock` a folder or a plain file: each is moved to
`<name>.damaged-<timestamp>` like other damaged state (damage.move_aside), and the file or socket is made anew.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import trio

from musicfs.commands.status import query_daemon
from musicfs.daemon.control import (
    SOCKET_NAME,
    STATE_FILE,
    serve_status,
    write_state_file,
)
from musicfs.shared.damage import RunMarker, clear_odd
from musicfs.shared.errors import StateError
from musicfs_test_utils.assertions import assert_logs


def moved(folder, name: str) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.startswith(name + ".damaged-"))


def test_daemon_json_that_is_a_folder_is_moved_aside(tmp_path):
    (tmp_path / STATE_FILE).mkdir()
    (tmp_path / STATE_FILE / "inside").write_text("kept")
    with assert_logs(r"musicfs.shared.damage: .*daemon\.json is a folder, not a file: moved to .*daemon\.json\.damaged-",
                     count=1):
        write_state_file(str(tmp_path), {"mountpoint": "/mnt"})
    assert json.loads((tmp_path / STATE_FILE).read_text())["mountpoint"] == "/mnt"
    [aside] = moved(tmp_path, STATE_FILE)
    assert (tmp_path / aside / "inside").read_text() == "kept"  # moved, never deleted


def test_a_folder_at_the_temp_name_is_moved_aside_too(tmp_path):
    (tmp_path / (STATE_FILE + ".tmp")).mkdir()
    with assert_logs(r"daemon\.json\.tmp is a folder, not a file: moved to", count=1):
        write_state_file(str(tmp_path), {"mountpoint": "/mnt"})
    assert json.loads((tmp_path / STATE_FILE).read_text())["mountpoint"] == "/mnt"
    assert not (tmp_path / (STATE_FILE + ".tmp")).exists()


def test_a_state_file_that_cannot_be_written_is_a_state_error_naming_it(tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(StateError, match=f"cannot write {missing / STATE_FILE}: No such file"):
        write_state_file(str(missing), {})


def test_running_json_that_is_a_folder_is_moved_aside_and_taken(tmp_path):
    (tmp_path / RunMarker.NAME).mkdir()
    marker = RunMarker(str(tmp_path))
    with assert_logs(r"running\.json is a folder, not a file: moved to .*running\.json\.damaged-", count=1):
        assert marker.begin() == {"pid": None}  # it was there and unreadable: the last run did not stop cleanly
    assert marker.owned and json.loads((tmp_path / RunMarker.NAME).read_text())["pid"] == os.getpid()
    assert len(moved(tmp_path, RunMarker.NAME)) == 1
    marker.end()
    assert not (tmp_path / RunMarker.NAME).exists()
    with assert_logs("", count=0):
        assert RunMarker(str(tmp_path)).begin() is None  # and the next start is a clean one


@pytest.mark.parametrize("what", ["folder", "file"])
async def test_daemon_sock_that_is_not_a_socket_is_moved_aside_and_served(tmp_path, what):
    path = tmp_path / SOCKET_NAME
    path.mkdir() if what == "folder" else path.write_text("not a socket")
    async with trio.open_nursery() as nursery:
        with assert_logs(r"daemon\.sock is a (folder|file), not a socket: moved to", count=1) as lines:
            served = await nursery.start(serve_status, str(tmp_path), lambda: {"state": "running"})
        assert stat.S_ISSOCK(os.lstat(served).st_mode)
        assert stat.S_IMODE(os.lstat(served).st_mode) == 0o600
        doc = await trio.to_thread.run_sync(query_daemon, str(tmp_path))
        nursery.cancel_scope.cancel()
    assert doc == {"state": "running"}
    assert len(moved(tmp_path, SOCKET_NAME)) == 1
    assert f"{path} is a {what}, not a socket: moved to {path}.damaged-" in lines[0]


async def test_a_stale_socket_is_replaced_without_a_word(tmp_path):
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, str(tmp_path), lambda: {"n": 1})
        nursery.cancel_scope.cancel()
    stale = trio.socket.socket(trio.socket.AF_UNIX)  # a socket file left by a daemon that died
    await stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    with assert_logs("", count=0):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_status, str(tmp_path), lambda: {"n": 2})
            assert await trio.to_thread.run_sync(query_daemon, str(tmp_path)) == {"n": 2}
            nursery.cancel_scope.cancel()
    assert moved(tmp_path, SOCKET_NAME) == []


def test_clear_odd_leaves_the_right_kind_and_absent_paths_alone(tmp_path):
    (tmp_path / "f").write_text("x")
    assert clear_odd(str(tmp_path / "f")) is None and (tmp_path / "f").read_text() == "x"
    assert clear_odd(str(tmp_path / "absent")) is None
    assert os.listdir(tmp_path) == ["f"]


def test_status_without_a_daemon_reports_a_folder_at_the_socket_as_a_problem(tmp_path):
    import io

    from musicfs.commands.status import EXIT_NOT_RUNNING, run_status

    (tmp_path / "index").mkdir()
    (tmp_path / SOCKET_NAME).mkdir()
    out = io.StringIO()
    assert run_status(str(tmp_path), as_json=True, out=out) == EXIT_NOT_RUNNING
    doc = json.loads(out.getvalue())
    assert doc["state"] == "stopped"
    assert f"{tmp_path / SOCKET_NAME} is not a socket: the next start of the daemon moves it aside" in doc["problems"]
    assert (tmp_path / SOCKET_NAME).is_dir()  # status never writes
