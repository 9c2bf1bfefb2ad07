"""Row 4.6 in-process: a version whose timestamp could still hide another write (git's racy-clean rule) is served
to its reader but never kept, and a local file's identity holds its inode and ctime.

The reader runs over a real catalog and CAS, and a MemoryOrigin that claims whole-second timestamps; the
registry's wall clock is the test's, so the moment a version settles is exact.
"""

from __future__ import annotations

import os

import pytest

from musicfs.cache.cas import CasStore
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.library.catalog import Catalog, FileRow
from musicfs.origins.base import SETTLE_MARGIN, Identity, settled
from musicfs.origins.local import LocalOrigin
from musicfs.origins.memory import MemoryOrigin, serve
from musicfs.origins.registry import OriginRegistry
from musicfs.read import build_reader
from musicfs_test_utils.clocks import Clock, Ticking
from musicfs_test_utils.reader_rig import read_range

CHUNK = 4096
pytestmark = pytest.mark.real_clock


def test_a_version_settles_one_resolution_and_the_margin_after_it_was_seen():
    whole_seconds = MemoryOrigin(serve({}), resolution=1.0)
    v = Identity(10, 5 * 10**9)
    assert not settled(whole_seconds, v, seen=100.0, started=100.0 + 1.0 + SETTLE_MARGIN - 0.01)
    assert settled(whole_seconds, v, seen=100.0, started=100.0 + 1.0 + SETTLE_MARGIN)
    assert settled(MemoryOrigin(serve({})), v, seen=100.0, started=100.0)  # resolution 0: the identity names bytes


def test_a_local_identity_holds_inode_and_ctime_so_a_rewrite_with_its_mtime_put_back_is_a_new_version(tmp_path):
    path = tmp_path / "a.flac"
    path.write_bytes(b"1" * 100)
    origin = LocalOrigin(tmp_path)
    before = origin.stat("a.flac")
    st = os.stat(path)
    assert before.etag == f"{st.st_ino:x}-{st.st_ctime_ns:x}"
    path.write_bytes(b"2" * 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = origin.stat("a.flac")
    assert (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
    assert not after.identity.matches(before.identity)


def test_local_resolution_is_measured_from_the_file_and_its_ctime_settles_it_on_this_machine(tmp_path):
    origin = LocalOrigin(tmp_path)
    whole = Identity(1, 7 * 10**9, f"{12:x}-{7 * 10**9:x}")
    fine = Identity(1, 7 * 10**9 + 3, f"{12:x}-{7 * 10**9 + 3:x}")
    assert origin.timestamp_resolution(whole) == 2.0 and origin.timestamp_resolution(fine) < 0.1
    # before a walk or a read (in a thread) has looked at the root's filesystem, its clock is not trusted
    assert not origin.changed_before(whole, 7.0 + 2.0 + SETTLE_MARGIN)
    list(origin.walk())
    # tmp_path is on a local filesystem: its ctimes are this machine's clock
    assert origin.changed_before(whole, 7.0 + 2.0 + SETTLE_MARGIN)
    assert not origin.changed_before(whole, 7.0 + 2.0 + SETTLE_MARGIN - 0.01)


@pytest.fixture
def racy(tmp_path):
    """(reader, files, row, clock): one 3-chunk file on a whole-second origin, recorded by the catalog at the
    clock's time."""
    files = {"a.flac": bytes(range(256)) * 48}
    registry = OriginRegistry([MemoryOrigin(serve(files, mtime_ns=10**9), resolution=1.0)], backoff=0.0)
    clock = registry.wall_clock = Clock(0.0)
    catalog = Catalog(str(tmp_path / "catalog.db"))
    catalog.upsert_files([FileRow(path="a.flac", kind="track", size=len(files["a.flac"]), mtime_ns=10**9)])
    [row] = catalog.files()
    clock.now = catalog.version_seen(row.version)
    cas = CasStore(str(tmp_path / "cache"), 1 << 30)
    reader = build_reader(catalog, ChunkCache(cas), registry, chunk_size=CHUNK, memory_cache=1 << 20,
                        read_timeout=10.0)
    yield reader, files, row, clock
    cas.close()
    catalog.close()


@pytest.mark.resilience("4.6")
async def test_bytes_of_a_racy_version_are_served_never_kept_and_a_same_identity_rewrite_is_read_as_it_is(racy):
    reader, files, row, clock = racy
    clock.now += 0.5  # within a second of the version being seen: another write could keep its identity
    assert await read_range(reader, row) == files["a.flac"]
    assert reader.loader.catalog.manifest(row.version) == {}
    assert reader.statistics().racy_fetches == 3  # one fetch a chunk

    files["a.flac"] = bytes(reversed(range(256))) * 48  # same size, same mtime: the same identity
    assert await read_range(reader, row) == files["a.flac"]  # nothing of the first write was kept

    fh = await reader.open(row)
    assert not reader.settled(fh)  # the FUSE open reads it past the page cache
    clock.now += 1.0 + SETTLE_MARGIN  # settled: no write can keep this identity any more
    assert reader.settled(fh)
    reader.release(fh)
    assert await read_range(reader, row) == files["a.flac"]
    assert sorted(reader.loader.catalog.manifest(row.version)) == [0, 1, 2]
    assert reader.statistics().racy_fetches == 6  # the settled read was kept


@pytest.mark.resilience("4.6")
def test_the_scan_keeps_tag_blocks_only_of_versions_settled_when_it_read_them(tmp_path):
    from musicfs.library.scanner import Scanner
    from musicfs_test_utils.fixtures import make_library

    root = tmp_path / "lib"
    make_library(root, 3, hostile=False)
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for step, kept in ((0.0, False), (1.0 + SETTLE_MARGIN, True)):
        registry = OriginRegistry([MemoryOrigin(serve(files, mtime_ns=10**9), resolution=1.0)], backoff=0.0)
        registry.wall_clock = Ticking(1000.0, step)  # read once when the listing is done, then per file read
        got: list = []
        catalog = Catalog(str(tmp_path / f"catalog-{step}.db"))
        Scanner(catalog, registry, on_fetched=got.extend, workers=1).scan()
        assert bool(got) is kept, f"reads {step}s after the listing: blocks kept {bool(got)}"
        row = next(r for r in catalog.files() if r.kind == "track")
        assert catalog.version_seen(row.version) == 1000.0  # seen when the listing had seen every version
        catalog.close()
