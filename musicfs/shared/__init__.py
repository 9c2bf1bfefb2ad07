"""What every package uses: errors, config, logging and redaction, failpoint names, state files, damage handling, small helpers.

Its public face: what other packages may import from it (`from musicfs.<package> import Name`); its
modules are loaded when a name is first used (PEP 562), so importing one module of the package costs
only that module."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {  # name -> the module of this package that defines it
    "Config": "config", "is_loopback": "config", "load": "config", "parse_address": "config",
    "clear_odd": "damage", "move_aside": "damage", "private_state": "damage", "ro_uri": "damage",
    "RunMarker": "damage", "SQLITE_BUSY": "damage", "SQLITE_CANTOPEN": "damage", "sqlite_code": "damage",
    "sqlite_corruption": "damage", "SQLITE_FULL": "damage", "SQLITE_IOERR": "damage", "SQLITE_LOCKED": "damage",
    "SQLITE_READONLY": "damage", "stamp": "damage", "wal_before_open": "damage", "wal_dropped": "damage",
    "BadArgument": "errors", "CacheFull": "errors", "CacheUnavailable": "errors", "CasError": "errors",
    "CasIndexError": "errors", "CatalogCorrupt": "errors", "CatalogError": "errors", "ChunkCorrupt": "errors",
    "ChunkMissing": "errors", "ConfigError": "errors", "LocalExhaustion": "errors", "MusicFSError": "errors",
    "OriginError": "errors", "OriginFatal": "errors", "OriginFileChanged": "errors", "OriginNotFound": "errors",
    "OriginOffline": "errors", "OriginPermission": "errors", "OriginTimeout": "errors",
    "OriginTransient": "errors", "PathEscape": "errors", "SearchIndexCorrupt": "errors",
    "SearchIndexError": "errors", "ShortRead": "errors", "StateError": "errors", "TooManyOpenFiles": "errors",
    "HistogramStatistics": "latency", "LatencyHistogram": "latency",
    "flush_summaries": "logsetup", "setup_logging": "logsetup",
    "cap_arenas": "memory", "trim_heap": "memory",
    "Progress": "progress",
    "add_secrets": "redaction", "redact": "redaction", "redact_all": "redaction",
    "run_all": "rounds", "TaskFn": "rounds",
    "cache_dir_of": "statefiles", "find_library": "statefiles", "human_size": "statefiles",
    "libraries": "statefiles", "library_for_path": "statefiles", "LibraryLock": "statefiles",
    "LibraryNotFound": "statefiles", "not_writable": "statefiles", "pid_alive": "statefiles",
    "read_daemon_info": "statefiles", "recorded_mountpoint": "statefiles", "ro_connect": "statefiles",
    "SOCKET_NAME": "statefiles", "state_base": "statefiles", "STATE_FILE": "statefiles",
    "nfc": "text", "normalise": "text", "normalise_opt": "text",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .config import Config, is_loopback, load, parse_address
    from .damage import (
        SQLITE_BUSY,
        SQLITE_CANTOPEN,
        SQLITE_FULL,
        SQLITE_IOERR,
        SQLITE_LOCKED,
        SQLITE_READONLY,
        RunMarker,
        clear_odd,
        move_aside,
        private_state,
        ro_uri,
        sqlite_code,
        sqlite_corruption,
        stamp,
        wal_before_open,
        wal_dropped,
    )
    from .errors import (
        BadArgument,
        CacheFull,
        CacheUnavailable,
        CasError,
        CasIndexError,
        CatalogCorrupt,
        CatalogError,
        ChunkCorrupt,
        ChunkMissing,
        ConfigError,
        LocalExhaustion,
        MusicFSError,
        OriginError,
        OriginFatal,
        OriginFileChanged,
        OriginNotFound,
        OriginOffline,
        OriginPermission,
        OriginTimeout,
        OriginTransient,
        PathEscape,
        SearchIndexCorrupt,
        SearchIndexError,
        ShortRead,
        StateError,
        TooManyOpenFiles,
    )
    from .latency import HistogramStatistics, LatencyHistogram
    from .logsetup import flush_summaries, setup_logging
    from .memory import cap_arenas, trim_heap
    from .progress import Progress
    from .redaction import add_secrets, redact, redact_all
    from .rounds import TaskFn, run_all
    from .statefiles import (
        SOCKET_NAME,
        STATE_FILE,
        LibraryLock,
        LibraryNotFound,
        cache_dir_of,
        find_library,
        human_size,
        libraries,
        library_for_path,
        not_writable,
        pid_alive,
        read_daemon_info,
        recorded_mountpoint,
        ro_connect,
        state_base,
    )
    from .text import nfc, normalise, normalise_opt

def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
