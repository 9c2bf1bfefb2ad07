"""SearchIndex: tantivy full-text index of the tree, derived from the catalog (always rebuildable).

Integrity (rows 2.4, 5.2): `open_with_recovery` checks the folder before tantivy sees it — meta.json
readable, every segment file it names present and matching the CRC32 in its footer (what tantivy's own
`validate_checksum` does) — because tantivy turns a folder without meta.json into an EMPTY index and
panics on damaged segments. A damaged index is moved aside (`index.damaged-<time>`, never deleted), a
new one is created and `recovered` says why: the caller rebuilds it from the catalog. Any tantivy panic
(`pyo3_runtime.PanicException`, a BaseException) becomes SearchIndexCorrupt. A kill -9 loses only
uncommitted documents; the writer lock is an flock, released with the process, so it never blocks a reopen.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

import tantivy

from . import points
from .damage import move_aside
from .errors import SearchIndexCorrupt, SearchIndexError

log = logging.getLogger(__name__)

TEXT_FIELDS = ("artist", "album", "title", "genre", "path")
SEGMENT_EXTS = ("idx", "term", "pos", "store", "fast", "fieldnorm")
LOCK_FILES = {".tantivy-writer.lock", ".tantivy-meta.lock"}
FOOTER_MAGIC = 1337
_CORRUPTION_WORDS = ("corrupt", "IO error", "IoError", "Failed to open", "checksum", "Invalid data", "failed to fill")

T = TypeVar("T")


@dataclass(frozen=True)
class IndexDoc:
    id: int
    path: str
    artist: str = ""
    album: str = ""
    title: str = ""
    genre: str = ""


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("id", stored=True, indexed=True)
    for name in TEXT_FIELDS:
        sb.add_text_field(name, stored=name == "path")
    return sb.build()


def _document(doc: IndexDoc) -> tantivy.Document:
    out = tantivy.Document()
    out.add_unsigned("id", doc.id)
    for name in TEXT_FIELDS:
        out.add_text(name, getattr(doc, name))
    return out


def is_panic(exc: BaseException) -> bool:
    """tantivy-py raises pyo3_runtime.PanicException (a BaseException) when Rust code panics."""
    return type(exc).__name__ == "PanicException"


def _footer_ok(path: str) -> bool:
    """The file's body matches the CRC32 in its tantivy footer: body | json footer | u32 len | u32 magic."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            return False
        fh.seek(size - 8)
        flen, magic = struct.unpack("<II", fh.read(8))
        if magic != FOOTER_MAGIC or flen + 8 > size:
            return False
        fh.seek(size - 8 - flen)
        try:
            crc = json.loads(fh.read(flen))["crc"]
        except (ValueError, KeyError, TypeError):
            return False
        fh.seek(0)
        left, value = size - 8 - flen, 0
        while left > 0:
            block = fh.read(min(left, 1 << 20))
            if not block:
                return False
            value = zlib.crc32(block, value)
            left -= len(block)
        return value == crc


def check_files(path: str) -> list[str]:
    """What is wrong with the index folder's files; [] when sound, or when there is no index there yet."""
    if not os.path.exists(path):
        return []
    if not os.path.isdir(path):
        return [f"{path} is not a folder"]
    names = [n for n in os.listdir(path) if n not in LOCK_FILES]
    meta = os.path.join(path, "meta.json")
    if "meta.json" not in names:
        return [f"meta.json is missing but the folder holds {len(names)} files"] if names else []
    try:
        with open(meta, "rb") as fh:
            segments = json.load(fh)["segments"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"meta.json cannot be read: {exc}"]
    problems = []
    for seg in segments:
        try:
            sid = seg["segment_id"].replace("-", "")
            files = [f"{sid}.{ext}" for ext in SEGMENT_EXTS]
            if seg.get("deletes"):
                files.append(f"{sid}.{seg['deletes']['opstamp']}.del")
        except (KeyError, TypeError, AttributeError) as exc:
            problems.append(f"meta.json names a segment it does not describe: {exc}")
            continue
        for name in files:
            full = os.path.join(path, name)
            if not os.path.exists(full):
                problems.append(f"{name} is missing")
            elif not _footer_ok(full):
                problems.append(f"{name} fails its checksum")
    return problems


class SearchIndex:
    """One tantivy index in a folder. Writes are serialised; readers never block on them."""

    def __init__(self, path: str, create: bool = True):
        self.path = path
        self.recovered: str | None = None  # why open_with_recovery had to start a new index
        self._lock = threading.Lock()
        schema = _schema()
        try:
            if os.path.isdir(path) and tantivy.Index.exists(path):
                self._index = self._call(tantivy.Index.open, path)
            elif os.path.isdir(path) and [n for n in os.listdir(path) if n not in LOCK_FILES]:
                # tantivy would make an EMPTY index here and lose whatever this was
                raise SearchIndexCorrupt(f"{path}: not a search index any more: meta.json is missing "
                                         f"(`musicfs fsck --repair` or the next mount rebuilds it)")
            elif create:
                os.makedirs(path, exist_ok=True)
                self._index = self._call(tantivy.Index, schema, path=path)
            else:
                raise SearchIndexError(f"no search index at {path}: mount or scan the library first")
        except OSError as exc:
            raise SearchIndexError(f"{path}: cannot open the search index: {exc}") from exc

    @classmethod
    def open_with_recovery(cls, path: str) -> "SearchIndex":
        """Open after checking every file; a damaged index is moved aside and a new one started
        (`recovered` says why; the caller rebuilds it from the catalog). Only a folder that cannot be
        read or moved (permissions, a failing disk) raises SearchIndexError."""
        problems = check_files(path)
        if not problems:
            try:
                index = cls(path)
                index.probe()
                return index
            except SearchIndexCorrupt as exc:
                problems = [str(exc)]
        reason = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        return cls.recreate(path, reason)

    @classmethod
    def recreate(cls, path: str, reason: str) -> "SearchIndex":
        """Move the damaged index folder aside (never deleted) and start an empty one in its place."""
        try:
            dest = move_aside(path)
        except OSError as exc:
            raise SearchIndexError(f"search index {path} is damaged ({reason}) and cannot be moved aside: "
                                   f"{exc.strerror}") from exc
        log.warning("search index %s is damaged (%s): moved to %s; rebuilding it from the catalog", path, reason, dest)
        index = cls(path)
        index.recovered = reason
        return index

    def _call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run a tantivy call; its panics and corruption errors become SearchIndexCorrupt."""
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if is_panic(exc):
                raise SearchIndexCorrupt(f"search index {self.path} is damaged: tantivy panicked: {exc}") from exc
            if isinstance(exc, ValueError):
                text = str(exc)
                if "LockBusy" in text:
                    raise SearchIndexError(f"search index {self.path} is being written by another process") from exc
                if any(word in text for word in _CORRUPTION_WORDS):
                    raise SearchIndexCorrupt(f"search index {self.path} is damaged: {text}") from exc
                raise SearchIndexError(f"search index {self.path}: {text}") from exc
            raise

    def probe(self) -> int:
        """Open every segment through tantivy (count, a match-all search, a stored document); returns the
        count. A damaged index raises SearchIndexCorrupt here rather than in a user's search."""
        def run() -> int:
            self._index.reload()
            searcher = self._index.searcher()
            n = searcher.num_docs
            if n:
                for _score, addr in searcher.search(tantivy.Query.all_query(), 1).hits:
                    searcher.doc(addr)
            return n

        return self._call(run)

    def rebuild(self, docs: Iterable[IndexDoc]) -> int:
        """Replace every document with `docs` in one commit. Returns the count."""
        with self._lock:
            return self._call(self._rebuild, docs)

    def _rebuild(self, docs: Iterable[IndexDoc]) -> int:
        writer = self._index.writer(heap_size=32 << 20, num_threads=1)
        try:
            writer.delete_all_documents()
            n = 0
            for doc in docs:
                writer.add_document(_document(doc))
                n += 1
            points.hit(points.INDEX_COMMIT, SearchIndexError)
            writer.commit()
            writer.wait_merging_threads()
        except BaseException:
            writer.rollback()
            raise
        finally:
            del writer  # drops the writer lock now, not at the next garbage collection
        self._index.reload()
        return n

    def search(self, query: str, limit: int = 20) -> list[str]:
        """Tree paths of the best matches, all words required."""
        if not query.strip():
            return []

        def run() -> list[str]:
            self._index.reload()
            parsed, _errors = self._index.parse_query_lenient(query, list(TEXT_FIELDS), conjunction_by_default=True)
            searcher = self._index.searcher()
            hits = searcher.search(parsed, limit).hits
            return [searcher.doc(addr)["path"][0] for _score, addr in hits]

        return self._call(run)

    def count(self) -> int:
        def run() -> int:
            self._index.reload()
            return self._index.searcher().num_docs

        return self._call(run)

    def paths(self) -> list[str]:
        """Every indexed tree path (fsck compares them with the catalog)."""
        def run() -> list[str]:
            self._index.reload()
            searcher = self._index.searcher()
            n = searcher.num_docs
            if not n:
                return []
            return [searcher.doc(addr)["path"][0] for _s, addr in searcher.search(tantivy.Query.all_query(), n).hits]

        return self._call(run)
