"""The daemon's status socket (<state>/daemon.sock, mode 0600) and its state file (<state>/daemon.json)."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import Callable

import trio

from .damage import clear_odd
from .errors import StateError
from .statefiles import SOCKET_NAME, STATE_FILE

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 2.0


def write_state_file(state_dir: str, info: dict) -> None:
    """Atomically record where this daemon's pieces live, for `musicfs status` without a daemon.

    A folder (or anything but a file) in the way is moved aside first, with one log line."""
    path = os.path.join(state_dir, STATE_FILE)
    tmp = path + ".tmp"
    try:
        clear_odd(path)
        clear_odd(tmp)
        with open(tmp, "w") as fh:
            json.dump({**info, "pid": os.getpid(), "started_at": time.time()}, fh)
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc


async def serve_status(state_dir: str, snapshot: Callable[[], dict],
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer each connection with one JSON document, then close it. Runs until cancelled."""
    path = os.path.join(state_dir, SOCKET_NAME)
    clear_odd(path, stat.S_IFSOCK)  # a folder or a file there is moved aside, with one log line
    if os.path.lexists(path):
        os.unlink(path)  # left by a daemon that died; a live one would own the mount we just took
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(8)
    task_status.started(path)
    try:
        with sock:
            while True:
                conn, _ = await sock.accept()
                with conn, trio.move_on_after(ANSWER_TIMEOUT):
                    payload = json.dumps(snapshot()).encode()
                    while payload:
                        sent = await conn.send(payload)
                        payload = payload[sent:]
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
