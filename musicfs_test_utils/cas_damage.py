"""A chunk store on disk, looked at and damaged the way crashes and bad disks do (tests of cas.py)."""

from __future__ import annotations

import hashlib
import os
import sqlite3

from musicfs.cache.cas import CasStore, chunk_hash

__all__ = ["SIZE", "blob", "chunk_file", "corrupt", "damage_orphan_and_stray", "drop_index_row", "quarantined"]

SIZE = 1000


def blob(i: int, size: int = SIZE) -> bytes:
    """Distinct deterministic bytes per i."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def chunk_file(cas: CasStore, digest: str) -> str:
    return os.path.join(cas.root, "chunks", digest[:2], digest)


#: What a store that cannot open logs (an expected_log pattern).
UNOPENED = r"cache: cannot open .*; reads go straight to the origins"


def store_over_a_file(root) -> CasStore:
    """A store whose folder is a regular file: it cannot open (unavailable until a probe finds the folder)."""
    root.write_text("a file where the cache folder should be")
    return CasStore(str(root), 1 << 20)


def corrupt(cas: CasStore, digest: str) -> None:
    """Garbage over the start of the chunk's file: its bytes no longer have its name's hash."""
    with open(chunk_file(cas, digest), "r+b") as fh:
        fh.write(b"garbage")


def quarantined(cas: CasStore) -> list[str]:
    return os.listdir(os.path.join(cas.root, "quarantine"))


def drop_index_row(root, digest: str) -> None:
    """A crash between a chunk file's rename and its index insert: the file is there, the row is not."""
    db = sqlite3.connect(os.path.join(root, "index.db"))
    with db:
        assert db.execute("DELETE FROM chunks WHERE hash = ?", (digest,)).rowcount == 1
    db.close()


def damage_orphan_and_stray(cas: CasStore, digest: str) -> str:
    """Make `digest` an orphan with wrong bytes, and write a stray file named by a hash its bytes do not have;
    returns the stray's name. (The store should be closed.)"""
    drop_index_row(cas.root, digest)
    with open(chunk_file(cas, digest), "r+b") as fh:
        fh.write(b"garbage")
    stray = chunk_hash(b"stray")
    os.makedirs(os.path.dirname(chunk_file(cas, stray)), exist_ok=True)
    with open(chunk_file(cas, stray), "wb") as fh:
        fh.write(b"not the stray bytes")
    return stray
