"""Scan request economy (issue 11): a file's tags cost one origin request (head, and tail when the format
needs it, in one read_ranges), no stat beyond the listing, every read against the listing's identity; the
catalog is the one a serial scan of lazy block reads gives."""

from __future__ import annotations

import collections
import threading

import mutagen.id3
import pytest

from musicfs.library import tags
from musicfs.library.scanner import Scanner
from musicfs.origins.local import LocalOrigin
from musicfs.origins.memory import (
    READ,
    READ_RANGES,
    WALK,
    MemoryOrigin,
    Request,
    forward,
)
from musicfs.origins.registry import OriginRegistry
from musicfs.shared.errors import OriginFileChanged
from musicfs_test_utils.fixtures import make_library, open_catalog


class Counting:
    """A MemoryOrigin handler over a real origin: counts requests per file and op, checks each read passes the
    listing's identity, and answers OriginFileChanged for the paths in `change` (as if edited mid-scan)."""

    def __init__(self, origin, change: set[str] = frozenset()):
        self.inner = forward(origin)
        self.calls: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.listed: dict[str, object] = {}
        self.bad_expect: list[str] = []
        self.change = change
        self._lock = threading.Lock()

    def __call__(self, request: Request):
        if request.op == WALK:
            listing = list(self.inner(request))
            self.listed.update((st.path, st) for st in listing)
            return listing
        with self._lock:
            self.calls[request.path][request.op] += 1
        if request.op in (READ, READ_RANGES):
            if request.expect is None or request.expect != self.listed.get(request.path):
                self.bad_expect.append(request.path)
            if request.path in self.change:
                raise OriginFileChanged(f"{request.path} changed", origin="counting", path=request.path)
        return self.inner(request)


def _big_mp3(src, dest, size):
    """An MP3 of at least `size` bytes (its audio frames repeated) with an ID3v1 tag at the end too."""
    data = src.read_bytes()
    start = mutagen.id3.ID3(src).size
    audio = data[start:]
    while len(data) < size:
        data += audio
    v1 = b"TAG" + b"V1 Title".ljust(30, b"\0") + b"V1 Artist".ljust(30, b"\0") + b"\0" * 30 + b"2001" + b"\0" * 30 + b"\x00"
    dest.write_bytes(data + v1[:128])


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("scanreq") / "lib"
    make_library(root, 12)
    mp3 = next(p for p in sorted(root.rglob("*.mp3")))
    (root / "Big").mkdir()
    _big_mp3(mp3, root / "Big" / "big.mp3", 600_000)
    return root


def _scan(root, tmp_path, name, **kwargs):
    cat = open_catalog(str(tmp_path / name))
    counting = Counting(LocalOrigin(root), **{k: v for k, v in kwargs.items() if k == "change"})
    origin = MemoryOrigin(counting, name="counting", whole_ranges=True)
    Scanner(cat, OriginRegistry([origin]), **{k: v for k, v in kwargs.items() if k != "change"}).scan()
    return cat, counting


def _rows(cat):
    return sorted(({k: v for k, v in r.__dict__.items() if k != "id"} for r in cat.files()), key=lambda d: d["path"])


def test_one_request_per_file_no_stat_and_the_listings_identity(library, tmp_path):
    cat, origin = _scan(library, tmp_path, "one", workers=8, batch=5)
    try:
        tracks = [p for p in origin.listed if tags.classify(p) == "track"]
        assert tracks and not origin.bad_expect
        assert all(origin.calls[p]["stat"] == 0 for p in origin.calls)
        # one request per file (the head, and the tail when the format needs it), but for tags bigger than the
        # head (a FLAC with a 300 KB cover: its later blocks are read lazily)
        per_file = {p: sum(origin.calls[p].values()) for p in tracks}
        assert max(per_file.values()) <= 4, per_file
        assert sorted(per_file.values())[-2] == 1, per_file
        assert per_file["Big/big.mp3"] == 1 and origin.calls["Big/big.mp3"]["read_ranges"] == 1
        assert all(sum(origin.calls[p].values()) == 0 for p in origin.listed if tags.classify(p) == "cover")
    finally:
        cat.close()


def test_the_catalog_is_the_one_a_serial_lazy_scan_gives(library, tmp_path, monkeypatch):
    cat, _ = _scan(library, tmp_path, "fast", workers=8, batch=5)
    monkeypatch.setattr(tags.RangeFile, "preload", lambda self, fetch_ranges: None)  # block by block, as before
    serial, origin = _scan(library, tmp_path, "serial", workers=1, batch=200)
    try:
        assert _rows(cat) == _rows(serial)
        big = next(r for r in cat.files() if r.path == "Big/big.mp3")
        assert big.kind == "track" and big.duration
    finally:
        cat.close()
        serial.close()


@pytest.mark.expected_log(r"scan: cannot read Big/big.mp3: .*changed")
def test_a_file_changed_during_its_tag_read_is_not_recorded(library, tmp_path):
    changed = "Big/big.mp3"
    cat, origin = _scan(library, tmp_path, "changed", workers=8, batch=5, change={changed})
    try:
        paths = {r.path for r in cat.files()}
        assert changed not in paths and len(paths) == len(origin.listed) - 1
    finally:
        cat.close()


@pytest.mark.parametrize("name,size,expected", [
    ("a.flac", 10, [(0, 10)]),
    ("a.mp3", tags.HEAD + tags.TAIL + tags.BLOCK, [(0, tags.HEAD + tags.TAIL + tags.BLOCK)]),
    ("a.flac", 10 << 20, [(0, tags.HEAD)]),
    ("a.MP3", 10 << 20, [(0, tags.HEAD), ((10 << 20) - tags.TAIL, tags.TAIL)]),
    ("a.ogg", 10 * tags.BLOCK + 5, [(0, tags.HEAD), (9 * tags.BLOCK, tags.BLOCK + 5)]),
    ("a.mp3", 0, []),
])
def test_first_ranges(name, size, expected):
    assert tags.first_ranges(name, size) == expected
    for offset, _ in expected:
        assert offset % tags.BLOCK == 0  # RangeFile keeps whole blocks
