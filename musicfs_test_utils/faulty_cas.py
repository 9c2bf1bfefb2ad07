"""FaultyCasStore: a real CasStore whose disk can be made full, unreadable or lying."""

from __future__ import annotations

import errno

from musicfs.cas import CasStore
from musicfs.errors import CacheFull, CasError


class FaultyCasStore:
    """Same interface as CasStore (everything not overridden is the real store's)."""

    def __init__(self, inner: CasStore):
        self.inner = inner
        self.inject_enospc = False
        self.inject_eio_on_read = False
        self.inject_corruption = False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, data: bytes) -> str:
        if self.inject_enospc:
            raise CacheFull(f"injected ENOSPC ({errno.errorcode[errno.ENOSPC]})")
        return self.inner.put(data)

    def get(self, digest: str) -> bytes:
        if self.inject_eio_on_read:
            raise CasError(f"cache: cannot read chunk {digest[:12]}: injected EIO")
        if self.inject_corruption:
            with open(self.inner._path(digest), "r+b") as fh:
                first = fh.read(1)
                fh.seek(0)
                fh.write(bytes([(first[0] if first else 0) ^ 0xFF]))
        return self.inner.get(digest)
