"""FileReader over a real catalog, a real CAS and a FaultyOrigin(LocalOrigin) on generated audio."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import trio

from musicfs.cache.cas import chunk_hash
from musicfs.library.catalog import FileRow
from musicfs.origins.local import LocalOrigin
from musicfs.read.reader import FileReader
from musicfs.shared.errors import OriginError, OriginFileChanged, ShortRead
from musicfs_test_utils.faulty_cas import FaultyCasStore
from musicfs_test_utils.faulty_origin import Healthy, PartialRead
from musicfs_test_utils.fixtures import make_library
from musicfs_test_utils.reader_rig import ReaderRig

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader") / "lib"
    tracks = make_library(root, 4, hostile=False)  # includes a ~350 KB FLAC (big embedded picture)
    assert max(t.size for t in tracks) > 4 * CHUNK
    return root, tracks


class Rig(ReaderRig):
    @property
    def big(self) -> FileRow:
        return max(self.rows.values(), key=lambda r: r.size)


@pytest.fixture
def rig(generated, tmp_path):
    src, _ = generated
    root = tmp_path / "lib"
    shutil.copytree(src, root)
    r = Rig.build(tmp_path, root=root, catalog_file="state/catalog.db", chunk_size=CHUNK, memory_cache=8 << 20,
                  read_timeout=30, registry_kwargs={"sleep": lambda s: None})
    yield r
    r.close()


async def read_all(reader: FileReader, row: FileRow, piece: int = 128 * 1024) -> bytes:
    """Read the whole file the way FUSE does: in fixed pieces, until a short one."""
    fh = await reader.open(row)
    try:
        out = []
        offset = 0
        while True:
            data = await reader.read(fh, offset, piece)
            out.append(data)
            offset += len(data)
            if len(data) < piece:
                return b"".join(out)
    finally:
        reader.release(fh)


def n_chunks(row: FileRow) -> int:
    return -(-row.size // CHUNK)


# -- correctness ----------------------------------------------------------------------
async def test_whole_files_are_byte_identical(rig):
    for row in rig.rows.values():
        assert await read_all(rig.reader, row) == rig.data(row), row.path
    assert rig.origin.calls["read"] == sum(n_chunks(r) for r in rig.rows.values())
    # every chunk landed in the CAS and in the manifest, hash-verified
    big = rig.big
    manifest = rig.manifest(big)
    assert sorted(manifest) == list(range(n_chunks(big)))
    data = rig.data(big)
    for idx, digest in manifest.items():
        assert digest == chunk_hash(data[idx * CHUNK : (idx + 1) * CHUNK])
        assert rig.chunk_file(digest).read_bytes() == data[idx * CHUNK : (idx + 1) * CHUNK]


async def test_random_ranges_boundaries_and_eof(rig):
    row = rig.big
    data = rig.data(row)
    fh = await rig.reader.open(row)
    rng = random.Random(20240601)
    ranges = [(rng.randrange(0, row.size), rng.randrange(1, 3 * CHUNK)) for _ in range(40)]
    ranges += [(k * CHUNK - 10, 20) for k in range(1, n_chunks(row))]  # straddle each boundary
    ranges += [(k * CHUNK, CHUNK) for k in range(n_chunks(row))]  # exactly one chunk
    ranges += [(CHUNK - 1, 2 * CHUNK + 2), (0, row.size), (0, 1), (row.size - 1, 100), (row.size - 7, 7)]
    ranges += [(row.size, 10), (row.size + 12345, 10), (5, 0)]  # at and past EOF
    for offset, size in ranges:
        assert await rig.reader.read(fh, offset, size) == data[offset : offset + size], (offset, size)
    rig.reader.release(fh)
    assert rig.origin.calls["read"] == n_chunks(row)  # each chunk fetched once, however it was sliced


async def test_repeated_reads_are_served_from_memory(rig):
    row = rig.big
    fh = await rig.reader.open(row)
    pieces = 20
    for i in range(pieces):
        assert await rig.reader.read(fh, i * 4096, 4096) == rig.data(row)[i * 4096 : (i + 1) * 4096]
    chunks = len({i * 4096 // CHUNK for i in range(pieces)})
    assert rig.origin.calls["read"] == chunks  # one fetch per chunk touched ...
    assert rig.reader.statistics().memory_hits == pieces - chunks  # ... every other piece from memory
    assert rig.reader.statistics().cache_hits == 0
    rig.reader.release(fh)


@pytest.mark.resilience("6.1")
async def test_open_files_pin_their_chunks(rig):
    row = rig.big
    fh = await rig.reader.open(row)
    await rig.reader.read(fh, 0, row.size)
    digests = set(rig.manifest(row).values())
    rig.cas.evict_to(0)
    assert all(rig.cas.has(d) for d in digests), "an open file's chunks were evicted"
    rig.reader.release(fh)
    assert rig.reader.statistics().open_files == 0
    rig.cas.evict_to(0)
    assert not any(rig.cas.has(d) for d in digests)


# -- restart and damage --------------------------------------------------------------------
async def test_restart_serves_cached_files_without_the_origin(rig):
    row = rig.big
    expected = rig.data(row)
    assert await read_all(rig.reader, row) == expected
    rig.reopen_cas()  # a new process: index reloaded from disk
    reader, origin = rig.fresh_reader()
    assert await read_all(reader, row) == expected
    assert origin.calls["read"] == 0
    assert reader.statistics().cache_hits == n_chunks(row)


@pytest.mark.resilience("6.4")
@pytest.mark.expected_log(r"musicfs.cache.cas: cache: chunk \w+ failed verification",
                          r"musicfs.cache.chunk_cache: cache: chunk \w+ failed verification.*fetching it again")
async def test_corrupt_chunk_is_refetched(rig):
    row = rig.big
    expected = rig.data(row)
    await read_all(rig.reader, row)
    digest = rig.manifest(row)[2]
    path = rig.chunk_file(digest)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))

    reader, origin = rig.fresh_reader()  # fresh memory cache: the bad file must be read
    assert await read_all(reader, row) == expected
    assert origin.calls["read"] == 1  # only the bad chunk came from the origin
    assert reader.cache.statistics().bad_chunks == 1
    assert path.read_bytes() == expected[2 * CHUNK : 3 * CHUNK]  # stored again, good this time
    assert any(name.startswith(digest) for name in os.listdir(Path(rig.cas.root) / "quarantine"))


@pytest.mark.resilience("6.5")
@pytest.mark.expected_log(r"musicfs.cache.chunk_cache: cache: chunk \w+ is not in the cache; fetching it again")
async def test_deleted_chunk_is_refetched(rig):
    row = rig.big
    expected = rig.data(row)
    await read_all(rig.reader, row)
    digest = rig.manifest(row)[n_chunks(row) - 1]  # the short last chunk
    rig.chunk_file(digest).unlink()
    reader, origin = rig.fresh_reader()
    assert await read_all(reader, row) == expected
    assert origin.calls["read"] == 1
    assert rig.chunk_file(digest).exists() and rig.cas.has(digest)


# -- origin faults ---------------------------------------------------------------------------
async def test_partial_reads_fail_and_cache_nothing(rig):
    row = rig.big
    reader, origin = rig.fresh_reader(mode=PartialRead(1000))
    fh = await reader.open(row)
    with pytest.raises(ShortRead):
        await reader.read(fh, 0, 2 * CHUNK)
    with pytest.raises(OriginError):
        await reader.read(fh, row.size - 10, 10)  # the last chunk too
    assert origin.calls["read"] >= 2  # retried: ShortRead is transient
    assert rig.cas.usage() == (0, 0)
    assert list(rig.catalog.manifest_rows()) == []
    origin.set_mode(Healthy())  # the origin recovers: the same handle now reads correctly
    assert await reader.read(fh, 0, 2 * CHUNK) == rig.data(row)[: 2 * CHUNK]
    reader.release(fh)


async def test_file_changed_at_the_origin_never_mixes_bytes(rig):
    row = rig.big
    old = rig.data(row)
    fh = await rig.reader.open(row)
    assert await rig.reader.read(fh, 0, CHUNK) == old[:CHUNK]  # chunk 0 cached under the old identity
    new = bytes(b ^ 0x5A for b in old)  # same size, every byte different
    (rig.root / row.path).write_bytes(new)
    os.utime(rig.root / row.path, ns=(row.mtime_ns + 10**9, row.mtime_ns + 10**9))
    with pytest.raises(OriginFileChanged):
        await rig.reader.read(fh, 0, row.size)
    with pytest.raises(OriginFileChanged):
        await rig.reader.read(fh, 3 * CHUNK, 10)
    rig.reader.release(fh)

    # after a rescan records the new identity, the file reads as its new self, whole
    st = LocalOrigin(rig.root).stat(row.path)
    rig.catalog.upsert_files([FileRow(path=row.path, kind="track", size=st.size, mtime_ns=st.mtime_ns, etag=st.etag)])
    fresh = rig.row(row.path)
    assert rig.manifest(row) == {}  # the old manifest went with the old identity
    reader, _ = rig.fresh_reader()
    assert await read_all(reader, fresh) == new


@pytest.mark.resilience("2.8")
@pytest.mark.expected_log(r"musicfs.cache.chunk_cache: cache: cannot store a chunk of .*serving it uncached")
async def test_full_cache_still_serves_correct_bytes(rig):
    row = rig.big
    faulty = FaultyCasStore(rig.cas)
    faulty.inject_enospc = True
    reader, origin = rig.fresh_reader(cas=faulty)
    assert await read_all(reader, row) == rig.data(row)
    assert reader.cache.statistics().uncached_reads == n_chunks(row) == origin.calls["read"]
    assert rig.cas.usage() == (0, 0)
    assert rig.manifest(row) == {}
    faulty.inject_enospc = False  # space comes back: the next reads are cached again
    assert await read_all(reader, row) == rig.data(row)
    assert sorted(rig.manifest(row)) == list(range(n_chunks(row)))


async def test_concurrent_reads_of_one_chunk_fetch_it_once(rig):
    row = rig.big
    expected = rig.data(row)
    fh = await rig.reader.open(row)
    results: dict[int, bytes] = {}

    async def reader_task(i: int) -> None:
        offset = CHUNK + 1000 * i  # ten different pieces of chunk 1
        results[i] = await rig.reader.read(fh, offset, 500)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(reader_task, i)
    assert {i: expected[CHUNK + 1000 * i : CHUNK + 1000 * i + 500] for i in range(10)} == results
    assert rig.origin.calls["read"] == 1
    rig.reader.release(fh)


async def test_concurrent_whole_file_reads_with_one_handle_each(rig):
    rows = sorted(rig.rows.values(), key=lambda r: r.path)
    handles = {row.path: await rig.reader.open(row) for row in rows}
    results: dict[tuple[str, int], bytes] = {}

    async def one(row: FileRow, n: int) -> None:
        results[row.path, n] = await rig.reader.read(handles[row.path], 0, row.size + 1)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            for row in rows:
                nursery.start_soon(one, row, n)
    for (path, _n), data in results.items():
        assert data == rig.data(rig.rows[path])
    assert rig.origin.calls["read"] == sum(n_chunks(r) for r in rows)
    for fh in handles.values():
        rig.reader.release(fh)
    assert rig.reader.statistics().open_files == 0


# -- open-file bookkeeping -------------------------------------------------------------------
async def test_concurrent_opens_of_one_file_share_one_open_file(rig):
    row = rig.big
    handles = []

    async def opener():
        handles.append(await rig.reader.open(row))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(opener)
        nursery.start_soon(opener)
    rig.reader.release(handles[0])
    assert await rig.reader.read(handles[1], 0, 10) == rig.data(row)[:10]
    rig.reader.release(handles[1])


async def test_reopen_after_a_change_does_not_leak_pins(rig):
    row = rig.big
    old_fh = await rig.reader.open(row)
    await rig.reader.read(old_fh, 0, row.size)
    old_digests = set(rig.manifest(row).values())
    newer = FileRow(**{**row.__dict__, "mtime_ns": row.mtime_ns + 1})
    (rig.root / row.path).touch()
    new_fh = await rig.reader.open(newer)  # identity moved on while the old handle is open
    rig.reader.release(old_fh)
    rig.reader.release(new_fh)
    assert rig.reader.statistics().open_files == 0
    rig.cas.evict_to(0)
    assert not any(rig.cas.has(d) for d in old_digests), "chunks of closed files are still pinned"


async def test_open_answers_within_read_timeout_when_the_catalog_hangs(rig, monkeypatch):
    import threading

    released = threading.Event()

    def stuck_manifest(*args):
        released.wait(10)
        return {}

    monkeypatch.setattr(rig.catalog, "manifest", stuck_manifest)
    rig.reader.read_timeout = 0.3
    try:
        with pytest.raises(trio.TooSlowError):
            await rig.reader.open(rig.big)
    finally:
        released.set()
    assert rig.reader.statistics().open_files == 0
