"""What the reader keeps: verified chunks in memory (ChunkLRU) and what goes last when the cache evicts (Protection)."""

from __future__ import annotations

import collections
import logging

from ..cache import ChunkCache
from ..library import FileVersion

log = logging.getLogger(__name__)


class ChunkLRU:
    """Verified chunks in memory, bounded by bytes; FUSE's 128 KiB reads hit this."""

    def __init__(self, limit: int):
        self.limit = limit
        self._data: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0

    def get(self, digest: str) -> bytes | None:
        data = self._data.get(digest)
        if data is not None:
            self._data.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if digest in self._data or len(data) > self.limit:
            return
        self._data[digest] = data
        self._bytes += len(data)
        while self._bytes > self.limit:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old)

    def has(self, digest: str) -> bool:
        return digest in self._data

    def discard(self, digest: str) -> None:
        data = self._data.pop(digest, None)
        if data is not None:
            self._bytes -= len(data)

    @property
    def nbytes(self) -> int:
        return self._bytes


NEXT_HEADS = 4  # next tracks whose heads (loaded by read-ahead, not open yet) stay protected


class Protection:
    """The one record of what the reader keeps last to go in the cache (ChunkCache.protect), per file key
    ((id, identity)): the chunks an open file's reader has passed (unpinned behind it), and the head of a next
    track read-ahead loaded. A file's protections end when it is released (`drop`); a head waits for its track
    to be opened (`opened`: the file owns it from then on, until its release), but only the `heads` most recent
    heads not open are kept: an older one is unprotected. Bounded by the open files' chunks and `heads` heads."""

    def __init__(self, cache: ChunkCache, heads: int = NEXT_HEADS):
        self.cache = cache
        self.heads = heads
        self._digests: dict[FileVersion, set[str]] = {}  # file key -> the digests protected for it
        # heads of tracks not open, oldest first
        self._waiting: collections.OrderedDict[FileVersion, None] = collections.OrderedDict()

    def add(self, key: FileVersion, digests) -> None:
        """Protect `digests` for the open file `key` (each once per file) until `drop(key)`."""
        digests = list(digests)
        if not digests:
            return
        held = self._digests.setdefault(key, set())
        for digest in digests:
            if digest not in held:
                held.add(digest)
                self.cache.protection.hold(digest)

    def add_head(self, key: FileVersion, digests) -> None:
        """The head of a next track that is not open: protected until it is opened and released, or until
        `heads` newer heads wait."""
        self.add(key, digests)
        self._waiting[key] = None
        self._waiting.move_to_end(key)
        while len(self._waiting) > self.heads:
            self.drop(next(iter(self._waiting)))

    def opened(self, key: FileVersion) -> None:
        """The file was opened: its head (if one waits) is the file's now, dropped at its release."""
        self._waiting.pop(key, None)

    def drop(self, key: FileVersion) -> None:
        """Everything protected for `key` is ordinary again."""
        self._waiting.pop(key, None)
        for digest in self._digests.pop(key, ()):
            self.cache.protection.release(digest)
