"""Scanner on a real generated library: first scan, delta rescans, deletions, junk, covers, tree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from musicfs.cache.cas import CasStore
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.commands.demo import COVER_FILES, JUNK_FILES
from musicfs.library import scanner as sync
from musicfs.library.scanner import Scanner
from musicfs.library.tree import FIRST_INO, build_tree
from musicfs.origins.base import unescape_name
from musicfs.origins.local import LocalOrigin
from musicfs.origins.registry import OriginRegistry
from musicfs.read import build_reader
from musicfs_test_utils.faulty_origin import FaultyOrigin
from musicfs_test_utils.fixtures import make_library, open_catalog
from musicfs_test_utils.reader_rig import current_row, read_range


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan") / "lib"
    return root, make_library(root, 12)


@pytest.fixture
def lib(generated, tmp_path):
    """A private copy of the generated library (mtimes preserved), so a test may change it."""
    src, tracks = generated
    root = tmp_path / "lib"
    shutil.copytree(src, root)
    return root, tracks


@pytest.fixture
def cat(tmp_path):
    c = open_catalog(str(tmp_path / "state"))
    yield c
    c.close()


def scanner(cat, root: Path, **kwargs) -> tuple[Scanner, FaultyOrigin]:
    origin = FaultyOrigin(LocalOrigin(root))
    return Scanner(cat, OriginRegistry([origin]), **kwargs), origin


def covers_in(root: Path) -> list[str]:
    return [c for c in COVER_FILES if (root / c).exists()]


def record_reads(monkeypatch) -> list[str]:
    """Paths whose tags the scanner reads (it calls sync.read_file_row for each new or changed file)."""
    seen: list[str] = []
    real = sync.read_file_row

    def spy(origin, registry, st, kind):
        seen.append(st.path)
        return real(origin, registry, st, kind)

    monkeypatch.setattr(sync, "read_file_row", spy)
    return seen


def tree_of(cat):
    return build_tree(cat.files(), cat.inode_map(), lambda keys: cat.add_inodes(keys, FIRST_INO))


def test_first_scan_records_tracks_junk_and_covers(lib, cat):
    root, tracks = lib
    covers = covers_in(root)
    assert covers and all((root / j).exists() for j in JUNK_FILES)
    result = scanner(cat, root)[0].scan()

    assert cat.count("track") == len(tracks)
    assert result.added == len(tracks) + len(covers)
    assert result.skipped == len(JUNK_FILES)
    assert (result.changed, result.removed, result.unchanged) == (0, 0, 0)
    assert {r.path for r in cat.files("track")} == {t.path for t in tracks}
    assert {r.path for r in cat.files("junk")} == set(JUNK_FILES)
    assert {r.path for r in cat.files("cover")} == set(covers)
    rows = {r.path: r for r in cat.files()}
    for t in tracks:
        row = rows[t.path]
        assert (row.artist, row.albumartist, row.album, row.title) == (t.artist, t.albumartist, t.album, t.title)
        assert (row.track_no, row.disc_no) == (t.tracknumber, t.discnumber)
        assert row.size == t.size == (root / t.path).stat().st_size
        assert row.mtime_ns == (root / t.path).stat().st_mtime_ns
        assert row.duration and row.duration > 0
    state = cat.scan_state()
    assert state["in_progress"] == "0" and float(state["completed_at"]) > 0


def test_rescan_of_an_unchanged_library_reads_no_tags(lib, cat):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    before = sorted(cat.files(), key=lambda r: r.path)
    again, origin = scanner(cat, root)
    result = again.scan()
    assert origin.calls["read"] == 0
    assert origin.calls["walk"] == 1
    assert not result.touched
    assert result.unchanged == len(tracks) + len(covers_in(root)) + len(JUNK_FILES)
    assert sorted(cat.files(), key=lambda r: r.path) == before


def test_touching_one_file_rereads_only_that_file(lib, cat, monkeypatch):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    target = tracks[len(tracks) // 2].path
    st = (root / target).stat()
    os.utime(root / target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    seen = record_reads(monkeypatch)
    again, origin = scanner(cat, root)
    result = again.scan()
    assert seen == [target]
    assert origin.calls["read"] >= 1
    assert (result.changed, result.added, result.removed) == (1, 0, 0)
    row = next(r for r in cat.files() if r.path == target)
    assert row.mtime_ns == st.st_mtime_ns + 5_000_000_000 and row.kind == "track"


def test_new_file_is_added_alone(lib, cat, monkeypatch):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    copy = "New Folder/copied.flac"
    (root / "New Folder").mkdir()
    source = next(t for t in tracks if t.format == "flac")
    shutil.copy(root / source.path, root / copy)
    seen = record_reads(monkeypatch)
    result = scanner(cat, root)[0].scan()
    assert seen == [copy]
    assert (result.added, result.changed, result.removed) == (1, 0, 0)
    assert cat.count("track") == len(tracks) + 1


def test_deleted_file_is_removed_from_catalog_and_tree(lib, cat):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    victim = tracks[0]
    tree = tree_of(cat)
    assert victim.path in {n.file.path for n in tree.walk_files()}
    os.unlink(root / victim.path)
    result = scanner(cat, root)[0].scan()
    assert result.removed == 1 and not result.added and not result.changed
    assert victim.path not in cat.identities()
    assert f"f:{victim.path}" not in cat.inode_map()
    assert cat.count("track") == len(tracks) - 1
    assert victim.path not in {n.file.path for n in tree_of(cat).walk_files()}


@pytest.mark.expected_log(r"musicfs.library.scanner: scan: .* lists no files at all")
def test_an_empty_origin_does_not_wipe_the_catalog(lib, cat, tmp_path):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = scanner(cat, empty)[0].scan()
    assert result.removed == 0 and cat.count("track") == len(tracks)


def test_catalog_and_tree_agree(lib, cat):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    tree = tree_of(cat)
    files = list(tree.walk_files())
    tracks_in_tree = [n for n in files if n.file.kind == "track"]
    assert tree.track_count == cat.count("track") == len(tracks)
    assert sorted(n.file.path for n in tracks_in_tree) == sorted(t.path for t in tracks)
    for node in files:
        on_disk = (root / node.file.path).stat()
        assert (node.size, node.mtime_ns) == (on_disk.st_size, on_disk.st_mtime_ns)
    assert not any(n.file.kind == "junk" for n in files)
    # every cover shows in the album folder of the tracks next to it
    for c in covers_in(root):
        folder = os.path.dirname(c)
        albums = {os.path.dirname(tree.path(n.ino)) for n in tracks_in_tree if os.path.dirname(n.file.path) == folder}
        shown = {os.path.dirname(tree.path(n.ino)) for n in files if n.file.path == c}
        assert shown == albums and shown
    # the same catalog gives the same tree (inodes included) when built again
    again = tree_of(cat)
    assert {tree.path(i): i for i in tree.nodes} == {again.path(i): i for i in again.nodes}


def test_small_batches_give_the_same_catalog(lib, cat, tmp_path):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    other = open_catalog(str(tmp_path / "other"))
    try:
        result = scanner(other, root, batch=3, workers=1)[0].scan()
        assert result.added == len(tracks) + len(covers_in(root))
        strip = lambda rows: sorted((r.path, r.kind, r.size, r.title, r.track_no) for r in rows)  # noqa: E731
        assert strip(other.files()) == strip(cat.files())
    finally:
        other.close()



def test_a_parallel_scan_gives_the_same_catalog_as_a_serial_one(lib, cat, tmp_path):
    root, tracks = lib
    serial = scanner(cat, root, workers=1, batch=5)[0].scan()
    other = open_catalog(str(tmp_path / "parallel"))
    try:
        parallel_scanner, origin = scanner(other, root, workers=32, batch=5)
        parallel = parallel_scanner.scan()
        assert (parallel.added, parallel.skipped) == (serial.added, serial.skipped)
        strip = lambda rows: sorted(({k: v for k, v in r.__dict__.items() if k != "id"} for r in rows),  # noqa: E731
                                    key=lambda d: d["path"])
        assert strip(other.files()) == strip(cat.files())
        rescan = scanner(other, root, workers=32)[0].scan()  # nothing changed: a listing, no tag read
        assert not rescan.touched and rescan.unchanged == serial.added + serial.skipped + serial.unchanged
    finally:
        other.close()


def test_the_default_scan_parallelism_follows_the_origin(lib, cat):
    from musicfs.origins.s3 import S3Origin
    from musicfs.origins.sftp import SftpOrigin

    root, _ = lib
    assert LocalOrigin(root).scan_parallelism == 4
    assert S3Origin("s3://b/p", "b").scan_parallelism == 32
    assert SftpOrigin("sftp://h/p", "h", "/p", pool_size=4).scan_parallelism == 64
    import threading

    from musicfs.origins.memory import READ, MemoryOrigin, forward

    seen = []
    local = forward(LocalOrigin(root))

    def counting(request):
        if request.op == READ:
            seen.append(threading.current_thread().name)
        return local(request)

    origin = MemoryOrigin(counting, name="counting")
    origin.scan_parallelism = 3
    Scanner(cat, OriginRegistry([origin])).scan()
    assert seen and len(set(seen)) <= 3

@pytest.mark.resilience("5.6")
async def test_a_file_name_that_is_not_utf8_is_scanned_shown_and_read_by_its_real_bytes(lib, cat, tmp_path):
    """A Latin-1 name (byte 0xE9) was skipped: it is catalogued escaped, shown with U+FFFD, read by its bytes."""
    import mutagen.flac

    root, tracks = lib
    source = next(t for t in tracks if t.format == "flac" and t.tagged)
    os.mkdir(os.path.join(os.fsencode(root), b"caf\xe9"))
    bad = os.path.join(os.fsencode(root), b"caf\xe9", b"d\xe9j\xe0 vu.flac")
    shutil.copy(root / source.path, bad)
    audio = mutagen.flac.FLAC(bad)
    del audio["title"]  # no title tag: the tree names the track after its file
    audio.save()
    original = open(bad, "rb").read()

    result = scanner(cat, root)[0].scan()
    assert result.skipped == len(JUNK_FILES)
    assert cat.count("track") == len(tracks) + 1
    row = next(r for r in cat.files("track") if r.path not in {t.path for t in tracks})
    assert row.path.encode("utf-8")  # storable text ...
    assert os.fsencode(os.path.join(str(root), unescape_name(row.path))) == bad  # ... naming the real bytes
    assert row.size == len(original)

    tree = tree_of(cat)
    node = next(n for n in tree.walk_files() if n.file is not None and n.file.path == row.path)
    assert node.name.endswith("d\ufffdj\ufffd vu.flac".encode())  # after the track number, if any

    assert scanner(cat, root)[0].scan().unchanged == result.added + result.unchanged + result.skipped  # stable key
    cas = CasStore(str(tmp_path / "cache"), 1 << 30)
    reader = build_reader(cat, ChunkCache(cas), OriginRegistry([LocalOrigin(root)]), chunk_size=64 << 10,
                        memory_cache=1 << 20, read_timeout=10.0)
    try:
        assert await read_range(reader, current_row(cat, row.path)) == original
        assert await read_range(reader, current_row(cat, row.path), 70_000, 5000) == original[70_000:75_000]
    finally:
        cas.close()


def test_a_track_that_turns_unreadable_counts_as_a_change(cat, lib):
    root, tracks = lib
    scanner(cat, root)[0].scan()
    victim = root / next(t.path for t in tracks if t.format == "mp3")
    victim.write_bytes(b"not audio any more" * 100)
    result = scanner(cat, root)[0].scan()
    assert result.touched and result.changed == 1 and result.skipped == 1
    assert str(victim.relative_to(root)) not in {r.path for r in cat.files("track")}


@pytest.mark.expected_log(r"replica failed|trying the next one")
def test_rescans_wait_for_the_origin_that_scanned_the_library(cat, lib, tmp_path):
    root, _ = lib
    replica = tmp_path / "replica"
    shutil.copytree(root, replica)
    primary = FaultyOrigin(LocalOrigin(root))
    registry = OriginRegistry([primary, LocalOrigin(replica)])
    Scanner(cat, registry).scan()
    before = cat.identities()
    from musicfs_test_utils.faulty_origin import ReturnError

    primary.set_mode(ReturnError("transient"))
    with pytest.raises(sync.OriginTransient, match="rescans wait"):
        Scanner(cat, OriginRegistry([primary, LocalOrigin(replica)])).scan()
    assert cat.identities() == before  # nothing re-keyed from the replica


def test_a_track_with_a_number_int_refuses_is_kept_without_the_number(lib, cat):
    """TRACKNUMBER '²' (a digit that int() refuses) once made a valid FLAC junk: the track stays, unnumbered."""
    import mutagen.flac

    root, tracks = lib
    source = next(t for t in tracks if t.format == "flac" and t.tagged)
    odd = "misc/superscript.flac"
    shutil.copy(root / source.path, root / odd)
    audio = mutagen.flac.FLAC(root / odd)
    audio["tracknumber"], audio["discnumber"], audio["title"] = "\u00b2", "A1", "Squared"
    audio.save()

    result = scanner(cat, root)[0].scan()
    assert result.skipped == len(JUNK_FILES)
    row = next(r for r in cat.files("track") if r.path == odd)
    assert (row.title, row.track_no, row.disc_no) == ("Squared", None, None)
    tree = tree_of(cat)
    assert any(n.file is not None and n.file.path == odd and n.name == b"Squared.flac" for n in tree.walk_files())


@pytest.mark.expected_log(r"catalog identities are now", r"origin .* is unhealthy")
def test_a_scan_of_another_origin_moves_the_identity_origin_only_when_it_commits(cat, lib, tmp_path):
    """No origin scanned before and the primary is down: the replica's scan re-keys the catalog; while it
    runs reads check every origin as a replica, and only its commit makes the replica the identity origin."""
    from musicfs_test_utils.faulty_origin import ReturnError

    root, _ = lib
    replica_root = tmp_path / "replica"
    shutil.copytree(root, replica_root)
    primary, replica = FaultyOrigin(LocalOrigin(root)), LocalOrigin(replica_root)
    registry = OriginRegistry([primary, replica])
    primary.set_mode(ReturnError("transient"))
    seen = []
    scan = Scanner(cat, registry, on_progress=lambda done, total: seen.append(registry.identity_origin))
    scan.scan()
    assert seen and all(o is None for o in seen)  # during the scan: no one origin's identities
    assert registry.identity_origin is replica and cat.scan_state()["rekeying"] == "0"
    fresh = OriginRegistry([FaultyOrigin(LocalOrigin(root)), LocalOrigin(replica_root)])
    sync.restore_identities(cat, fresh)  # the next start knows it too
    assert fresh.identity_origin is fresh.origins[1]
    cat.set_scan_state(rekeying="1")  # as if that scan had been interrupted
    sync.restore_identities(cat, fresh)
    assert fresh.identity_origin is None


def test_a_replica_that_scanned_first_keeps_scanning_when_the_primary_comes_back(cat, lib, tmp_path):
    """The primary was down at the first scan, so the replica keyed the catalog. Once the primary is healthy
    again, rescans still walk the replica (whose identities the catalog holds) instead of waiting forever."""
    from musicfs_test_utils.faulty_origin import Healthy, ReturnError

    root, _ = lib
    replica_root = tmp_path / "replica"
    shutil.copytree(root, replica_root)
    primary, replica = FaultyOrigin(LocalOrigin(root)), FaultyOrigin(LocalOrigin(replica_root))
    registry = OriginRegistry([primary, replica], grace=0.0)
    primary.set_mode(ReturnError("transient"))
    Scanner(cat, registry).scan()
    assert registry.identity_origin is replica

    primary.set_mode(Healthy())  # back (the health monitor's probe says so), and first in priority again
    registry.record_ok(primary, probe=True)
    assert registry.order()[0] is primary
    replica.calls.clear()
    result = Scanner(cat, registry).scan()
    assert replica.calls["walk"] == 1 and primary.calls["walk"] == 0
    assert result.changed == 0 and result.removed == 0 and registry.identity_origin is replica

    replica.set_mode(ReturnError("transient"))  # the replica down: rescans wait for it, saying why
    with pytest.raises(sync.OriginTransient, match="scanned this library and is unavailable"):
        Scanner(cat, registry).scan()
