"""One library's state folder, as the commands that do not run the daemon see it (trio-free, cheap to import).

- where libraries live (`$XDG_STATE_HOME/musicfs/<library id>`) and which one a command means when none is
  named (`find_library`: the only one, else the only live one when the caller can tell);
- the names of the daemon's files in it: daemon.json (where its pieces are), running.json (held while a
  process uses the library), daemon.sock (its status socket);
- whether a recorded pid is still a musicfs process (`pid_alive`);
- reading SQLite files without writing anything beside them (`ro_uri`, `ro_connect`);
- one human size formatter (`human_size`: 1536 -> '1.5 KiB').

Which library a path is in: a live mount says so in the mount table (its source is `musicfs:<state folder>`),
else the libraries under the base are asked where they were last mounted.

Used by status, fsck, the command line, control (the daemon's side) and damage (the run marker); imports
nothing from musicfs but errors, config and the mount table reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from .config import xdg_dir
from .errors import MusicFSError
from .mountinfo import mount_entries

STATE_FILE = "daemon.json"  # written by the daemon (musicfs.daemon.control): pid, mountpoint, sources, cache_dir
RUNNING_FILE = "running.json"  # held while a process uses the library (musicfs.shared.damage.RunMarker)
SOCKET_NAME = "daemon.sock"  # the daemon's status socket (mode 0600)
LOCK_FILE = "daemon.lock"  # flock()ed by the one daemon of the library for its whole life; says its pid, mountpoint
CATALOG_FILE = "catalog.db"
INDEX_DIR = "index"
# any of these in a folder under the base makes it a library (a scan leaves the first two, a mount all)
LIBRARY_MARKERS = (INDEX_DIR, CATALOG_FILE, STATE_FILE, SOCKET_NAME)


class LibraryNotFound(MusicFSError):
    """No library, or several, where a command needs exactly one."""

    def __init__(self, message: str, base: Path, libraries: list[Path]):
        super().__init__(message)
        self.base = base
        self.libraries = libraries


class NoLibrary(LibraryNotFound):
    """Nothing was ever scanned or mounted under the base."""


class SeveralLibraries(LibraryNotFound):
    """More than one library, and nothing says which one is meant."""


# -- where libraries live -------------------------------------------------------------------------------------
def state_base() -> Path:
    """$XDG_STATE_HOME/musicfs (default ~/.local/state/musicfs): one folder per library below it."""
    return xdg_dir("XDG_STATE_HOME", ".local/state") / "musicfs"


def cache_base() -> Path:
    """$XDG_CACHE_HOME/musicfs (default ~/.cache/musicfs): one cache folder per library below it."""
    return xdg_dir("XDG_CACHE_HOME", ".cache") / "musicfs"


def is_library(folder: Path) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in LIBRARY_MARKERS)


def libraries(base: Path | None = None) -> list[Path]:
    """Every library's state folder under `base` (default: state_base()), sorted."""
    base = state_base() if base is None else base
    return sorted(p for p in base.glob("*") if is_library(p)) if base.is_dir() else []


def find_library(live: Callable[[Path], bool] | None = None, base: Path | None = None) -> str:
    """The state folder of the only library under `base`; with several, the only one `live` says is
    running. Raises NoLibrary or SeveralLibraries (whose message lists them) otherwise."""
    base = state_base() if base is None else base
    libs = libraries(base)
    if not libs:
        raise NoLibrary(f"no library found under {base}: mount or scan one first", base, libs)
    if len(libs) == 1:
        return str(libs[0])
    running = [p for p in libs if live(p)] if live is not None else []
    if len(running) == 1:
        return str(running[0])
    raise SeveralLibraries(f"{len(libs)} libraries under {base}; choose one with --state-dir: "
                           + ", ".join(map(str, libs)), base, libs)


#: A mount's source in the mount table names the state folder it serves: `musicfs:<state folder>`.
FSNAME_PREFIX = "musicfs:"


def fsname(state_dir: str) -> str:
    """The mount's source for the mount table (FUSE's fsname option: commas and backslashes escaped)."""
    return FSNAME_PREFIX + os.path.abspath(state_dir).replace("\\", "\\\\").replace(",", "\\,")


def mounted_library(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The state folder of the live musicfs mount at `path` or above it, as its entry in the mount table says
    (whatever --state-dir its daemon was given, whoever runs it); None when no such mount says one."""
    wanted = {os.path.abspath(path), os.path.realpath(path)}
    best, best_len = None, -1
    for entry in mount_entries(mountinfo):
        if entry.fstype != "fuse.musicfs" or not entry.source.startswith(FSNAME_PREFIX):
            continue
        point = entry.mountpoint
        if any(w == point or w.startswith(point.rstrip("/") + "/") for w in wanted) and len(point) >= best_len:
            best, best_len = entry.source[len(FSNAME_PREFIX):], len(point)  # the last of stacked mounts wins
    return best if best is not None and is_library(Path(best)) else None


def library_for_path(path: str, base: Path | None = None) -> str:
    """The state folder of the library mounted (or last mounted) at `path` or above it: `path` may be the
    mountpoint or any file or folder inside the mount. A live mount says it in the mount table (any state
    folder); else the libraries under `base` are asked where they were last mounted, compared as written
    (absolute) and as realpaths, without touching the mount itself. Raises NoLibrary naming the mountpoints known
    under `base` otherwise."""
    live = mounted_library(path)
    if live is not None:
        return live
    base = state_base() if base is None else base
    wanted = {os.path.abspath(path), os.path.realpath(path)}
    best, best_len, known = None, -1, []
    for lib in libraries(base):
        mountpoint = recorded_mountpoint(str(lib))
        if not mountpoint:
            continue
        known.append(mountpoint)
        for point in {os.path.abspath(mountpoint), os.path.realpath(mountpoint)}:
            if any(w == point or w.startswith(point.rstrip("/") + "/") for w in wanted) and len(point) > best_len:
                best, best_len = str(lib), len(point)
    if best is None:
        raise NoLibrary(f"no library under {base} is mounted at {path} or above it (known mountpoints: "
                        f"{', '.join(known) or 'none'})", base, libraries(base))
    return best


def read_daemon_info(state_dir: str, problems: list[str] | None = None) -> dict:
    """daemon.json (where the last daemon kept its pieces), or {} when it is missing or unreadable (then,
    when `problems` is given, one line saying why is added to it)."""
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return {}  # scanned but never mounted
    except (OSError, ValueError) as exc:
        if problems is not None:
            problems.append(f"{path}: {exc}")
        return {}
    return info


def recorded_mountpoint(state_dir: str) -> str:
    """Where the last daemon of this library mounted it ('' when it was only ever scanned)."""
    return read_daemon_info(state_dir).get("mountpoint") or ""


def cache_dir_of(state_dir: str) -> str:
    """The library's cache folder: what the daemon recorded in daemon.json, else the default one
    ($XDG_CACHE_HOME/musicfs/<library id>, the state folder's own name)."""
    recorded = read_daemon_info(state_dir).get("cache_dir")
    if isinstance(recorded, str) and recorded:
        return os.path.abspath(recorded)
    return str(cache_base() / os.path.basename(os.path.abspath(state_dir)))


def folder_size(folder: str) -> int:
    """Bytes of the files under `folder` (0 when it is gone)."""
    total = 0
    for here, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(here, name)).st_size
            except OSError:
                pass
    return total


def holds_nothing(state_dir: str) -> bool:
    """Whether a library's state folder holds nothing worth keeping: never mounted (no daemon.json) and no file
    in its catalog (a first scan cut short keeps what it committed, for the next start to resume from)."""
    if os.path.exists(os.path.join(state_dir, STATE_FILE)):
        return False
    try:
        with contextlib.closing(ro_connect(os.path.join(state_dir, CATALOG_FILE))) as db:
            return not db.execute("SELECT 1 FROM files LIMIT 1").fetchone()
    except FileNotFoundError:
        return True
    except sqlite3.Error:
        return False  # unreadable: not ours to judge empty


def forget_folders(folders: list[str]) -> None:
    """Remove these folders of a library (its state, its cache) and all they hold; a folder that is gone already
    is no error, one that cannot be removed is logged."""
    for folder in folders:
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logging.getLogger(__name__).warning("could not remove %s: %s", folder, exc)


# -- processes ------------------------------------------------------------------------------------------------
def pid_alive(pid) -> bool:
    """True when `pid` (as read from a state file: anything) is a live process whose command line mentions
    musicfs; a recycled pid running something else is not our daemon."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"musicfs" in fh.read()
    except OSError:
        return False


# -- one daemon per library ---------------------------------------------------------------------------------
class LibraryBusy(MusicFSError):
    """Another daemon holds the library (its state folder's lock)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class LibraryLock:
    """An exclusive flock() on `<state dir>/daemon.lock`, held while the daemon lives.

    The kernel drops it when the process ends however it ends (kill -9 too), so a stale lock never blocks: the
    file left behind is only read for the message. What it holds (pid, mountpoint, sources) is written after
    the lock is taken and says who holds it to a daemon that is refused.
    """

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self, info: dict) -> "LibraryLock":
        """Take the lock or raise LibraryBusy naming the holder's pid and mountpoint (waits for nothing)."""
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            from .errors import StateError

            folder = os.path.dirname(self.path)
            why = not_writable(folder) if os.path.isdir(folder) else None
            if why:
                raise StateError(f"the state folder {folder} is {why}: cannot create the lock {self.path}") from exc
            raise StateError(f"cannot create the lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_lock_info(os.path.dirname(self.path))
            doing = (f"mounted by musicfs pid {holder.get('pid', '?')} on {holder.get('mountpoint') or '?'}"
                     if holder.get("mountpoint") else f"being scanned by musicfs pid {holder.get('pid', '?')}")
            raise LibraryBusy(
                f"this library is already {doing} (lock {self.path}); stop that process first "
                f"(or give this one its own --state-dir for a different library)", holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**info, "pid": os.getpid(), "started_at": time.time()}).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def read_lock_info(state_dir: str) -> dict:
    """What the lock file says about its (last) holder; {} when it is missing or unreadable."""
    try:
        with open(os.path.join(state_dir, LOCK_FILE), encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


# -- SQLite, read-only ----------------------------------------------------------------------------------------
def ro_uri(path: str) -> str:
    """A SQLite URI that reads `path` without writing anything beside it.

    `mode=ro` alone still creates -wal and -shm files (owned by whoever runs `musicfs status`: as root, that
    can lock the daemon's own user out of its database); when neither exists the last writer closed cleanly
    and everything is in the main file, so `immutable=1` reads it without locks or side files. When they
    exist (a writer is active, or was killed), plain `mode=ro` uses them.
    """
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    if not (os.path.exists(path + "-wal") or os.path.exists(path + "-shm")):
        uri += "&immutable=1"
    return uri


def ro_connect(path: str, timeout: float = 1.0) -> sqlite3.Connection:
    """Open an existing database read-only (FileNotFoundError when there is none: never creates one)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return sqlite3.connect(ro_uri(path), uri=True, timeout=timeout)


# -- figures --------------------------------------------------------------------------------------------------
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n) -> str:
    """Bytes for people: 512 -> '512 B', 1536 -> '1.5 KiB', 10 << 30 -> '10.0 GiB'; '?' for a non-number."""
    if not isinstance(n, (int, float)) or isinstance(n, bool) or n != n:
        return "?"
    for unit in _SIZE_UNITS:
        if abs(n) < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def not_writable(folder: str) -> str | None:
    """Why `folder` cannot be written ("read-only", "not writable by user 1000"), or None when it can (or is
    not there: the caller's error says that)."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only (its file system is mounted read-only)"
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"not writable by this user (uid {os.geteuid()})"
    return None
