"""Damaged files are moved aside with a timestamp, never deleted; the clean-shutdown marker; private state.

Used by the storage modules (catalog, index, cas) and the library; imports nothing from musicfs.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time

log = logging.getLogger(__name__)


def stamp() -> str:
    """A sortable local timestamp for names: 20251121T174501."""
    return time.strftime("%Y%m%dT%H%M%S")


def move_aside(path: str, companions: tuple[str, ...] = (), tag: str = "damaged") -> str:
    """Rename `path` to `<path>.<tag>-<timestamp>` (plus a counter if taken); companions (e.g. SQLite's
    -wal and -shm files) follow it under the same name plus their own suffix. Returns the new path.
    Raises OSError if `path` itself cannot be moved."""
    base = f"{path}.{tag}-{stamp()}"
    dest, n = base, 1
    while os.path.lexists(dest) or any(os.path.lexists(dest + c) for c in companions):
        n += 1
        dest = f"{base}.{n}"
    for suffix in companions:  # first: a WAL left beside a new database would be replayed into it
        if os.path.lexists(path + suffix):
            os.rename(path + suffix, dest + suffix)
    os.rename(path, dest)
    return dest


PRIVATE_UMASK = 0o077  # state and cache are the user's alone: folders 0700, files 0600


def private_state(*folders: str) -> str | None:
    """Make this process create private files (umask 0o077), and take group and other permissions away from
    `folders` and everything in them: the state and cache of a library made before they were private showed
    the catalog and every cached track to any local user. Symlinks are neither followed nor changed.

    Logs one line saying what was tightened (and what could not be) and returns it; None when all was private.
    """
    os.umask(PRIVATE_UMASK)
    counts = {"folders": 0, "files": 0}
    failed: list[str] = []
    for top in folders:
        for root, _, names in os.walk(top):
            for path in [root, *(os.path.join(root, n) for n in names)]:
                try:
                    st = os.lstat(path)
                    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
                        continue
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
                except FileNotFoundError:
                    continue  # went away meanwhile
                except OSError as exc:
                    failed.append(f"{path}: {exc.strerror}")
                    continue
                counts["folders" if stat.S_ISDIR(st.st_mode) else "files"] += 1
    if not (counts["folders"] or counts["files"] or failed):
        return None
    line = (f"made {', '.join(folders)} private: {counts['folders']} folders and {counts['files']} files were open "
            f"to other users; group and other permissions removed (folders 0700, files 0600)")
    if failed:
        line += f"; {len(failed)} could not be changed (first: {failed[0]})"
    log.warning("%s", line)
    return line


_KINDS = {stat.S_IFREG: "a file", stat.S_IFDIR: "a folder", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symlink",
          stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def clear_odd(path: str, want: int = stat.S_IFREG) -> str | None:
    """When something other than `want` (stat.S_IFREG, S_IFSOCK) sits at `path` — a folder where the daemon
    keeps a file, a file where its socket goes — move it aside like damaged state and log one line.

    Returns where it went, None when `path` is absent or of the right type. Raises OSError if it cannot be
    moved (or looked at).
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_IFMT(mode) == want:
        return None
    dest = move_aside(path)
    log.warning("%s is %s, not %s: moved to %s", path, _KINDS.get(stat.S_IFMT(mode), "something odd"),
                _KINDS[want], dest)
    return dest


class RunMarker:
    """`<state_dir>/running.json` exists while a process uses the library; a clean close removes it.

    Found at start with a dead owner, it means the previous run stopped uncleanly (kill -9, power loss):
    the caller then runs full integrity checks instead of quick ones.
    """

    NAME = "running.json"

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, self.NAME)
        self.owned = False

    def read(self) -> dict | None:
        try:
            with open(self.path) as fh:
                info = json.load(fh)
            return info if isinstance(info, dict) else {"pid": None}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": None}  # unreadable: it exists, so the last run did not finish cleanly

    def live_owner(self) -> int | None:
        """The pid of another live process that holds the marker, if any."""
        info = self.read()
        pid = info.get("pid") if info else None
        if isinstance(pid, int) and pid != os.getpid() and pid_is_musicfs(pid):
            return pid
        return None

    def begin(self) -> dict | None:
        """Take the marker. Returns the previous run's info when it did not stop cleanly, else None.

        When another live process holds the marker (a `musicfs scan` beside a mount), it is left alone.
        """
        info = self.read()
        if self.live_owner() is not None:
            return None
        if info is not None and info.get("pid") == os.getpid():
            info = None  # this process opened the library before and has not closed it: not a crash
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            clear_odd(self.path)  # a folder there would make every start look unclean, forever
            with open(tmp, "w") as fh:
                json.dump({"pid": os.getpid(), "started_at": time.time()}, fh)
            os.replace(tmp, self.path)
        except OSError:
            return info  # a state folder that cannot be written fails loudly where it matters (the catalog)
        self.owned = True
        return info

    def end(self) -> None:
        """A clean stop: remove the marker if it is ours."""
        if not self.owned:
            return
        info = self.read()
        if info is not None and info.get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except OSError:
                pass  # at worst the next start runs the full checks
        self.owned = False


def pid_is_musicfs(pid: int) -> bool:
    """True when `pid` is a live process whose command line mentions musicfs (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"musicfs" in fh.read()
    except OSError:
        return False


# SQLite result codes (the low byte of an extended code)
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT = 5, 6, 8, 10, 11
SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 13, 14, 26


def sqlite_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def sqlite_corruption(exc: BaseException) -> bool:
    """True when a sqlite3 error says the file is damaged (SQLITE_CORRUPT / SQLITE_NOTADB), not that
    the disk or the permissions failed."""
    code = sqlite_code(exc)
    if code is not None:
        return code in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def ro_uri(path: str) -> str:
    """A SQLite URI that reads `path` without writing anything beside it.

    `mode=ro` alone still creates -wal and -shm files; when neither exists the last writer closed cleanly
    and everything is in the main file, so `immutable=1` reads it without locks or side files.
    """
    from urllib.parse import quote

    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    if not (os.path.exists(path + "-wal") or os.path.exists(path + "-shm")):
        uri += "&immutable=1"
    return uri
