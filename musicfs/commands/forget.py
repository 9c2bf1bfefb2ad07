"""`musicfs forget LIBRARY`: remove a stopped library's state and cache, found by state folder, mountpoint or SOURCE."""

from __future__ import annotations

import os
from pathlib import Path

from ..shared import (
    BadArgument,
    LibraryLock,
    cache_dir_of,
    canonical_source,
    folder_size,
    forget_folders,
    human_size,
    is_library,
    libraries,
    library_id,
    read_daemon_info,
    state_base,
)


def find(library: str) -> str:
    """The state folder LIBRARY names: that folder itself, the library last mounted there, or the library of that
    SOURCE (in any spelling of it); BadArgument naming what is known otherwise."""
    if is_library(Path(library)):
        return os.path.abspath(library)
    where = os.path.abspath(library)
    try:
        source = canonical_source(library)
    except ValueError:
        source = ""
    known = libraries()
    for state in map(str, known):
        info = read_daemon_info(state)
        if info.get("mountpoint") and os.path.abspath(info["mountpoint"]) == where:
            return state
        spellings = {library, source} - {""}  # as typed (a library named before sources were canonical), canonical
        if spellings & set(info.get("sources") or []) or os.path.basename(state) in map(library_id, ([s] for s in spellings)):
            return state
    names = ", ".join(f"{os.path.basename(str(s))} ({read_daemon_info(str(s)).get('mountpoint') or 'never mounted'})"
                      for s in known) or "none"
    raise BadArgument("LIBRARY", f"no library is {library!r} (a state folder, a mountpoint or a SOURCE); "
                                 f"libraries under {state_base()}: {names}")


def forget(library: str) -> str:
    """Remove the library's state and cache folders; the line that says what was freed. Refused (naming the pid)
    while a daemon or a scan holds the library."""
    state = find(library)
    cache = cache_dir_of(state)
    lock = LibraryLock(state).acquire({"mountpoint": "", "sources": [], "forgetting": True})  # LibraryBusy if held
    try:
        freed = folder_size(state) + folder_size(cache)
        forget_folders([cache, state])
    finally:
        lock.release()
    return f"forgot {state} and its cache {cache}: {human_size(freed)} freed"
