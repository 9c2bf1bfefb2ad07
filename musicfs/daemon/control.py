"""The daemon's status socket (<state>/daemon.sock, mode 0600) and its state file (<state>/daemon.json).

Protocol: a client connects and either closes its side at once (or sends nothing for REQUEST_WINDOW
seconds): the answer is the status document; or it sends one request, a JSON object on one line, and closes
its side: the answer is `handle(request)`'s JSON object. Request types (`op`):

- `{"op": "status"}`: the status document (as sending nothing);
- `{"op": "pin", "paths": [tree path, ...]}` / `{"op": "unpin", "paths": [...]}` / `{"op": "pins"}`: see
  musicfs.library.pins; answered `{"ok": true, "pins": [...]}` or `{"ok": false, "error": "..."}`.
Then the daemon closes the connection. Every request is answered: one that is too big (MAX_REQUEST), nested too
deep (MAX_DEPTH), not JSON, or whose handling fails for any reason gets `{"ok": false, "error": "..."}`, and the
socket goes on serving the next client."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import Awaitable, Callable

import trio

from ..shared import SOCKET_NAME, STATE_FILE, StateError, clear_odd

log = logging.getLogger(__name__)

ANSWER_TIMEOUT = 2.0
REQUEST_WINDOW = 0.5  # a client that sends nothing (and does not close its side) gets the status after this
REQUEST_TIMEOUT = 10.0  # a request (a pin: catalog writes) may take this long to be answered
MAX_REQUEST = 1 << 20
MAX_DEPTH = 16  # arrays and objects inside each other; a request needs 2
REQUESTS = ("status", "pin", "unpin", "pins")

Handler = Callable[[dict], Awaitable[dict]]


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


async def _read_request(conn) -> dict | None:
    """The request a client sent (None: it sent nothing); {"op": None, ...} for one that is not JSON."""
    buf = b""
    while b"\n" not in buf and len(buf) <= MAX_REQUEST:
        data = await conn.recv(65536)
        if not data:
            break
        buf += data
    if not buf.strip():
        return None
    line = buf.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        return {"op": None, "error": f"request over {MAX_REQUEST} bytes"}
    return await trio.to_thread.run_sync(parse_request, line)  # up to 1 MiB to look at: off the loop


def parse_request(line: bytes) -> dict:
    """A request line as a JSON object, or {"op": None, "error": ...} saying why it is not one."""
    if nesting(line) > MAX_DEPTH:
        return {"op": None, "error": f"request nested deeper than {MAX_DEPTH} levels"}
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        return {"op": None, "error": "not a JSON request"}
    return request if isinstance(request, dict) else {"op": None, "error": "not a JSON object"}


def nesting(line: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings do not count), as far as deciding
    against MAX_DEPTH needs: it stops counting past it (before json.loads would recurse that deep), and says 0
    when there are too few brackets to get there."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return 0  # cannot nest deeper (counted in C): the common case costs no Python loop
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


async def _answer(request: dict | None, snapshot: Callable[[], dict], handle: Handler | None) -> dict:
    """The answer to one request; whatever goes wrong while it is worked out is that client's error reply."""
    try:
        if request is None or request.get("op") == "status":
            return snapshot()
        op = request.get("op")
        if op not in REQUESTS or handle is None:
            return {"ok": False,
                    "error": request.get("error") or f"unknown request {op!r} (known: {', '.join(REQUESTS)})"}
        return await handle(request)
    except Exception as exc:
        log.warning("status socket: a %r request failed: %s: %s", (request or {}).get("op"), type(exc).__name__, exc)
        return {"ok": False, "error": f"the request failed: {type(exc).__name__}: {exc}"}


async def serve_status(state_dir: str, snapshot: Callable[[], dict], handle: Handler | None = None,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer each connection with one JSON document (the status, or the answer to its request), then close
    it. Runs until cancelled."""
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
                try:
                    conn, _ = await sock.accept()
                except OSError as exc:  # out of descriptors (EMFILE) and the like: the next client may fit
                    log.warning("status socket: cannot accept a client: %s", exc.strerror or exc)
                    await trio.sleep(0.1)
                    continue
                with conn:
                    try:
                        request = None
                        with trio.move_on_after(REQUEST_WINDOW):
                            request = await _read_request(conn)
                        with trio.move_on_after(ANSWER_TIMEOUT if request is None else REQUEST_TIMEOUT):
                            await _send(conn, await _answer(request, snapshot, handle))
                    except OSError as exc:  # the client went away: its problem, not the socket's
                        log.debug("status socket: a client left early (%s)", exc)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


async def _send(conn, answer: dict) -> None:
    payload = json.dumps(answer).encode()
    while payload:
        sent = await conn.send(payload)
        payload = payload[sent:]
