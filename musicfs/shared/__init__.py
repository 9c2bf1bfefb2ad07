"""What every package uses: errors, config, logging and redaction, failpoint names, state files, damage handling, small helpers."""

from .. import public_face

# what other packages may import, by the module of this package that defines it
__getattr__, __all__ = public_face(__name__, {
    "config": ["Config", "is_loopback", "library_id", "load", "parse_address"],
    "damage": ["clear_odd", "move_aside", "private_state", "ro_uri", "RunMarker", "SQLITE_BUSY",
        "SQLITE_CANTOPEN", "sqlite_code", "sqlite_corruption", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_LOCKED",
        "SQLITE_READONLY", "stamp", "wal_before_open", "wal_dropped"],
    "errors": ["BadArgument", "CacheFull", "CacheUnavailable", "CasError", "CasIndexError", "CatalogCorrupt",
        "CatalogError", "ChunkCorrupt", "ChunkMissing", "ConfigError", "EmptyLibrary", "LocalExhaustion", "MusicFSError",
        "OriginError", "OriginFatal", "OriginFileChanged", "OriginNotFound", "OriginOffline", "OriginPermission",
        "OriginTimeout", "OriginTransient", "PathEscape", "SearchIndexCorrupt", "SearchIndexError", "ShortRead",
        "StateError", "TooManyOpenFiles"],
    "latency": ["HistogramStatistics", "LatencyHistogram"],
    "logsetup": ["flush_summaries", "setup_logging"],
    "mountinfo": ["mount_entries", "MountEntry"],
    "memory": ["cap_arenas", "trim_heap"],
    "progress": ["Progress"],
    "redaction": ["add_secrets", "redact", "redact_all"],
    "rounds": ["run_all", "TaskFn"],
    "statefiles": ["cache_dir_of", "find_library", "folder_size", "forget_folders", "fsname", "holds_nothing", "human_size", "is_library", "libraries", "library_for_path", "LibraryLock",
        "LibraryNotFound", "not_writable", "pid_alive", "read_daemon_info", "read_lock_info", "recorded_mountpoint", "ro_connect",
        "SOCKET_NAME", "state_base", "STATE_FILE"],
    "sources": ["canonical_source"],
    "text": ["nfc", "normalise", "normalise_opt"],
})
