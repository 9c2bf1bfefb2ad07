"""SearchIndex: tantivy full-text index of the tree, derived from the catalog (always rebuildable)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Iterable

import tantivy

from . import points
from .errors import SearchIndexError
from .failpoints import fail_point

log = logging.getLogger(__name__)

TEXT_FIELDS = ("artist", "album", "title", "genre", "path")


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


class SearchIndex:
    """One tantivy index in a folder. Writes are serialised; readers never block on them."""

    def __init__(self, path: str, create: bool = True):
        self.path = path
        self._lock = threading.Lock()
        schema = _schema()
        try:
            if os.path.isdir(path) and tantivy.Index.exists(path):
                self._index = tantivy.Index.open(path)
            elif create:
                os.makedirs(path, exist_ok=True)
                self._index = tantivy.Index(schema, path=path)
            else:
                raise SearchIndexError(f"no search index at {path}: mount or scan the library first")
        except (OSError, ValueError) as exc:
            raise SearchIndexError(f"{path}: cannot open the search index: {exc}") from exc

    def rebuild(self, docs: Iterable[IndexDoc]) -> int:
        """Replace every document with `docs` in one commit. Returns the count."""
        with self._lock:
            writer = self._index.writer(heap_size=32 << 20, num_threads=1)
            try:
                writer.delete_all_documents()
                n = 0
                for doc in docs:
                    writer.add_document(_document(doc))
                    n += 1
                fail_point(points.INDEX_COMMIT)
                writer.commit()
                writer.wait_merging_threads()
            except BaseException:
                writer.rollback()
                raise
            self._index.reload()
            return n

    def search(self, query: str, limit: int = 20) -> list[str]:
        """Tree paths of the best matches, all words required."""
        if not query.strip():
            return []
        self._index.reload()
        parsed, _errors = self._index.parse_query_lenient(query, list(TEXT_FIELDS), conjunction_by_default=True)
        searcher = self._index.searcher()
        hits = searcher.search(parsed, limit).hits
        return [searcher.doc(addr)["path"][0] for _score, addr in hits]

    def count(self) -> int:
        self._index.reload()
        return self._index.searcher().num_docs
