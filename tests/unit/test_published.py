"""L1: published catalogs (library/published.py, publisher.py): a library's catalog left beside it, fetched and
checked by a first mount (every way a snapshot can be unusable is refused with one reason, never half used), and
revalidated by the first rescan (only files changed since the publish are read again)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import replace

import pytest

from musicfs.library import published
from musicfs.library import scanner as sync
from musicfs.library.publisher import publish_library
from musicfs.library.published import POINTER, Pointer, UnusableSnapshot
from musicfs.library.scanner import TAGS_VERSION
from musicfs.library.storage import Library
from musicfs.origins.local import LocalOrigin
from musicfs.origins.memory import WRITE, MemoryOrigin, Request, serve
from musicfs.shared.config import Config
from musicfs_test_utils.fixtures import make_file_meta, make_library, retagged_copy

ROWS = [make_file_meta(0, f"Artist/Album/{i:02d} Song.flac", 1000 + i, mtime_ns=1_700_000_000_000_000_000 + i,
                       artist="Artist", album="Album", title=f"Song {i}", track_no=i, duration=180.5)
        for i in range(1, 11)] + [make_file_meta(0, "Artist/Album/cover.jpg", 77, kind="cover")]


def holding(rows=ROWS) -> tuple[MemoryOrigin, dict[str, bytes], list[Request]]:
    """An origin holding a file of each row's size, writable, recording every request."""
    files = {row.path: b"x" * row.size for row in rows}
    inner = serve(files, name="m")
    seen: list[Request] = []

    def handler(request: Request):
        seen.append(request)
        return inner(request)

    return MemoryOrigin(handler, name="m"), files, seen


def test_a_publish_writes_the_snapshot_then_the_pointer_and_reads_back_the_same_rows():
    origin, files, seen = holding()
    done = published.publish(origin, ROWS, tags_version=TAGS_VERSION, now=1000.0)
    writes = [r.path for r in seen if r.op == WRITE]
    assert writes == [done.pointer.snapshot, POINTER]  # a reader never sees a pointer to a snapshot not yet there
    pointer, snapshot = published.fetch(origin)
    assert pointer == done.pointer and pointer.files == len(ROWS) and pointer.published_at == 1000.0
    assert [r for r in snapshot.rows] == sorted(ROWS, key=lambda r: r.path)
    assert snapshot.library == pointer.library and snapshot.tags_version == TAGS_VERSION
    assert pointer.snapshot == f".musicfs/catalog/{pointer.sha256}.json.gz"
    again = published.publish(origin, ROWS, tags_version=TAGS_VERSION, now=2000.0)
    assert again.pointer.library == pointer.library  # one library keeps its id


def test_no_pointer_is_no_published_catalog():
    origin, _, _ = holding()
    assert published.fetch(origin) is None


def published_origin():
    origin, files, seen = holding()
    published.publish(origin, ROWS, tags_version=TAGS_VERSION, now=1000.0)
    pointer = Pointer.decode(files[POINTER])
    return origin, files, pointer


@pytest.mark.parametrize("damage, words", [
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "damaged or truncated"),  # one bit
    (lambda data: data[: len(data) // 2], "damaged or truncated"),  # cut short
])
def test_a_tampered_or_truncated_snapshot_is_refused(damage, words):
    origin, files, pointer = published_origin()
    files[pointer.snapshot] = damage(files[pointer.snapshot])
    with pytest.raises(UnusableSnapshot, match=words):
        published.fetch(origin)


def test_a_snapshot_rewritten_with_a_matching_pointer_is_still_checked_row_by_row():
    origin, files, pointer = published_origin()
    doc = json.loads(gzip.decompress(files[pointer.snapshot]))
    doc["files"][0][0] = "../../etc/passwd"  # a path out of the library
    data = gzip.compress(json.dumps(doc).encode())
    forged = _repoint(files, pointer, data)
    with pytest.raises(UnusableSnapshot, match="damaged"):
        published.fetch(origin)
    doc["files"][0][0] = ".musicfs/catalog.json"  # MusicFS's own folder is never a track
    _repoint(files, forged, gzip.compress(json.dumps(doc).encode()))
    with pytest.raises(UnusableSnapshot, match="damaged"):
        published.fetch(origin)


def _repoint(files, pointer: Pointer, data: bytes) -> Pointer:
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    new = Pointer(library=pointer.library, snapshot=f".musicfs/catalog/{digest}.json.gz", sha256=digest,
                  size=len(data), files=pointer.files, published_at=pointer.published_at)
    files[new.snapshot] = data
    files[POINTER] = new.encode()
    return new


def test_a_pointer_to_a_missing_snapshot_is_refused():
    origin, files, pointer = published_origin()
    del files[pointer.snapshot]
    with pytest.raises(UnusableSnapshot, match="is missing"):
        published.fetch(origin)


@pytest.mark.parametrize("change, words", [
    (lambda doc: doc.update(format=2), "newer MusicFS"),
    (lambda doc: doc.update(sha256="0" * 64), "not a snapshot of its own SHA-256"),
    (lambda doc: doc.pop("library"), "is damaged"),
    (lambda doc: doc.update(size="big"), "is damaged"),
])
def test_a_damaged_or_too_new_pointer_is_refused(change, words):
    origin, files, _ = published_origin()
    doc = json.loads(files[POINTER])
    change(doc)
    files[POINTER] = json.dumps(doc).encode()
    with pytest.raises(UnusableSnapshot, match=words):
        published.fetch(origin)
    files[POINTER] = b"\x00not json"
    with pytest.raises(UnusableSnapshot, match="is damaged"):
        published.fetch(origin)


def test_a_snapshot_of_another_library_is_refused():
    origin, files, pointer = published_origin()
    theirs_rows = [make_file_meta(0, f"Else/{i}.mp3", 50 + i) for i in range(6)]
    other, other_files, _ = holding(theirs_rows)
    published.publish(other, theirs_rows, tags_version=TAGS_VERSION)
    theirs = Pointer.decode(other_files[POINTER])
    files[pointer.snapshot] = other_files[theirs.snapshot]  # their snapshot under our pointer's name: bytes differ
    with pytest.raises(UnusableSnapshot, match="damaged or truncated"):
        published.fetch(origin)
    files[POINTER], files[theirs.snapshot] = other_files[POINTER], other_files[theirs.snapshot]  # `.musicfs/` copied
    _, snapshot = published.fetch(origin)  # whole and sound, but not of this library's files:
    with pytest.raises(UnusableSnapshot, match="does not describe this library: 6 of 6"):
        published.check_describes(origin, snapshot)
    doc = json.loads(gzip.decompress(other_files[theirs.snapshot]))
    doc["library"] = "someone else"
    _repoint(files, Pointer.decode(other_files[POINTER]), gzip.compress(json.dumps(doc).encode()))
    with pytest.raises(UnusableSnapshot, match="belongs to another library"):
        published.fetch(origin)


def test_a_library_that_changed_a_little_is_still_described_by_its_snapshot():
    origin, files, pointer = published_origin()
    _, snapshot = published.fetch(origin)
    for row in ROWS[:3]:
        files[row.path] += b"grown"  # 3 of 10 tracks changed since: most of the sample still matches
    published.check_describes(origin, snapshot)
    for row in ROWS[3:8]:
        del files[row.path]
    with pytest.raises(UnusableSnapshot, match="does not describe"):
        published.check_describes(origin, snapshot)


def test_a_publish_racing_a_mount_leaves_the_snapshot_it_fetched_the_pointer_of():
    origin, files, first = published_origin()
    fetched_pointer = published.fetch_pointer(origin)  # a mount read the pointer...
    published.publish(origin, ROWS[:5], tags_version=TAGS_VERSION, now=1100.0)  # ...a publish lands...
    data = origin.read(fetched_pointer.snapshot, 0, fetched_pointer.size)  # ...the old snapshot is still there
    assert len(published.decode_snapshot(data, fetched_pointer).rows) == len(ROWS)
    third = published.publish(origin, ROWS[:4], tags_version=TAGS_VERSION, now=1100.0 + published.KEEP_RETIRED)
    assert third.removed == (first.snapshot,)  # replaced an hour ago: removed now
    assert first.snapshot not in files and len(third.pointer.retired) == 1  # the second: replaced just now, kept
    assert {p for p in files if p.startswith(".musicfs/catalog/")} == {third.pointer.snapshot,
                                                                       third.pointer.retired[0][0]}


def test_the_scan_never_reads_musicfs_own_folder_even_with_hidden_files(tmp_path):
    root = tmp_path / "lib"
    make_library(root, 3)
    for folder in (".musicfs", ".musicfs2"):  # MusicFS's own folder, and another hidden folder of music
        (root / folder).mkdir()
        shutil.copy(next(root.rglob("*.flac")), root / folder / "x.flac")
    cfg = replace(config(root, tmp_path, "scan"), include_hidden=True)
    lib = Library.open(cfg)
    try:
        lib.scan()
        paths = {row.path for row in lib.catalog.files()}
    finally:
        lib.close()
    assert ".musicfs2/x.flac" in paths and not any(p.startswith(".musicfs/") for p in paths)


# -- a first mount's library, on a real folder of real audio ---------------------------------------------------
def config(root, tmp_path, name: str) -> Config:
    return Config(sources=(str(root),), state_dir=str(tmp_path / name / "state"),
                  cache_dir=str(tmp_path / name / "cache")).resolved()


def test_a_new_library_starts_from_the_snapshot_and_rereads_only_what_changed(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    tracks = make_library(root, 8)
    line = publish_library(config(root, tmp_path, "publisher"), LocalOrigin(str(root)))
    assert line.startswith("published 8 tracks")
    original = shutil.copy(root / tracks[0].path, tmp_path / os.path.basename(tracks[0].path))
    changed = retagged_copy(original, root / tracks[0].path, artist="Renamed", album="Now", title="Changed")
    os.utime(changed, ns=(1, 1_800_000_000_000_000_000))
    added = retagged_copy(original, root / "New" / ("new" + os.path.splitext(tracks[0].path)[1]), artist="New", album="Album",
                          title="Added")
    read: list[str] = []
    real = sync.read_file_row
    monkeypatch.setattr(sync, "read_file_row", lambda *a, **k: read.append(a[2].path) or real(*a, **k))

    lib = Library.open(config(root, tmp_path, "mounter"))
    try:
        assert not lib.ever_scanned
        stats = lib.adopt_published()
        assert stats is not None and not stats.revalidated and read == []  # READY from it: no tag read at all
        assert lib.ever_scanned and lib.catalog.count() == 8
        assert "Renamed" not in {r.artist for r in lib.catalog.files()}  # the snapshot's view, until revalidated
        result = lib.scan()
        rel = lambda p: str(p.relative_to(root))  # noqa: E731
        assert sorted(read) == sorted([rel(changed), rel(added)])  # only what changed since the publish
        assert (result.added, result.changed) == (1, 1)
        assert lib.published_from.revalidated and lib.published_from.reread == 2
        assert "Renamed" in {r.artist for r in lib.catalog.files()} and lib.catalog.count() == 9
        lib.scan()
        assert lib.published_from.reread == 2  # the first rescan's figure stays
    finally:
        lib.close()


@pytest.mark.expected_log(r"not using the catalog published at .*is damaged or truncated")
def test_a_first_library_with_an_unusable_snapshot_scans_as_without(tmp_path, caplog):
    root = tmp_path / "lib"
    make_library(root, 4)
    publish_library(config(root, tmp_path, "publisher"), LocalOrigin(str(root)))
    pointer = Pointer.decode((root / POINTER).read_bytes())
    (root / pointer.snapshot).write_bytes(b"garbage")
    lib = Library.open(config(root, tmp_path, "mounter"))
    try:
        assert lib.adopt_published() is None and not lib.ever_scanned and lib.catalog.count() == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "not using the catalog published at" in warnings[0]
        assert lib.published_from is None
    finally:
        lib.close()


def test_republishing_reads_only_what_changed_since_the_last_publish(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    tracks = make_library(root, 6)
    cfg = config(root, tmp_path, "publisher")
    publish_library(cfg, LocalOrigin(str(root)))
    original = shutil.copy(root / tracks[2].path, tmp_path / os.path.basename(tracks[2].path))
    retagged_copy(original, root / tracks[2].path, artist="Again", album="A", title="B")
    read: list[str] = []
    real = sync.read_file_row
    monkeypatch.setattr(sync, "read_file_row", lambda *a, **k: read.append(a[2].path) or real(*a, **k))
    line = publish_library(cfg, LocalOrigin(str(root)))
    assert len(read) == 1 and "1 read" in line and "from the snapshot published" in line


@pytest.mark.expected_log(r"not using the catalog published at .*does not describe this library")
def test_with_replicas_the_first_that_has_a_usable_catalog_gives_it(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    make_library(second, 5)
    shutil.copytree(second, first)
    publish_library(config(second, tmp_path, "publisher"), LocalOrigin(str(second)))
    cfg = Config(sources=(str(first), str(second)), state_dir=str(tmp_path / "m" / "state"),
                 cache_dir=str(tmp_path / "m" / "cache")).resolved()
    lib = Library.open(cfg)
    try:  # the first replica has no pointer: the second's catalog, and the second's identities from now on
        stats = lib.adopt_published()
        assert stats is not None and stats.origin == cfg.sources[1]
        assert lib.registry.identity_origin is lib.registry.origins[1]
        assert lib.catalog.scan_state()["origin"] == cfg.sources[1]
    finally:
        lib.close()
    other = tmp_path / "other"
    make_library(other / "Elsewhere", 3)  # another library: none of its paths are this one's
    publish_library(config(other, tmp_path, "other-publisher"), LocalOrigin(str(other)))
    shutil.copytree(other / ".musicfs", first / ".musicfs")  # another library's catalog copied into the first
    cfg = replace(cfg, state_dir=str(tmp_path / "n" / "state"), cache_dir=str(tmp_path / "n" / "cache"))
    lib = Library.open(cfg)
    try:
        stats = lib.adopt_published()
        assert stats is not None and stats.origin == cfg.sources[1]  # the first's is refused, with one warning
    finally:
        lib.close()
