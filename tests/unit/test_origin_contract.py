"""The Origin contract: one test body, run against every Origin implementation.

Each implementation joins through a factory in ORIGIN_FACTORIES: a callable that gets the
reference tree (a local folder built by `reference_tree`) and the pytest request, and returns
an Origin serving exactly that tree. The local factories need nothing else; the remote ones
(S3 on moto, SFTP on OpenSSH) are marked l3 and start their servers lazily, only when selected.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import pytest

from musicfs.origins.base import FileStat, Origin, escape_name
from musicfs.origins.local import LocalOrigin
from musicfs.origins.memory import MemoryOrigin, serve
from musicfs.shared.errors import OriginFileChanged, OriginNotFound
from musicfs_test_utils.faulty_origin import FaultyOrigin, Healthy

# Every offset distinguishable; larger than one 64 KiB tag block and not a multiple of anything round.
BIG = bytes((i * 7 + i // 251) % 256 for i in range(150_001))

REFERENCE: dict[str, bytes] = {
    "top.mp3": b"top level file",
    "empty.flac": b"",
    "Artist/Album/01 Song.flac": BIG,
    "Artist/Album/cover.jpg": b"\xff\xd8\xff\xe0 a tiny jpeg",
    "Artist/Album/Disc 2/02 Deep.ogg": b"deep " * 999,
    "Björk/Jóga — ünïcode ✓ 夏の雨.flac": b"unicode " * 1234,
    "one.bin": b"1",
}


def _write_reference(root: Path) -> Path:
    for rel, data in REFERENCE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "Empty Folder").mkdir()  # folders are not files: walk must not list it
    return root


# -- factories --------------------------------------------------------------------------------------
Factory = Callable[[Path, pytest.FixtureRequest], Origin]


def local_origin(root: Path, request: pytest.FixtureRequest) -> Origin:
    return LocalOrigin(root)


def memory_origin(root: Path, request: pytest.FixtureRequest) -> Origin:
    """MemoryOrigin(serve(files)) holding what the local origin lists under root (names escaped alike)."""
    local = LocalOrigin(root)
    files = {st.path: local.read(st.path, 0, st.size) for st in local.walk()}
    return MemoryOrigin(serve(files, name="memory"), name="memory")


def faulty_local_origin(root: Path, request: pytest.FixtureRequest) -> Origin:
    return FaultyOrigin(LocalOrigin(root), Healthy())


def s3_origin(root: Path, request: pytest.FixtureRequest) -> Origin:
    from musicfs.origins.s3 import S3Origin

    server = request.getfixturevalue("contract_moto_server")
    bucket = request.getfixturevalue("contract_bucket")
    prefix = f"contract/{uuid.uuid4().hex}"
    server.upload_dir(root, bucket, prefix=prefix)
    return S3Origin.from_url(f"s3://{bucket}/{prefix}", server.origin_options())


def sftp_origin(root: Path, request: pytest.FixtureRequest) -> Origin:
    from musicfs.origins.sftp import SftpOrigin

    server = request.getfixturevalue("contract_ssh_server")
    return SftpOrigin.from_url(server.url(root), server.origin_options())


ORIGIN_FACTORIES = [
    pytest.param(local_origin, id="local"),
    pytest.param(faulty_local_origin, id="faulty-local"),
    pytest.param(memory_origin, id="memory"),
    pytest.param(s3_origin, id="s3", marks=pytest.mark.l3),
    pytest.param(sftp_origin, id="sftp", marks=pytest.mark.l3),
]


@pytest.fixture(scope="module")
def contract_moto_server():
    from musicfs_test_utils.servers import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def contract_bucket(contract_moto_server) -> str:
    name = "musicfs-contract"
    contract_moto_server.make_bucket(name)
    return name


@pytest.fixture(scope="module")
def contract_ssh_server():
    from musicfs_test_utils.servers import SshServer

    with SshServer() as server:
        yield server


@pytest.fixture
def reference_tree(tmp_path) -> Path:
    return _write_reference(tmp_path / "library")


@pytest.fixture(params=ORIGIN_FACTORIES)
def origin(request, reference_tree) -> Origin:
    made = request.param(reference_tree, request)
    yield made
    made.close()


# -- the contract -------------------------------------------------------------------------------------
def test_walk_yields_every_file_once_with_its_size(origin: Origin):
    found = list(origin.walk())
    assert all(isinstance(st, FileStat) for st in found)
    paths = [st.path for st in found]
    assert len(paths) == len(set(paths)), f"walk listed a file twice: {sorted(paths)}"
    assert {st.path: st.size for st in found} == {rel: len(data) for rel, data in REFERENCE.items()}
    for st in found:
        assert not st.path.startswith("/") and "\\" not in st.path, st.path
        assert st.mtime_ns > 0, st


def test_walk_keeps_unicode_names_exact(origin: Origin):
    # NFC in, NFC out: a renormalised name would not be found again by stat/read.
    name = "Björk/Jóga — ünïcode ✓ 夏の雨.flac"
    assert name in {st.path for st in origin.walk()}
    assert origin.read(name, 0, 8) == b"unicode "


def test_stat_agrees_with_walk(origin: Origin):
    for entry in origin.walk():
        st = origin.stat(entry.path)
        assert st.path == entry.path
        assert st.size == len(REFERENCE[entry.path])
        assert st.same_identity(entry), (st, entry)


def test_reads_at_start_middle_eof_and_past_eof(origin: Origin):
    path, data = "Artist/Album/01 Song.flac", BIG
    size = len(data)
    mid = size // 2
    cases = [
        (0, 1), (0, 4096), (0, size), (0, size + 10),  # start, whole, over the end
        (mid, 1000), (mid - 70_000, 140_000),  # middle, across 64 KiB boundaries
        (size - 10, 100), (size - 1, 1),  # up to EOF: short only at EOF
        (size, 100), (size + 5000, 10),  # at and past EOF: empty
        (1234, 0),  # zero length
    ]
    for offset, length in cases:
        got = origin.read(path, offset, length)
        assert got == data[offset:offset + length], (offset, length, len(got))


def test_empty_file_reads_empty(origin: Origin):
    assert origin.stat("empty.flac").size == 0
    assert origin.read("empty.flac", 0, 100) == b""
    assert origin.read("empty.flac", 10, 100) == b""


def test_read_with_matching_expect_works(origin: Origin):
    for path, data in REFERENCE.items():
        expect = origin.stat(path)
        assert origin.read(path, 0, len(data) + 1, expect) == data, path


def test_read_with_mismatching_expect_raises_file_changed(origin: Origin):
    path = "Artist/Album/Disc 2/02 Deep.ogg"
    now = origin.stat(path)
    wrong = FileStat(path, now.size + 1, now.mtime_ns + 1_000_000_000, now.etag + "x" if now.etag else "")
    for offset in (0, now.size // 2, now.size, now.size + 100):  # also at/past EOF: never b"" for a changed file
        with pytest.raises(OriginFileChanged):
            origin.read(path, offset, 10, wrong)
    assert origin.read(path, 0, 5, now) == b"deep "  # the right identity still reads


def test_missing_path_is_not_found(origin: Origin):
    for path in ("nope.mp3", "Artist/Album/nope.flac", "Nowhere/At/All.ogg"):
        with pytest.raises(OriginNotFound):
            origin.stat(path)
        with pytest.raises(OriginNotFound):
            origin.read(path, 0, 10)


def test_probe_passes_and_close_is_idempotent(origin: Origin):
    origin.probe()
    origin.probe()
    origin.close()
    origin.close()


# -- many ranges of one file: read_ranges and streams ------------------------------------------------------
RANGES = [(0, 10), (65_536, 70_000), (149_990, 100), (150_001, 5), (3, 0), (10, 1 << 20), (1000, 64_000)]


def _expected(data: bytes, ranges) -> list[bytes]:
    return [data[offset:offset + length] for offset, length in ranges]


def test_a_written_file_replaces_whole_and_a_removed_one_is_gone(origin: Origin):
    """Only `musicfs publish` writes (library/published.py): whole files, folders made as needed, replaced at once."""
    path = ".musicfs/catalog/a/deep.bin"
    origin.write_file(path, BIG)
    assert origin.stat(path).size == len(BIG) and origin.read(path, 0, len(BIG) + 1) == BIG
    origin.write_file(path, b"short now")  # replaced, not overwritten in place: no tail of the old content
    assert origin.read(path, 0, 1000) == b"short now" and origin.stat(path).size == 9
    origin.write_file(".musicfs/top.json", b"{}")
    assert {st.path for st in origin.walk()} == set(REFERENCE) | {path, ".musicfs/top.json"}
    origin.remove_file(path)
    origin.remove_file(".musicfs/top.json")
    origin.remove_file(".musicfs/never-there")  # already gone: no error
    with pytest.raises(OriginNotFound):
        origin.stat(path)
    assert {st.path for st in origin.walk()} == set(REFERENCE)


def test_read_ranges_answers_each_range_as_read_does(origin: Origin):
    path = "Artist/Album/01 Song.flac"
    want = _expected(BIG, RANGES)
    assert origin.read_ranges(path, RANGES) == want
    assert origin.read_ranges(path, RANGES, origin.stat(path)) == want
    assert origin.read_ranges(path, []) == []
    assert origin.read_ranges("empty.flac", [(0, 10), (5, 5)], origin.stat("empty.flac")) == [b"", b""]


def test_read_ranges_with_a_mismatching_expect_raises_file_changed(origin: Origin):
    path = "Artist/Album/01 Song.flac"
    now = origin.stat(path)
    wrong = FileStat(path, now.size + 1, now.mtime_ns + 1_000_000_000, now.etag + "x" if now.etag else "")
    with pytest.raises(OriginFileChanged):
        origin.read_ranges(path, RANGES, wrong)
    with pytest.raises(OriginNotFound):
        origin.read_ranges("nope.flac", RANGES)


def test_a_stream_reads_many_ranges_from_several_threads(origin: Origin):
    from concurrent.futures import ThreadPoolExecutor

    path = "Artist/Album/01 Song.flac"
    chunks = [(offset, 16_384) for offset in range(0, len(BIG) + 16_384, 16_384)]
    with origin.open_stream(path, origin.stat(path)) as stream:
        assert stream.read(0, 10) == BIG[:10]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda r: stream.read(*r), chunks * 3))
        assert got == _expected(BIG, chunks * 3)
        assert stream.read_ranges(RANGES) == _expected(BIG, RANGES)
    with pytest.raises(ValueError):
        stream.read(0, 1)  # closed
    stream.close()  # twice is fine
    with origin.open_stream(path) as pinned:  # no expect: the version found first is pinned
        assert pinned.read_ranges(RANGES[:3]) == _expected(BIG, RANGES[:3])


def test_a_stream_refuses_a_file_that_changed_after_it_opened(origin: Origin, reference_tree: Path):
    path = "Artist/Album/Disc 2/02 Deep.ogg"
    now = origin.stat(path)
    with origin.open_stream(path, now) as stream:
        assert stream.read(0, 5) == b"deep "
        wrong = FileStat(path, now.size + 1, now.mtime_ns + 1_000_000_000, now.etag + "x" if now.etag else "")
    with origin.open_stream(path, wrong) as stale:
        with pytest.raises(OriginFileChanged):
            stale.read(0, 5)
        with pytest.raises(OriginFileChanged):
            stale.read_ranges([(0, 5), (100, 5)])


# -- names that are not UTF-8 (no S3 here: an S3 key is always UTF-8) -------------------------------
@pytest.fixture(params=[f for f in ORIGIN_FACTORIES if f.id != "s3"])
def latin1_origin(request, tmp_path) -> tuple[Origin, bytes]:
    """An origin over a folder whose folder and file names are Latin-1 bytes (0xE9), not UTF-8."""
    root = tmp_path / "latin1"
    folder = os.path.join(os.fsencode(root), b"Caf\xe9")
    os.makedirs(folder)
    with open(os.path.join(folder, b"d\xe9j\xe0 vu.flac"), "wb") as fh:
        fh.write(BIG)
    (root / "plain.flac").write_bytes(b"plain")
    made = request.param(root, request)
    yield made
    made.close()


def test_a_name_that_is_not_utf8_is_listed_and_read_by_its_real_bytes(latin1_origin: Origin):
    """Once one such name failed an SFTP walk outright, and the local walk skipped it."""
    found = {st.path: st for st in latin1_origin.walk()}
    assert set(found) == {"plain.flac", escape_name(os.fsdecode(b"Caf\xe9/d\xe9j\xe0 vu.flac"))}
    odd = next(p for p in found if p != "plain.flac")
    odd.encode("utf-8")  # storable text
    assert latin1_origin.stat(odd).size == len(BIG)
    assert latin1_origin.read(odd, 70_000, 1000, found[odd]) == BIG[70_000:71_000]
