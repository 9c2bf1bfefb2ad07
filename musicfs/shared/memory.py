"""Memory that comes back (row 6.10): glibc's malloc arenas capped, and freed memory handed back when idle.

glibc gives every thread that allocates under contention an arena of its own and keeps what was freed in it:
32 concurrent readers (boto3, hashing and cache threads) took the daemon from 84 MB to 381 MB, never lower when
idle. `cap_arenas` (mallopt M_ARENA_MAX, at start, before the threads exist) bounds the arenas; `trim`
(malloc_trim) returns free pages to the system, which the daemon's memory task does once reads have gone quiet.
Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2  # with two arenas RSS levelled at 180-200 MB under 32 readers (measured: bench/memory_soak.py)

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt, libc.malloc_trim  # both are glibc's
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def cap_arenas(arenas: int = ARENAS) -> bool:
    """At most `arenas` malloc arenas from now on; True if the C library took it."""
    libc = _glibc()
    ok = bool(libc and libc.mallopt(M_ARENA_MAX, arenas))
    if not ok:
        log.debug("memory: cannot cap malloc arenas (not glibc)")
    return ok


def trim_heap() -> bool:
    """Hand free heap pages back to the system; True if some were."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))
