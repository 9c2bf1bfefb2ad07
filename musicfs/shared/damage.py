"""Damaged files are moved aside with a timestamp, never deleted; the clean-shutdown marker; private state.

Used by the storage modules (catalog, index, cas) and the library; imports only musicfs.shared.statefiles (state file
names, the pid check, the read-only SQLite URI).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import time

from .statefiles import RUNNING_FILE, ro_uri  # noqa: F401 - ro_uri: storage modules read it from here
from .statefiles import pid_alive as pid_is_musicfs

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

    A folder that is already private is not walked: nobody else can reach what is in it.
    Logs one line saying what was tightened (and what could not be) and returns it; None when all was private.
    """
    os.umask(PRIVATE_UMASK)
    counts = {"folders": 0, "files": 0}
    failed: list[str] = []
    for top in folders:
        try:
            if not os.lstat(top).st_mode & 0o077:
                continue  # a private folder hides everything in it: no walk of a large cache at every start
        except FileNotFoundError:
            continue
        except OSError:
            pass  # the walk below says what it cannot change
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
    parts = []
    if counts["folders"] or counts["files"]:
        parts.append(f"{counts['folders']} folders and {counts['files']} files were open to other users: group and "
                     f"other permissions removed (folders 0700, files 0600)")
    if failed:
        parts.append(f"{len(failed)} open to other users could not be changed (first: {failed[0]})")
    line = f"private state {', '.join(folders)}: " + "; ".join(parts)
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

    NAME = RUNNING_FILE

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


# -- SQLite write-ahead logs that SQLite would drop without a word -------------------------------------------
# SQLite's recovery of a WAL stops at the first frame whose checksum fails, and ignores the whole log when its
# header is bad: committed transactions vanish silently. `wal_before_open` reads what the log holds by its own
# headers; `wal_dropped` compares that with what SQLite kept (https://www.sqlite.org/fileformat.html#walformat).
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums in little / big endian words
_WAL_VERSION = 3007000


def _wal_checksum(data: bytes, big_endian: bool, s0: int = 0, s1: int = 0) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_before_open(db_path: str) -> tuple[int, str]:
    """(frames of committed transactions `<db>-wal` holds by its frame headers, "") — or (0, what is wrong with
    its header) when SQLite will ignore the whole log. (0, "") without a log. Never raises."""
    wal = db_path + "-wal"
    try:
        with open(wal, "rb") as fh:
            head = fh.read(32)
            if len(head) < 32:
                return 0, f"{len(head)} bytes, shorter than a WAL header" if head else ""
            magic, version, page_size, _, salt1, salt2, c1, c2 = struct.unpack(">8I", head)
            if magic not in _WAL_MAGIC:
                problem = f"bad magic number {magic:#x}"
            elif version != _WAL_VERSION:
                problem = f"unknown format version {version}"
            elif not (512 <= page_size <= 65536 and page_size & (page_size - 1) == 0):
                problem = f"bad page size {page_size}"
            elif _wal_checksum(head[:24], magic & 1 == 1) != (c1, c2):
                problem = "bad header checksum"
            else:
                return _committed_frames(fh, page_size, salt1, salt2), ""
            has_frames = os.fstat(fh.fileno()).st_size > 32
            return 0, problem if has_frames else ""
    except OSError:
        return 0, ""  # cannot even be read: SQLite's own open says what is wrong


def _committed_frames(fh, page_size: int, salt1: int, salt2: int) -> int:
    """Frames up to the last commit frame among those written since the header (same salts, complete)."""
    size = os.fstat(fh.fileno()).st_size
    frames = committed = 0
    while fh.tell() + 24 + page_size <= size:
        header = fh.read(24)
        if struct.unpack(">2I", header[8:16]) != (salt1, salt2):
            break  # the end of this log; frames of an older generation may follow
        fh.seek(page_size, os.SEEK_CUR)
        frames += 1
        if struct.unpack(">I", header[4:8])[0]:  # a commit frame: the transaction before it is complete
            committed = frames
    return committed


def wal_dropped(db, db_path: str, before: tuple[int, str]) -> str | None:
    """After opening `db_path` (connection `db`): what SQLite dropped of its WAL, or None. `before` is what
    wal_before_open said just before the open."""
    frames, problem = before
    if problem:
        return f"{problem}: SQLite ignored the whole log"
    if frames:
        row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        kept = row[1] if row else -1
        if 0 <= kept < frames:
            return f"a damaged frame: SQLite kept {kept} of its {frames} committed frames"
    return None
