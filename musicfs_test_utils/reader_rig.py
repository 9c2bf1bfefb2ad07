"""ReaderRig: a FileReader over a real catalog, a real CAS and a FaultyOrigin(LocalOrigin) on a folder of files.

    rig = ReaderRig.build(tmp_path, {"a.flac": pattern_bytes(1, 3000, step=13, salt=101, period=256)},
                          chunk_size=4096, memory_cache=1 << 20, read_timeout=10.0)
    assert await rig.read("a.flac") == rig.files["a.flac"]
    rig.close()

Layout under `base`: origin/ (the files, unless `root` is given), catalog.db (or `catalog_file`), cache/
(or `cache_dir`). Every file the origin walks becomes a catalog row of kind "track".
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

from musicfs.cache.cas import CasStore, chunk_hash
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.cache.health import CacheHealth
from musicfs.library.catalog import Catalog, FileRow
from musicfs.origins.base import Origin
from musicfs.origins.local import LocalOrigin
from musicfs.origins.registry import OriginRegistry
from musicfs.read import FileReader, build_reader
from musicfs.shared.errors import MusicFSError, OriginError
from musicfs_test_utils.faulty_cas import FaultyCasStore
from musicfs_test_utils.faulty_origin import FailMode, FaultyOrigin, Healthy

__all__ = ["ReaderRig", "pattern_bytes", "READ_ERRORS"]

# What a read may raise when an origin or the cache misbehaves: an error, never wrong bytes.
READ_ERRORS = (MusicFSError, OriginError, trio.TooSlowError)


def current_row(catalog: Catalog, path: str) -> FileRow:
    """The catalog's row for `path` now (after an upsert, the new one)."""
    return next(r for r in catalog.files() if r.path == path)


async def read_range(reader: FileReader, row: FileRow, offset: int = 0, size: int | None = None) -> bytes:
    """open / read / release, as one FUSE client would; size None: the whole file."""
    fh = await reader.open(row)
    try:
        return await reader.read(fh, offset, row.size if size is None else size)
    finally:
        reader.release(fh)


async def settle_readahead(reader: FileReader) -> None:
    """Until every read-ahead job queued so far has run: nothing queued, nothing in flight (a poll with a
    deadline: the fetches run in worker threads, which trio cannot wait for all at once)."""
    with trio.fail_after(10):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            stats = reader.readahead.statistics()
            if stats.queued == 0 and stats.inflight_bytes == 0:
                return
            await trio.sleep(0.001)


def pattern_bytes(seed: int, size: int, *, step: int, salt: int, period: int) -> bytes:
    """Deterministic, chunk-distinguishable test bytes: byte i is (i*step + seed*salt + i//period) % 256."""
    return bytes((i * step + seed * salt + i // period) % 256 for i in range(size))


@dataclass
class ReaderRig:
    base: Path
    root: Path
    files: dict[str, bytes]  # what build() wrote into the origin folder (empty when it wrote nothing)
    origin: FaultyOrigin
    catalog: Catalog
    cas: CasStore | FaultyCasStore
    registry: OriginRegistry
    reader: FileReader
    rows: dict[str, FileRow]  # the catalog's rows as build() left them
    chunk_size: int
    memory_cache: int
    read_timeout: float
    cache_dir: Path
    cas_quota: int = 1 << 30
    cas_kwargs: dict = field(default_factory=dict)
    registry_kwargs: dict = field(default_factory=dict)
    health_options: dict | None = None  # CacheHealth keyword arguments build() was given (`health`)
    cache: ChunkCache | None = None  # the rig's ChunkCache over `cas`, when build() was given `health`

    @property
    def health(self) -> CacheHealth:
        """The cache health of rig.cache (build() was given `health`)."""
        return self.cache.health

    @classmethod
    def build(cls, base: Path, files: dict[str, bytes] | None = None, root: Path | None = None, *,
              chunk_size: int, memory_cache: int, read_timeout: float, inner: Origin | None = None,
              catalog_file: str = "catalog.db", cache_dir: Path | None = None, cas_quota: int = 1 << 30,
              cas_kwargs: dict | None = None, faulty_cas: bool = False, registry_kwargs: dict | None = None,
              health: dict | None = None):
        """Write `files` under `root` (default base/origin), wrap `inner` (default LocalOrigin(root)) in a
        FaultyOrigin, catalog what it walks (unless the catalog already has rows: a restart), open the CAS
        (wrapped in a FaultyCasStore if `faulty_cas`) and a reader.

        registry_kwargs default to {"backoff": 0.0}; `health`: CacheHealth keyword arguments, and the
        reader reads through one ChunkCache built with them (rig.cache, rig.health its CacheHealth).
        """
        base = Path(base)
        root = Path(root) if root is not None else base / "origin"
        files = dict(files or {})
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        origin = FaultyOrigin(inner if inner is not None else LocalOrigin(root))
        catalog_path = base / catalog_file
        catalog_path.parent.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(str(catalog_path))
        if not catalog.files():
            catalog.upsert_files([FileRow(path=st.path, kind="track", size=st.size, mtime_ns=st.mtime_ns,
                                          etag=st.etag) for st in origin.inner.walk()])
        cache_dir = Path(cache_dir) if cache_dir is not None else base / "cache"
        cas_kwargs = dict(cas_kwargs or {})
        cas: CasStore | FaultyCasStore = CasStore(str(cache_dir), cas_quota, **cas_kwargs)
        if faulty_cas:
            cas = FaultyCasStore(cas)
        registry_kwargs = {"backoff": 0.0} if registry_kwargs is None else dict(registry_kwargs)
        rig = cls(base=base, root=root, files=files, origin=origin, catalog=catalog, cas=cas,
                  registry=OriginRegistry([origin], **registry_kwargs), reader=None,  # type: ignore[arg-type]
                  rows={r.path: r for r in catalog.files()}, chunk_size=chunk_size, memory_cache=memory_cache,
                  read_timeout=read_timeout, cache_dir=cache_dir, cas_quota=cas_quota, cas_kwargs=cas_kwargs,
                  registry_kwargs=registry_kwargs)
        if health is not None:
            rig.health_options = dict(health)
            rig.cache = ChunkCache(cas, **health)
        rig.reader = rig.new_reader(registry=rig.registry)
        return rig

    # -- readers -----------------------------------------------------------------------------------
    def new_origin(self, mode: FailMode = Healthy()) -> FaultyOrigin:
        """A fresh FaultyOrigin over the same folder: its call counts start at zero."""
        return FaultyOrigin(LocalOrigin(self.root), mode)

    def new_reader(self, *, cas: CasStore | FaultyCasStore | None = None, origin: FaultyOrigin | None = None,
                   registry: OriginRegistry | None = None, memory_cache: int | None = None,
                   read_timeout: float | None = None, cache: ChunkCache | None = None) -> FileReader:
        """Another reader on the same catalog and CAS (nothing in its memory cache: what a restart has).

        By default it reads through rig.origin with a registry of its own, and rig.cache as its cache (a
        ChunkCache of its own over `cas` when that is given or the rig has none).
        """
        if registry is None:
            registry = OriginRegistry([origin or self.origin], **self.registry_kwargs)
        read_timeout = self.read_timeout if read_timeout is None else read_timeout
        if cache is None:
            if self.cache is not None and cas is None:
                cache = self.cache
            else:
                options = self.health_options or {"op_timeout": min(5.0, read_timeout / 3)}
                cache = ChunkCache(self.cas if cas is None else cas, **options)
        return build_reader(self.catalog, cache, registry, chunk_size=self.chunk_size,
                          memory_cache=self.memory_cache if memory_cache is None else memory_cache,
                          read_timeout=read_timeout)

    def fresh_reader(self, *, cas: CasStore | FaultyCasStore | None = None,
                     mode: FailMode = Healthy()) -> tuple[FileReader, FaultyOrigin]:
        """A reader with an origin of its own (new_origin(mode)): what a restarted daemon has."""
        origin = self.new_origin(mode)
        return self.new_reader(cas=cas, origin=origin), origin

    def reopen_cas(self) -> CasStore:
        """Close the CAS (if still open) and open it again, as a new process does: its index reloaded from disk."""
        self._close_cas()
        self.cas = CasStore(str(self.cache_dir), self.cas_quota, **self.cas_kwargs)
        return self.cas

    def restart_cache(self) -> None:
        """What a restart does to the cache: reopen it, with a fresh reader (same origin) on it."""
        self.reopen_cas()
        self.reader = self.new_reader()

    # -- reading and looking -----------------------------------------------------------------------
    def row(self, path: str) -> FileRow:
        return current_row(self.catalog, path)

    async def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        return await read_range(self.reader, self.row(path), offset, size)

    def data(self, path: str | FileRow) -> bytes:
        """The origin file's bytes as they are on disk now."""
        return (self.root / (path.path if isinstance(path, FileRow) else path)).read_bytes()

    def manifest(self, row: FileRow | str) -> dict[int, str]:
        row = self.rows[row] if isinstance(row, str) else row
        return self.catalog.manifest(row.version)

    def chunks(self, path: str) -> list[str]:
        """The digests of files[path], chunk by chunk."""
        data = self.files[path]
        return [chunk_hash(data[i:i + self.chunk_size]) for i in range(0, len(data), self.chunk_size)]

    def chunk_file(self, digest: str) -> Path:
        return self.cache_dir / "chunks" / digest[:2] / digest

    def chunk_files(self) -> set[str]:
        """Names of every chunk file on disk."""
        chunks = self.cache_dir / "chunks"
        return {name for sub in os.listdir(chunks) for name in os.listdir(chunks / sub)}

    def index_rows(self) -> set[str]:
        """Digests in the CAS index file, read by a connection of its own."""
        db = sqlite3.connect(f"file:{self.cache_dir / 'index.db'}?mode=ro", uri=True)
        try:
            return {r[0] for r in db.execute("SELECT hash FROM chunks")}
        finally:
            db.close()

    @property
    def store(self) -> CasStore:
        """The real CasStore (under the FaultyCasStore, when there is one)."""
        return self.cas.inner if isinstance(self.cas, FaultyCasStore) else self.cas

    def _close_cas(self) -> None:
        try:
            self.store.close()
        except sqlite3.ProgrammingError:  # its connection already gone (a test killed the index store)
            pass

    def close(self) -> None:
        self._close_cas()
        self.catalog.close()
