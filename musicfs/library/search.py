"""SearchIndex: tantivy full-text index of the tree, derived from the catalog (always rebuildable).

Integrity (rows 2.4, 5.2): `open_with_recovery` checks the folder before tantivy sees it — meta.json
readable, every segment file it names present and matching the CRC32 in its footer (what tantivy's own
`validate_checksum` does) — because tantivy turns a folder without meta.json into an EMPTY index and
panics on damaged segments. A damaged index is moved aside (`index.damaged-<time>`, never deleted), a
new one is created and `recovered` says why: the caller rebuilds it from the catalog. Any tantivy panic
(`pyo3_runtime.PanicException`, a BaseException) becomes SearchIndexCorrupt. A kill -9 loses only
uncommitted documents; the writer lock is an flock, released with the process, so it never blocks a reopen.

Analysis (schema 2): each searched field is indexed twice, as folded words (tantivy's simple tokenizer,
lowercase, ASCII folding: `beyonce` finds `Beyoncé`, `ros` `Rós`) and as single CJK characters with their
positions (`夏の雨` has no spaces: a phrase of characters matches any run of them, i.e. character n-grams).
A query is normalised like tag text (text.normalise: NFC first, so an NFD query folds like an NFC one) and
cut into words by the SAME analyzers; each word must match, as a whole word, a word prefix (`symph`) or a
CJK run, in any field, weighted so that a title match ranks above an album match. `field:word` restricts a
word to one field. The schema version is kept in `musicfs-schema` beside meta.json: an index of an older
schema is never searched; it is replaced by an empty one (one log line) and rebuilt from the catalog.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

import tantivy

from ..shared import SearchIndexCorrupt, SearchIndexError, move_aside, normalise, points

log = logging.getLogger(__name__)

TEXT_FIELDS = ("artist", "album", "title", "genre", "path")
STORED_FIELDS = ("path", "artist", "album", "title")
WEIGHTS = {"title": 4.0, "artist": 3.0, "album": 2.0, "genre": 1.0, "path": 0.5}  # a title match ranks first
EXACT_BONUS = 2.0  # a whole word outranks a word it is only the prefix of
SCHEMA_VERSION = 2
VERSION_FILE = "musicfs-schema"
WORDS, CJK = "musicfs_words", "musicfs_cjk"
_CJK_CHAR = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}\p{Bopomofo}]"
_HAS_CJK = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31bf\u31f0-\u31ff"
                      "\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]")
_FIELD_WORD = re.compile(r"^(artist|album|title|genre):(.+)$", re.IGNORECASE)
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
    duration: float | None = None


@dataclass(frozen=True)
class Hit:
    """One search result: the track's tree path and what `musicfs search --json` shows of it."""
    path: str
    artist: str
    album: str
    title: str
    duration: float | None
    score: float = field(default=0.0, compare=False)  # the rank's basis; merges the hits of several libraries


def _analyzers() -> dict[str, tantivy.TextAnalyzer]:
    """The analyzers documents are indexed with, also the ones queries are cut with."""
    words = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(100))
             .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.ascii_fold()).build())
    cjk = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(_CJK_CHAR)).build()
    return {WORDS: words, CJK: cjk}


ANALYZERS = _analyzers()


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("id", stored=True, indexed=True)
    for name in TEXT_FIELDS:
        sb.add_text_field(name, stored=name in STORED_FIELDS, tokenizer_name=WORDS, index_option="position")
        sb.add_text_field(f"{name}_cjk", stored=False, tokenizer_name=CJK, index_option="position")
    sb.add_float_field("duration", stored=True, indexed=False)
    return sb.build()


def _document(doc: IndexDoc) -> tantivy.Document:
    out = tantivy.Document()
    out.add_unsigned("id", doc.id)
    for name in TEXT_FIELDS:
        text = getattr(doc, name)  # normalised at scan (tags) and by the tree (names)
        out.add_text(name, text)
        if _HAS_CJK.search(text):
            out.add_text(f"{name}_cjk", text)
    if doc.duration is not None:
        out.add_float("duration", float(doc.duration))
    return out


def build_query(schema: tantivy.Schema, query: str) -> tantivy.Query | None:
    """All words of `query` required, each in any field (or the one it names); None when it has no words."""
    clauses = []
    for chunk in normalise(query).split(" "):
        named = _FIELD_WORD.match(chunk)
        fields = [named.group(1).lower()] if named else list(TEXT_FIELDS)
        for token in ANALYZERS[WORDS].analyze(named.group(2) if named else chunk):
            clauses.append((tantivy.Occur.Must, _word_query(schema, token, fields)))
    return tantivy.Query.boolean_query(clauses) if clauses else None


def _word_query(schema: tantivy.Schema, word: str, fields: list[str]) -> tantivy.Query:
    """One query word: in any of `fields`, whole (weighted up), as a word prefix, or as a run of CJK characters."""
    chars = ANALYZERS[CJK].analyze(word) if _HAS_CJK.search(word) else []
    either = []
    for name in fields:
        weight = WEIGHTS[name]
        either.append((tantivy.Occur.Should, tantivy.Query.boost_query(
            tantivy.Query.term_query(schema, name, word), weight * EXACT_BONUS)))
        either.append((tantivy.Occur.Should, tantivy.Query.boost_query(
            tantivy.Query.regex_query(schema, name, re.escape(word) + ".*"), weight)))
        if len(chars) == 1:
            either.append((tantivy.Occur.Should, tantivy.Query.boost_query(
                tantivy.Query.term_query(schema, f"{name}_cjk", chars[0]), weight)))
        elif chars:
            either.append((tantivy.Occur.Should, tantivy.Query.boost_query(
                tantivy.Query.phrase_query(schema, f"{name}_cjk", chars), weight)))
    return tantivy.Query.boolean_query(either)


def schema_version(path: str) -> int:
    """The schema an index folder was built with; 1 for an index from before versions were recorded."""
    try:
        with open(os.path.join(path, VERSION_FILE)) as fh:
            return int(fh.read().strip())
    except FileNotFoundError:
        return 1
    except (OSError, ValueError):
        return 0


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
        self.version = SCHEMA_VERSION
        try:
            if os.path.isdir(path) and tantivy.Index.exists(path):
                self._index = self._call(tantivy.Index.open, path)
                self.version = schema_version(path)
            elif os.path.isdir(path) and [n for n in os.listdir(path) if n not in LOCK_FILES]:
                # tantivy would make an EMPTY index here and lose whatever this was
                raise SearchIndexCorrupt(f"{path}: not a search index any more: meta.json is missing "
                                         f"(`musicfs fsck --repair` or the next mount rebuilds it)")
            elif create:
                self._create()
            else:
                raise SearchIndexError(f"no search index at {path}: mount or scan the library first")
        except OSError as exc:
            raise SearchIndexError(f"{path}: cannot open the search index: {exc}") from exc
        for name, analyzer in ANALYZERS.items():
            self._index.register_tokenizer(name, analyzer)  # tokenizers are not stored with the index

    def _create(self) -> None:
        """A new, empty index of the current schema, its version recorded beside it."""
        os.makedirs(self.path, exist_ok=True)
        self._index = self._call(tantivy.Index, _schema(), path=self.path)
        tmp = os.path.join(self.path, VERSION_FILE + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{SCHEMA_VERSION}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(self.path, VERSION_FILE))
        self.version = SCHEMA_VERSION

    @property
    def outdated(self) -> bool:
        """Built with other analyzers (an older musicfs): never searched, only replaced."""
        return self.version != SCHEMA_VERSION

    def start_over(self) -> None:
        """Replace an index of another schema by an empty one of ours (derived data: removed, not kept)."""
        log.info("search index %s has schema %d, this version uses %d: rebuilding it from the catalog",
                 self.path, self.version, SCHEMA_VERSION)
        # The old folder is renamed aside, not emptied in place: an index of it still open in this process watches
        # its meta.json and takes its meta lock again when that file goes, so an rmtree of the live folder can
        # find it not empty.
        aside = f"{self.path}.old-{uuid.uuid4().hex[:8]}"
        self._index = None
        try:
            os.rename(self.path, aside)
            self._create()
        except OSError as exc:
            raise SearchIndexError(f"{self.path}: cannot replace the search index of an older version: "
                                   f"{exc.strerror}") from exc
        for _ in range(3):  # (the watcher of the old index may still drop its lock file in it once)
            shutil.rmtree(aside, ignore_errors=True)
            if not os.path.exists(aside):
                break
        else:
            log.warning("search index: could not remove the old index at %s; remove it by hand", aside)
        for name, analyzer in ANALYZERS.items():
            self._index.register_tokenizer(name, analyzer)

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
                if index.outdated:
                    index.start_over()  # the daemon reindexes: the counts differ now
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
        if self.outdated:
            self.start_over()
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
        return [hit.path for hit in self.hits(query, limit)]

    def hits(self, query: str, limit: int = 20) -> list[Hit]:
        """The best matches, best first (equal scores by path); [] for a query without words or limit < 1."""
        if self.outdated:
            raise SearchIndexError(f"search index {self.path} was built by an older musicfs (schema {self.version}): "
                                   f"the next mount or `musicfs scan` rebuilds it")
        if limit < 1:
            return []

        def run() -> list[Hit]:
            self._index.reload()
            parsed = build_query(self._index.schema, query)
            searcher = self._index.searcher()
            if parsed is None or not searcher.num_docs:
                return []
            found = []
            for score, addr in searcher.search(parsed, min(limit, searcher.num_docs)).hits:
                doc = searcher.doc(addr)
                found.append((-score, Hit(doc.get_first("path") or "", doc.get_first("artist") or "",
                                          doc.get_first("album") or "", doc.get_first("title") or "",
                                          doc.get_first("duration"), score)))
            return [hit for _score, hit in sorted(found, key=lambda pair: (pair[0], pair[1].path))]

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
