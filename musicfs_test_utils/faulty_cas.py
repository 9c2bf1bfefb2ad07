"""FaultyCasStore: a real CasStore whose disk can be made full, unreadable, read-only, hung or lying,
and whose index store can be made to die."""

from __future__ import annotations

import errno
import threading

from musicfs.cache.cas import CasStore
from musicfs.shared.errors import CacheFull, CasError


class FaultyCasStore:
    """Same interface as CasStore (everything not overridden is the real store's).

    Faults: inject_enospc (put: disk full), inject_eio_on_read (get: EIO), inject_corruption (get: a byte
    flipped on disk first), inject_eio (get, put and probe: EIO — a failing disk), inject_readonly (put and
    probe: EROFS — a disk remounted read-only), hang (a threading.Event: get, put and probe block until it
    is set — a hung disk). corrupt_index() kills the index store under the running store.
    """

    def __init__(self, inner: CasStore):
        self.inner = inner
        self.inject_enospc = False
        self.inject_eio_on_read = False
        self.inject_corruption = False
        self.inject_eio = False
        self.inject_readonly = False
        self.hang: threading.Event | None = None
        self.hung = 0  # calls that blocked on `hang`

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _block(self) -> None:
        gate = self.hang
        if gate is not None and not gate.is_set():
            self.hung += 1
            gate.wait()

    def _disk_faults(self, doing: str, writing: bool) -> None:
        if self.inject_eio:
            raise CasError(f"cache: cannot {doing}: {errno.errorcode[errno.EIO]} (injected)")
        if writing and self.inject_readonly:
            raise CasError(f"cache: cannot {doing}: Read-only file system (injected {errno.errorcode[errno.EROFS]})")

    def put(self, data: bytes) -> str:
        self._block()
        if self.inject_enospc:
            raise CacheFull(f"injected ENOSPC ({errno.errorcode[errno.ENOSPC]})")
        self._disk_faults("write a chunk", writing=True)
        return self.inner.put(data)

    def get(self, digest: str) -> bytes:
        self._block()
        if self.inject_eio_on_read:
            raise CasError(f"cache: cannot read chunk {digest[:12]}: injected EIO")
        self._disk_faults(f"read chunk {digest[:12]}", writing=False)
        if self.inject_corruption:
            with open(self.inner._path(digest), "r+b") as fh:
                first = fh.read(1)
                fh.seek(0)
                fh.write(bytes([(first[0] if first else 0) ^ 0xFF]))
        return self.inner.get(digest)

    def probe(self) -> None:
        self._block()
        self._disk_faults("probe the cache disk", writing=True)
        self.inner.probe()

    def corrupt_index(self) -> None:
        """The index store dies under the running store: its connection is gone, its file is garbage."""
        with self.inner._db_lock:
            self.inner._db.close()
        with open(self.inner.index_path, "r+b") as fh:
            fh.write(b"\x00not an index any more\xff" * 256)
