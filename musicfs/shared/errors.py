"""One exception tree for the whole daemon; every library's errors are mapped into it."""

from __future__ import annotations

import errno


class MusicFSError(Exception):
    """Base of every error MusicFS raises on purpose."""

    errno = errno.EIO


# --- origins -------------------------------------------------------------
class OriginError(MusicFSError):
    """An origin could not do what was asked. `kind` drives retry policy."""

    kind = "fatal"

    def __init__(self, message: str, *, origin: str = "", path: str = ""):
        super().__init__(message)
        self.origin = origin
        self.path = path


class OriginTransient(OriginError):
    """Worth retrying: timeouts, resets, throttling, 5xx."""

    kind = "transient"


class OriginTimeout(OriginTransient):
    """The origin did not answer within its deadline."""


class OriginNotFound(OriginError):
    kind = "not_found"
    errno = errno.ENOENT


class OriginPermission(OriginError):
    kind = "permission"
    errno = errno.EACCES


class OriginFatal(OriginError):
    """Misconfiguration or a broken origin: retrying will not help."""

    kind = "fatal"


class OriginFileChanged(OriginError):
    """The file at the origin no longer has the identity the catalog recorded."""

    kind = "changed"


class LocalExhaustion(OriginTransient):
    """This process ran out of something (file descriptors): not the origin's fault."""

    errno = errno.EIO


class ShortRead(OriginTransient):
    """The origin returned fewer bytes than the range it was asked for."""


class OriginOffline(OriginTransient):
    """Every origin is down (offline mode): only cached bytes can be served; nothing was attempted."""

    kind = "offline"


class PathEscape(OriginPermission):
    """A path that would leave the origin's root (`..`, outside symlink)."""


# --- cache ---------------------------------------------------------------
class EmptyLibrary(MusicFSError):
    """A first scan found no audio: a mistyped source far more often than an empty library (--allow-empty)."""


class CasError(MusicFSError):
    """The chunk store failed."""


class ChunkMissing(CasError):
    """A chunk the index knows is not on disk."""


class ChunkCorrupt(CasError):
    """A chunk's bytes do not hash to its name; it has been quarantined."""


class CacheFull(CasError):
    """No room for a chunk even after eviction (quota or ENOSPC)."""

    errno = errno.ENOSPC


class CacheUnavailable(CasError):
    """The cache is disabled (passthrough); callers go to the origin."""


class CasIndexError(CasError):
    """The CAS index store (SQLite) failed: the cache is bypassed and the index rebuilt from the chunk files."""


class TooManyOpenFiles(MusicFSError):
    """EMFILE/ENFILE: this request fails with EIO; nothing is marked broken, the next request may succeed."""


# --- metadata ------------------------------------------------------------
class CatalogError(MusicFSError):
    """The SQLite catalog failed."""


class CatalogCorrupt(CatalogError):
    """The catalog file failed its integrity check."""


class StateError(MusicFSError):
    """A state file of the daemon (daemon.json, running.json, daemon.sock) or the state folder itself could not
    be written."""


class SearchIndexError(MusicFSError):
    """The tantivy index failed or is damaged."""


class SearchIndexCorrupt(SearchIndexError):
    """The tantivy index is damaged (bad checksum, missing file, a panic inside tantivy); it is rebuilt."""


# --- configuration -------------------------------------------------------
class ConfigError(MusicFSError):
    """A bad config key or argument; `key` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class BadArgument(ConfigError):
    """A bad command-line argument; `key` is the flag (e.g. `--cache-size`). The CLI exits 2 for it."""
