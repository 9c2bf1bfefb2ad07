"""`musicfs status`: ask the running daemon over its socket, or read what its files say when it is not running.

Protocol: the daemon listens on `<state_dir>/daemon.sock` (mode 0600); a client connects, reads to EOF and
gets one JSON object (see `musicfs.daemon.control` and docs/systemd.md). Without a daemon the status comes from the
files, opened read-only: `<state_dir>/daemon.json` (where the last daemon kept its pieces),
`<state_dir>/catalog.db` (tracks, last scan) and `<cache_dir>/index.db` (cache usage).

Exit codes, like `systemctl status`: 0 the daemon answered (running or stopping), 3 not running
(stopped, or started but not serving yet), 1 an error (no answer in time, ambiguous library, no such folder).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import sys
import time
from contextlib import closing
from pathlib import Path

from .. import __version__
from ..cache import cache_usage
from ..shared import (
    SOCKET_NAME,
    CasIndexError,
    MusicFSError,
    human_size,
    libraries,
    pid_alive,
    read_daemon_info,
    redact_all,
    ro_connect,
    state_base,
)

EXIT_RUNNING = 0
EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3

MAX_ANSWER = 16 << 20  # a status document is a few KiB; anything this big is not one
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes including the NUL


class StatusError(MusicFSError):
    """The status could not be determined."""


class DaemonUnresponsive(StatusError):
    """Something holds the socket but gave no complete answer in time."""


# -- asking the daemon ----------------------------------------------------------------------------------
def _connect(sock: socket.socket, path: str) -> None:
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        sock.connect(path)
        return
    # too long for sockaddr_un: go through an O_PATH descriptor of the folder
    dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
    finally:
        os.close(dirfd)


def query_daemon(state_dir: str, timeout: float = 2.0, request: dict | None = None) -> dict | None:
    """The running daemon's status document (or its answer to `request`, see musicfs.daemon.control), or None when
    no daemon listens (no socket, refused, stale).

    Raises DaemonUnresponsive when the connection is accepted (or hangs) but no complete answer arrives
    within `timeout` seconds in total, StatusError for anything else that is wrong (permission, garbage).
    """
    path = os.path.join(state_dir, SOCKET_NAME)
    if not _socket_exists(path):
        return None
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        if not _connect_to_daemon(sock, path, timeout):
            return None
        _send_request(sock, path, request)
        answer = _read_answer(sock, path, deadline, timeout)
    return _parse_answer(answer, path)


def _send_request(sock: socket.socket, path: str, request: dict | None) -> None:
    """Send the request line (if any), then close our side: the daemon answers at once."""
    try:
        if request is not None:
            sock.sendall(json.dumps(request).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
    except TimeoutError as exc:
        raise DaemonUnresponsive(f"the daemon at {path} did not take the request in time") from exc
    except OSError:
        pass  # it answered and closed already (or went away): reading says which


def _socket_exists(path: str) -> bool:
    """False when there is no socket file, or something else sits there (no daemon listens on a folder: the
    next start moves it aside, status_from_files reports it); StatusError when it cannot be seen."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StatusError(f"cannot look at {path}: {exc.strerror}") from exc
    return True


def _connect_to_daemon(sock: socket.socket, path: str, timeout: float) -> bool:
    """Connect to the daemon's socket; False when no daemon listens on it."""
    try:
        _connect(sock, path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # a socket file left by a daemon that died, or it just went away
    except PermissionError as exc:
        raise StatusError(f"cannot connect to {path}: permission denied (run as the daemon's user)") from exc
    except (TimeoutError, BlockingIOError) as exc:  # backlog full: the daemon is not accepting
        raise DaemonUnresponsive(f"the daemon at {path} did not accept within {timeout:g}s") from exc
    except OSError as exc:
        raise StatusError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    return True


def _read_answer(sock: socket.socket, path: str, deadline: float, timeout: float) -> bytes:
    """Everything the daemon sends until EOF, within the one deadline and at most MAX_ANSWER bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DaemonUnresponsive(f"the daemon at {path} did not answer within {timeout:g}s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError as exc:
            raise DaemonUnresponsive(f"the daemon at {path} did not answer within {timeout:g}s") from exc
        except OSError as exc:
            raise StatusError(f"reading from {path}: {exc.strerror or exc}") from exc
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        size += len(data)
        if size > MAX_ANSWER:
            raise StatusError(f"the answer from {path} is larger than {MAX_ANSWER} bytes")


def _parse_answer(answer: bytes, path: str) -> dict:
    try:
        doc = json.loads(answer)
    except ValueError as exc:
        raise StatusError(f"the daemon at {path} sent something that is not JSON ({len(answer)} bytes)") from exc
    if not isinstance(doc, dict):
        raise StatusError(f"the daemon at {path} sent JSON that is not an object")
    return doc


# -- reading the files ----------------------------------------------------------------------------------
def _mounted(path) -> bool:
    if not isinstance(path, str) or not path:
        return False
    from ..daemon import mount_entry

    try:
        return mount_entry(path) is not None  # reads /proc/self/mountinfo; never touches the mount itself
    except OSError:
        return False


def status_from_files(state_dir: str) -> dict:
    """What the files of a library say when no daemon answers. Never writes anything."""
    doc: dict = {
        "state": "stopped", "pid": None, "version": __version__, "state_dir": os.path.abspath(state_dir),
        "mountpoint": None, "sources": [], "tracks": None, "last_scan": None, "started_at": None,
        "cache": {"dir": None, "used_bytes": None, "quota_bytes": None, "chunks": None, "state": None},
        "mounted": False, "problems": [],
    }
    problems: list[str] = doc["problems"]
    info = read_daemon_info(state_dir, problems)
    doc["mountpoint"] = info.get("mountpoint")
    doc["sources"] = list(info.get("sources") or [])
    doc["started_at"] = info.get("started_at")
    doc["cache"]["dir"] = info.get("cache_dir")
    doc["cache"]["quota_bytes"] = info.get("cache_size")
    sock = os.path.join(state_dir, SOCKET_NAME)
    if os.path.lexists(sock) and not stat.S_ISSOCK(os.lstat(sock).st_mode):
        problems.append(f"{sock} is not a socket: the next start of the daemon moves it aside")
    _add_catalog_facts(doc, os.path.join(state_dir, "catalog.db"))
    _add_cache_usage(doc)
    _add_process_state(doc, info.get("pid"))
    return doc


def _add_catalog_facts(doc: dict, catalog: str) -> None:
    """Track count and last completed scan, from the catalog."""
    try:
        with closing(ro_connect(catalog)) as db:
            doc["tracks"] = db.execute("SELECT count(*) FROM files WHERE kind = 'track'").fetchone()[0]
            row = db.execute("SELECT value FROM scan_state WHERE key = 'completed_at'").fetchone()
            if row and row[0]:
                doc["last_scan"] = float(row[0])
    except FileNotFoundError:
        doc["problems"].append(f"no catalog at {catalog}: never scanned")
    except (sqlite3.Error, ValueError) as exc:
        doc["problems"].append(f"catalog {catalog}: {exc}")


def _add_cache_usage(doc: dict) -> None:
    """Bytes and chunks held, from the cache index (when daemon.json said where the cache is)."""
    cache_dir = doc["cache"]["dir"]
    if not (isinstance(cache_dir, str) and cache_dir):
        return
    try:
        held = cache_usage(cache_dir)
    except CasIndexError as exc:
        doc["problems"].append(str(exc))
        return
    doc["cache"].update(used_bytes=held.used_bytes, chunks=held.chunks)
    if held.indexed:
        doc["cache"].update(quarantine_bytes=held.quarantine_bytes, quarantine_files=held.quarantine_files)


def _add_process_state(doc: dict, pid) -> None:
    """'starting' when the recorded daemon process lives; a stale mount is a problem."""
    alive = pid_alive(pid)
    doc["mounted"] = _mounted(doc["mountpoint"])
    if alive:
        doc["state"], doc["pid"] = "starting", pid  # the process exists but its socket does not answer yet
    elif doc["mounted"]:
        doc["problems"].append(f"{doc['mountpoint']} is still mounted but no daemon runs (stale mount): "
                               f"fusermount3 -uz {doc['mountpoint']}")


# -- rendering ------------------------------------------------------------------------------------------
def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m)
    return " ".join(parts[:2]) if parts else f"{s}s"


def _when(epoch) -> str:
    if not isinstance(epoch, (int, float)):
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) + f" ({_duration(time.time() - epoch)} ago)"


def _published_text(published: dict) -> str:
    """Where the catalog came from when a published snapshot made it, and what its revalidation re-read."""
    text = (f"from the snapshot {str(published.get('snapshot', '?'))[:12]} published at {published.get('origin', '?')} "
            f"{_when(published.get('published_at'))} ({published.get('files', '?')} files)")
    if published.get("revalidated"):
        return text + f"; revalidated, {published.get('reread', 0)} files re-read"
    return text + "; revalidating"


def _columns(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def render_table(status: dict) -> str:
    """Aligned `key  value` lines, then the origins, tasks and counters sections when present."""
    rows = _summary_rows(status)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += _origin_lines(status)
    lines += _task_lines(status)
    lines += _record_lines(status, "reader")
    lines += _record_lines(status, "fuse")
    lines += _pin_lines(status)
    problems = status.get("problems") or []
    if problems:
        lines.append("problems:")
        lines += [f"  {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _summary_rows(status: dict) -> list[tuple[str, str]]:
    """The `key  value` rows, starting with the state line."""
    rows: list[tuple[str, str]] = [("state", _state_line(status))]
    if status.get("version"):
        rows.append(("version", str(status["version"])))
    if status.get("mountpoint"):
        rows.append(("mountpoint", str(status["mountpoint"])))
    if status.get("sources"):
        rows.append(("sources", ", ".join(map(str, status["sources"]))))
    if status.get("state_dir"):
        rows.append(("state dir", str(status["state_dir"])))
    if "tracks" in status:
        rows.append(("tracks", "?" if status["tracks"] is None else str(status["tracks"])))
    if "last_scan" in status:
        rows.append(("last scan", _when(status.get("last_scan"))))
    published = status.get("published")
    if isinstance(published, dict):
        rows.append(("catalog", _published_text(published)))
    cache = status.get("cache")
    if isinstance(cache, dict):
        rows.append(("cache", _cache_text(cache)))
    process = status.get("process")
    if isinstance(process, dict):
        rows.append(("process", _process_text(process)))
    if "degraded" in status:
        rows.append(("degraded", ", ".join(map(str, status.get("degraded") or [])) or "no"))
    return rows


def _state_line(status: dict) -> str:
    state = str(status.get("state", "unknown"))
    extra = []
    if status.get("pid"):
        extra.append(f"pid {status['pid']}")
    if status.get("uptime_s") is not None:
        extra.append(f"up {_duration(status.get('uptime_s'))}")
    head = state + (f" ({', '.join(extra)})" if extra else "")
    if status.get("offline"):
        head += "; OFFLINE: every origin is down, cached files only"
    return head


def _cache_text(cache: dict) -> str:
    used, quota, chunks = cache.get("used_bytes"), cache.get("quota_bytes"), cache.get("chunks")
    text = f"{human_size(used)} of {human_size(quota)}" if quota is not None else human_size(used)
    text += f" ({'?' if used is None else used} bytes, {'?' if chunks is None else chunks} chunks)"
    if cache.get("quarantine_files"):
        text += f", quarantine {cache['quarantine_files']} files ({human_size(cache.get('quarantine_bytes'))})"
    if cache.get("state"):
        text += f", {cache['state']}"
    return text


def _process_text(process: dict) -> str:
    def count(key):
        return "?" if process.get(key) is None else str(process[key])
    return f"RSS {human_size(process.get('rss_bytes'))}, {count('open_fds')} open fds, {count('threads')} threads"


def _origin_lines(status: dict) -> list[str]:
    origins = [o for o in status.get("origins") or [] if isinstance(o, dict)] \
        if isinstance(status.get("origins"), list) else []
    if not origins:
        return []
    return ["origins:"] + _columns([[str(o.get("name", "?")), str(o.get("state", "?")), _sessions_text(o.get("sessions")),
                                     str(o.get("last_error") or "")] for o in origins])


def _sessions_text(sessions) -> str:
    """An origin's own connections (SessionStatistics), when it keeps any: '2 sessions (5 started, 1 replaced)'."""
    if not isinstance(sessions, dict):
        return ""
    live, started, replaced = (sessions.get(k, "?") for k in ("sessions", "started", "replaced"))
    return f"{live} session{'' if live == 1 else 's'} ({started} started, {replaced} replaced)"


def _record_lines(status: dict, key: str) -> list[str]:
    """One statistics record (ReaderStatistics, OperationsStatistics) as `name  value` lines."""
    record = status.get(key)
    if not isinstance(record, dict) or not record:
        return []
    return [f"{key}:"] + _columns([[str(k), str(v)] for k, v in record.items()])


def _pin_lines(status: dict) -> list[str]:
    """The pins (PinsStatistics): one line each with its progress, then the worker's state."""
    pins = status.get("pins")
    if not isinstance(pins, dict) or not pins.get("pins"):
        return []
    rows = [[str(p.get("path")), f"{p.get('tracks', 0)} tracks",
             f"{human_size(p.get('cached_bytes', 0))}/{human_size(p.get('bytes', 0))}", str(p.get("state", "?"))]
            for p in pins["pins"] if isinstance(p, dict)]
    worker = str(pins.get("worker", "?")) + (f" ({pins['reason']})" if pins.get("reason") else "")
    over = [p for p in pins["pins"] if isinstance(p, dict) and p.get("state") == "over_quota"]
    warnings = [f"  warning: {p.get('path')}: {p.get('left_out', 0)} files do not fit in the pins' share of the "
                "cache quota and are not kept (a bigger --cache-size, or fewer pins)" for p in over]
    return ["pins:"] + _columns(rows) + [f"  fetcher: {worker}"] + warnings


def _task_lines(status: dict) -> list[str]:
    tasks = status.get("tasks") if isinstance(status.get("tasks"), dict) else {}
    task_rows = [[str(name), str(t.get("state", "?")), f"failures {t.get('failures', 0)}",
                  f"restarts {t.get('restarts', 0)}", str(t.get("last_error") or "")]
                 for name, t in sorted(tasks.items()) if isinstance(t, dict)]
    if not task_rows:
        return []
    return ["tasks:"] + _columns(task_rows)


# -- every library ---------------------------------------------------------------------------------------
def library_status(state_dir: str, timeout: float = 2.0) -> tuple[dict, int]:
    """One library's status document (from its daemon, else from its files) and its exit code."""
    try:
        doc = query_daemon(state_dir, timeout)
    except DaemonUnresponsive as exc:
        doc = status_from_files(state_dir)
        doc["state"] = "unresponsive"
        doc["problems"].insert(0, str(exc))
        return doc, EXIT_ERROR
    except StatusError as exc:
        doc = status_from_files(state_dir)
        doc["state"] = "unknown"
        doc["problems"].insert(0, str(exc))
        return doc, EXIT_ERROR
    if doc is None:
        return status_from_files(state_dir), EXIT_NOT_RUNNING
    return doc, EXIT_RUNNING


def all_libraries(libs: list[Path], timeout: float = 2.0) -> tuple[list[dict], int]:
    """Every library's document (each with its `state_dir`), and the listing's exit code: 1 when one could not
    be determined, else 0 (a stopped library in the list is no failure of the listing: 3 is for the one
    library asked about)."""
    docs, codes = [], []
    for lib in libs:
        doc, code = library_status(str(lib), timeout)
        doc.setdefault("state_dir", str(lib))
        docs.append(doc)
        codes.append(code)
    return docs, EXIT_ERROR if EXIT_ERROR in codes else EXIT_RUNNING


def render_libraries(docs: list[dict]) -> str:
    """One row per library: state, pid, tracks, mountpoint, sources, state folder."""
    rows = [["STATE", "PID", "TRACKS", "MOUNTPOINT", "SOURCES", "STATE DIR"]]
    for doc in docs:
        rows.append([str(doc.get("state") or "?"), str(doc.get("pid") or "-"),
                     "?" if doc.get("tracks") is None else str(doc["tracks"]), str(doc.get("mountpoint") or "-"),
                     " ".join(map(str, doc.get("sources") or [])) or "-", str(doc.get("state_dir") or "?")])
    lines = _columns(rows, indent="")
    for doc in docs:
        lines += [f"{doc.get('state_dir')}: {p}" for p in doc.get("problems") or []]
    return "\n".join(lines) + "\n"


# -- the command ----------------------------------------------------------------------------------------
def run_status(state_dir: str | None, as_json: bool = False, out=None, timeout: float = 2.0) -> int:
    """One library's full status (`state_dir`, or the only library there is), or with several libraries and
    none named, one row per library (`--json`: a list of their documents). Credentials are never shown."""
    out = sys.stdout if out is None else out
    if not state_dir:
        base = state_base()
        libs = libraries(base)
        if not libs:
            doc = {"state": "stopped", "state_dir": None,
                   "problems": [f"no library under {base}: mount or scan one first"]}
            out.write(json.dumps(doc, indent=2) + "\n" if as_json else f"not running: {doc['problems'][0]}\n")
            return EXIT_NOT_RUNNING
        if len(libs) > 1:
            docs, code = all_libraries(libs, timeout)
            docs = redact_all(docs)
            out.write(json.dumps(docs, indent=2, sort_keys=True) + "\n" if as_json else render_libraries(docs))
            out.flush()
            return code
        state_dir = str(libs[0])
    if not os.path.isdir(state_dir):
        raise StatusError(f"{state_dir}: no such folder")
    doc, code = library_status(state_dir, timeout)
    if code == EXIT_ERROR and doc.get("state") == "unknown":
        raise StatusError(doc["problems"][0])  # permission, garbage: as before, an error line and exit 1
    doc = redact_all(doc)
    out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n" if as_json else render_table(doc))
    out.flush()
    return code
