"""Published catalogs: a library's catalog left beside the library, so a machine mounting it for the first time is
READY from it at once and then only revalidates (a listing, and tags re-read only of files whose identity differs).

Layout, under the origin's root, in the reserved folder `.musicfs/` (never scanned, never shown in the tree):

    .musicfs/catalog.json               the pointer: which snapshot is current (written last, replaced whole)
    .musicfs/catalog/<sha256>.json.gz   a snapshot, named by the SHA-256 of its bytes (written first)

A snapshot holds every file the scan listed as music: its path, kind, identity (size, mtime, ETag) and tags,
enough to build the tree and the search index. A reader fetches the pointer, then the snapshot it names, and
checks the bytes against the name: it never sees half of a publish (the pointer is written after the snapshot, and
each is replaced at once). A replaced snapshot stays `KEEP_RETIRED` seconds for mounts that read the old pointer
just before, then the next publish removes it. Nothing here trusts the snapshot for bytes: it only names versions,
and every read is still checked against the origin's identity.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

from ..origins import Origin, is_safe_relative
from ..shared import MusicFSError, OriginError, OriginNotFound, redact
from .catalog import Catalog, FileRow
from .tags import TrackTags

log = logging.getLogger(__name__)

RESERVED = ".musicfs"  # the folder of the origin that is MusicFS's own
POINTER = f"{RESERVED}/catalog.json"
SNAPSHOTS = f"{RESERVED}/catalog/"
FORMAT = 1  # what this version writes and reads; a newer snapshot is ignored
KEEP_RETIRED = 3600.0  # seconds a replaced snapshot stays for mounts that fetched the pointer before
MAX_POINTER = 1 << 20
MAX_SNAPSHOT = 1 << 30
SAMPLE = 8  # files stat'ed to see that a snapshot describes the library it was found in

IDENTITY_COLUMNS = ("path", "kind", "size", "mtime_ns", "etag")
TAG_COLUMNS = tuple(f.name for f in fields(TrackTags))
COLUMNS = IDENTITY_COLUMNS + TAG_COLUMNS
_TYPES = {"path": str, "kind": str, "size": int, "mtime_ns": int, "etag": str, "artist": str, "albumartist": str,
          "album": str, "title": str, "track_no": int, "disc_no": int, "year": str, "genre": str,
          "duration": (int, float)}
assert set(_TYPES) == set(COLUMNS)


def is_reserved(path: str) -> bool:
    """Whether `path` (relative to an origin's root) is in MusicFS's own folder there."""
    return path == RESERVED or path.startswith(RESERVED + "/")


class UnusableSnapshot(MusicFSError):
    """A published catalog that is not used (damaged, truncated, foreign, too new): the mount scans as without."""


@dataclass(frozen=True)
class Pointer:
    """`.musicfs/catalog.json`: the current snapshot, and the replaced ones still kept (name, replaced at)."""

    library: str  # a random id given by the first publish and kept by the later ones
    snapshot: str  # the snapshot's path, relative to the origin's root
    sha256: str
    size: int
    files: int
    published_at: float
    retired: tuple[tuple[str, float], ...] = ()
    format: int = FORMAT

    def encode(self) -> bytes:
        return json.dumps({"format": self.format, "library": self.library, "snapshot": self.snapshot,
                           "sha256": self.sha256, "size": self.size, "files": self.files,
                           "published_at": self.published_at,
                           "retired": [{"snapshot": s, "since": t} for s, t in self.retired]}, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Pointer":
        try:
            doc = json.loads(data)
            fmt = doc["format"]
            if not isinstance(fmt, int):
                raise TypeError("format")
            if fmt > FORMAT:
                raise UnusableSnapshot(f"it was published by a newer MusicFS (format {fmt}; this one reads {FORMAT})")
            pointer = cls(library=_typed(doc["library"], str), snapshot=_typed(doc["snapshot"], str),
                          sha256=_typed(doc["sha256"], str), size=_typed(doc["size"], int),
                          files=_typed(doc["files"], int), published_at=float(_typed(doc["published_at"], (int, float))),
                          retired=tuple((_typed(r["snapshot"], str), float(_typed(r["since"], (int, float))))
                                        for r in doc.get("retired", [])), format=fmt)
        except UnusableSnapshot:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UnusableSnapshot(f"{POINTER} is damaged ({type(exc).__name__}: {exc})") from exc
        if pointer.snapshot != f"{SNAPSHOTS}{pointer.sha256}.json.gz" or not _hex64(pointer.sha256):
            raise UnusableSnapshot(f"{POINTER} names {pointer.snapshot!r}, not a snapshot of its own SHA-256")
        return pointer


def _typed(value, kind):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not {kind}")
    return value


def _hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Snapshot:
    library: str
    root: str  # the source it was published from, as its publisher named it (for messages)
    published_at: float
    tags_version: str
    rows: tuple[FileRow, ...]


def encode_snapshot(rows: list[FileRow], *, library: str, root: str, tags_version: str, published_at: float) -> bytes:
    """The snapshot's bytes: gzip'd JSON, rows in path order (gzip's own header without a time)."""
    doc = {"format": FORMAT, "library": library, "root": root, "published_at": published_at,
           "tags_version": tags_version, "columns": list(COLUMNS),
           "files": [[getattr(row, c) for c in COLUMNS] for row in sorted(rows, key=lambda r: r.path)]}
    return gzip.compress(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), mtime=0)


def decode_snapshot(data: bytes, pointer: Pointer) -> Snapshot:
    """The snapshot the pointer names, from its bytes: UnusableSnapshot unless they are exactly those bytes, of this
    format and this library, every row well formed."""
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != pointer.size or digest != pointer.sha256:
        raise UnusableSnapshot(f"{pointer.snapshot} is damaged or truncated ({len(data)} bytes, SHA-256 {digest[:12]}; "
                               f"the pointer says {pointer.size} bytes, {pointer.sha256[:12]})")
    try:
        doc = json.loads(gzip.decompress(data))
        if _typed(doc["format"], int) > FORMAT:
            raise UnusableSnapshot(f"{pointer.snapshot} was published by a newer MusicFS (format {doc['format']})")
        if doc["library"] != pointer.library:
            raise UnusableSnapshot(f"{pointer.snapshot} belongs to another library ({doc['library']}, "
                                   f"not {pointer.library})")
        columns = _typed(doc["columns"], list)
        missing = [c for c in IDENTITY_COLUMNS if c not in columns]
        if missing:
            raise UnusableSnapshot(f"{pointer.snapshot} has no {', '.join(missing)} column")
        where = {c: columns.index(c) for c in COLUMNS if c in columns}  # a newer writer's extra columns: ignored
        rows = tuple(_row(values, where, len(columns)) for values in _typed(doc["files"], list))
        return Snapshot(library=doc["library"], root=_typed(doc["root"], str),
                        published_at=float(_typed(doc["published_at"], (int, float))),
                        tags_version=_typed(doc["tags_version"], str), rows=rows)
    except UnusableSnapshot:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise UnusableSnapshot(f"{pointer.snapshot} is damaged ({type(exc).__name__}: {exc})") from exc


def _row(values: list, where: dict[str, int], width: int) -> FileRow:
    if not isinstance(values, list) or len(values) != width:
        raise ValueError(f"a file row of {len(values) if isinstance(values, list) else '?'} fields, not {width}")
    got = {c: values[i] for c, i in where.items()}
    for column, value in got.items():
        if value is not None or column in IDENTITY_COLUMNS:
            _typed(value, _TYPES[column])
    if got["kind"] not in ("track", "cover", "junk") or not is_safe_relative(got["path"]) or is_reserved(got["path"]):
        raise ValueError(f"file row {got['path']!r} ({got['kind']!r})")
    return FileRow(**got)


# -- reading -------------------------------------------------------------------------------------------------------
def fetch(origin: Origin) -> tuple[Pointer, Snapshot] | None:
    """The catalog published at `origin`: None when there is none; UnusableSnapshot when there is one that cannot
    be used; an OriginError when the origin failed."""
    pointer = fetch_pointer(origin)
    if pointer is None:
        return None
    if pointer.size > MAX_SNAPSHOT:
        raise UnusableSnapshot(f"{pointer.snapshot} would be {pointer.size} bytes")
    try:
        data = origin.read(pointer.snapshot, 0, pointer.size)
    except OriginNotFound as exc:
        raise UnusableSnapshot(f"{pointer.snapshot}, named by {POINTER}, is missing") from exc
    return pointer, decode_snapshot(data, pointer)


def check_describes(origin: Origin, snapshot: Snapshot, sample: int = SAMPLE) -> None:
    """UnusableSnapshot unless `snapshot` describes the library at `origin`: of `sample` of its tracks (spread over
    the library), at least half exist there with the size it says (a folder copied from another library has none)."""
    tracks = [row for row in snapshot.rows if row.kind == "track"]
    if not tracks:
        raise UnusableSnapshot("it lists no tracks")
    step = max(1, math.ceil(len(tracks) / sample))
    chosen = tracks[::step][:sample]

    def same(row: FileRow) -> bool:
        try:
            return origin.stat(row.path).size == row.size
        except OriginNotFound:
            return False

    with ThreadPoolExecutor(len(chosen), thread_name_prefix="published-check") as pool:
        found = sum(pool.map(same, chosen))
    if found * 2 < len(chosen):
        raise UnusableSnapshot(f"it does not describe this library: {len(chosen) - found} of {len(chosen)} sampled "
                               f"tracks are missing here or of another size (published from {snapshot.root})")


@dataclass(frozen=True)
class PublishedStatistics:
    """Where a library's catalog came from, when a published snapshot made it (status and metrics show it)."""

    snapshot: str  # its SHA-256
    origin: str  # the source it was fetched from
    published_at: float
    files: int
    revalidated: bool  # the first rescan after it has completed
    reread: int  # files whose tags that rescan read again (new or changed since the publish)


def adopt(catalog: Catalog, origin: Origin, pointer: Pointer, snapshot: Snapshot, tags_version_now: str) -> None:
    """Fill an empty catalog from `snapshot`, as a completed scan of `origin` would have (its identities: the
    next rescan compares the listing with them). Versions are recorded as first seen now."""
    catalog.upsert_files(list(snapshot.rows), checkpoint={
        "origin": origin.name, "rekeying": "0", "in_progress": "0", "completed_at": str(time.time()),
        "tags_version": snapshot.tags_version, "published_snapshot": pointer.sha256, "published_origin": origin.name,
        "published_at": str(pointer.published_at), "published_files": str(len(snapshot.rows)),
        "published_reread": ""})
    if snapshot.tags_version != tags_version_now:
        log.info("the published catalog's tags were read by another version: the revalidation reads them again")


def statistics(catalog: Catalog) -> PublishedStatistics | None:
    state = catalog.scan_state()
    if not state.get("published_snapshot"):
        return None
    reread = state.get("published_reread", "")
    return PublishedStatistics(snapshot=state["published_snapshot"], origin=state.get("published_origin", ""),
                               published_at=float(state.get("published_at") or 0),
                               files=int(state.get("published_files") or 0), revalidated=reread != "",
                               reread=int(reread or 0))


def revalidated(catalog: Catalog, reread: int) -> None:
    """After a completed scan: the first one after an adoption records how many files it read again."""
    state = catalog.scan_state()
    if state.get("published_snapshot") and state.get("published_reread", "") == "":
        catalog.set_scan_state(published_reread=str(reread))


# -- writing -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    pointer: Pointer
    removed: tuple[str, ...]  # retired snapshots removed by this publish


def publish(origin: Origin, rows: list[FileRow], *, tags_version: str, now: float | None = None,
            keep: float = KEEP_RETIRED) -> Published:
    """Write `rows` as the current snapshot at `origin`: the snapshot first, then the pointer; then the snapshots
    replaced more than `keep` seconds ago are removed. The library id of the pointer found is kept (a damaged or
    foreign pointer is replaced, with a new id)."""
    now = time.time() if now is None else now
    try:
        found = fetch_pointer(origin)
    except UnusableSnapshot as exc:
        log.warning("publish: replacing %s: %s", POINTER, exc)
        found = None
    library = found.library if found is not None else uuid.uuid4().hex
    data = encode_snapshot(rows, library=library, root=redact(origin.name), tags_version=tags_version, published_at=now)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{SNAPSHOTS}{digest}.json.gz"
    origin.write_file(name, data)
    retired = list(found.retired) if found is not None else []
    if found is not None and found.snapshot != name:
        retired.append((found.snapshot, now))
    removed, kept = [], []
    for snapshot, since in retired:
        if snapshot == name:
            continue  # published again: current once more
        if since + keep > now:
            kept.append((snapshot, since))
            continue
        try:
            origin.remove_file(snapshot)  # replaced long enough ago: no mount is still fetching it
            removed.append(snapshot)
        except OriginError as exc:
            log.warning("publish: could not remove the old snapshot %s (tried again next time): %s", snapshot, exc)
            kept.append((snapshot, since))
    pointer = Pointer(library=library, snapshot=name, sha256=digest, size=len(data), files=len(rows),
                      published_at=now, retired=tuple(kept))
    origin.write_file(POINTER, pointer.encode())
    return Published(pointer, tuple(removed))


def fetch_pointer(origin: Origin) -> Pointer | None:
    try:
        found = origin.stat(POINTER)
    except OriginNotFound:
        return None
    if found.size > MAX_POINTER:
        raise UnusableSnapshot(f"{POINTER} is {found.size} bytes: not a pointer")
    return Pointer.decode(origin.read(POINTER, 0, found.size, found))
