"""L1: what every origin inherits from origins/base.py, on its own (pure: no I/O, no trio): the non-strict
identity rules one by one, the change message, the default ranged reads and stream, the racy-version rule at its
boundaries, error classification and URL splitting. The mutation run of base.py uses this file (bench/mutate.py)."""

from __future__ import annotations

import dataclasses
import errno
import os

import pytest

from musicfs.origins.base import (SETTLE_MARGIN, FileStat, Identity, Origin, OriginStream, classify_error,
                                  escape_name, exhaustion, settled, split_url, unescape_name)
from musicfs.origins.memory import READ, STAT, MemoryOrigin, Request
from musicfs.shared import (LocalExhaustion, OriginError, OriginFatal, OriginFileChanged, OriginNotFound,
                            OriginTransient)


# -- Identity ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, same", [
    (Identity(10, 5, "e"), Identity(10, 5, "e"), True),
    (Identity(10, 5, "e"), Identity(11, 5, "e"), False),  # sizes both known and different
    (Identity(-1, 5, "e"), Identity(11, 5, "e"), True),  # one side does not know the size
    (Identity(10, 5, "e"), Identity(-1, 5, "e"), True),
    (Identity(0, 0, ""), Identity(0, 0, ""), True),  # an empty file is a known size
    (Identity(0, 0, ""), Identity(1, 0, ""), False),
    (Identity(10, 5, "e"), Identity(10, 6, "e"), True),  # ETags on both sides win over the mtime
    (Identity(10, 5, "e"), Identity(10, 5, "f"), False),
    (Identity(10, 5, "e"), Identity(10, 6, ""), False),  # one ETag only: the mtimes decide
    (Identity(10, 5, ""), Identity(10, 5, "f"), True),
    (Identity(10, 5, ""), Identity(10, 6, ""), False),
    (Identity(10, 0, ""), Identity(10, 6, ""), True),  # one mtime unknown: the size alone
    (Identity(10, 6, ""), Identity(10, 0, ""), True),
])
def test_not_strict_rules_one_by_one(a, b, same):
    assert a.matches(b, strict=False) is same
    assert b.matches(a, strict=False) is same  # symmetric
    assert a.matches(b) is (a == b)  # strict: all three


def test_require_names_exactly_what_differs():
    scanned = Identity(10, 5, "e")
    Identity(10, 5, "e").require(scanned, origin="o", path="a.flac")  # same: nothing raised
    with pytest.raises(OriginFileChanged) as err:
        Identity(12, 5, "f").require(scanned, origin="o", path="a.flac", when="during the read")
    assert str(err.value) == "o: a.flac changed during the read (size 10 -> 12, etag 'e' -> 'f')"
    assert (err.value.origin, err.value.path) == ("o", "a.flac")
    with pytest.raises(OriginFileChanged, match=r"since it was scanned \(mtime_ns 5 -> 6\)$"):
        Identity(10, 6, "e").require(scanned, origin="o", path="a.flac")
    Identity(10, 6, "e").require(scanned, origin="o", path="a.flac", strict=False)  # the ETag names it


def test_file_stat_carries_its_identity_both_ways():
    ident = Identity(7, 8, "x")
    stat = FileStat.of("a/b.flac", ident)
    assert stat == FileStat("a/b.flac", 7, 8, "x") and stat.identity == ident
    assert stat.same_identity(FileStat("other", 7, 8, "x"))
    assert not stat.same_identity(FileStat("a/b.flac", 7, 9, "x"))


# -- the default reads ------------------------------------------------------------------------------------------
def recording(files: dict[str, bytes], stat: FileStat | None = None):
    seen: list[Request] = []

    def handler(request: Request):
        seen.append(request)
        if request.op == STAT:
            return stat or FileStat(request.path, len(files[request.path]), 1)
        if request.op == READ:
            return files[request.path][request.offset:request.offset + request.length]
        raise OriginNotFound(request.path)

    return MemoryOrigin(handler, name="m"), seen


def test_read_ranges_of_one_range_is_one_read_with_its_expectation():
    origin, seen = recording({"a": b"0123456789"})
    expect = FileStat("a", 10, 1)
    assert Origin.read_ranges(origin, "a", [(2, 3)], expect) == [b"234"]
    assert seen == [Request(READ, "a", 2, 3, expect)]


def test_read_ranges_without_expectation_pins_the_version_the_first_range_found():
    origin, seen = recording({"a": b"0123456789"})
    assert Origin.read_ranges(origin, "a", [(0, 2), (8, 5)]) == [b"01", b"89"]
    pinned = FileStat("a", 10, 1)
    assert seen == [Request(STAT, "a"), Request(READ, "a", 0, 2, pinned), Request(READ, "a", 8, 5, pinned)]


def test_a_stream_stats_once_refuses_reads_once_closed_and_closes_on_exit():
    origin, seen = recording({"a": b"abcdef"})
    with origin.open_stream("a") as stream:
        assert isinstance(stream, OriginStream) and not stream.closed
        assert stream.read(1, 2) == b"bc" and stream.read(4, 10) == b"ef"
    assert stream.closed
    assert [r.op for r in seen] == [STAT, READ, READ]
    with pytest.raises(ValueError, match="m: stream of a is closed"):
        stream.read(0, 1)
    given = FileStat("a", 6, 3)
    with origin.open_stream("a", given) as stream:
        stream.read(0, 1)
    assert seen[-1] == Request(READ, "a", 0, 1, given)  # an expectation given is used, not a new stat


def test_the_defaults_an_origin_inherits():
    origin, _ = recording({})
    assert Origin.timestamp_resolution(origin, Identity(1)) == 2.0  # FAT's 2 s: the coarsest allowed
    assert Origin.changed_before(origin, Identity(1), 1e12) is False
    assert Origin.scan_parallelism == 4 and Origin.ordered_streams is False
    assert origin.close() is None

    class Partial(Origin):  # every abstract method must be implemented
        def walk(self):
            return iter(())

        def stat(self, path):
            raise OriginNotFound(path)

        def read(self, path, offset, length, expect=None):
            return b""

    with pytest.raises(TypeError, match="probe"):
        Partial()  # type: ignore[abstract]
    for missing in ("walk", "stat", "read"):
        cls = type("Half", (Partial,), {missing: Origin.__dict__[missing], "probe": lambda self: None})
        with pytest.raises(TypeError, match=missing):
            cls()


# -- racy versions ----------------------------------------------------------------------------------------------
class Clocked(MemoryOrigin):
    def __init__(self, resolution: float, changed_before: bool = False):
        super().__init__(lambda request: None, resolution=resolution)
        self.before = changed_before
        self.asked: list[float] = []

    def changed_before(self, identity: Identity, when: float) -> bool:
        self.asked.append(when)
        return self.before


def test_settled_at_its_boundaries():
    assert SETTLE_MARGIN == 0.25
    ident, seen = Identity(10, 1), 1000.0
    assert settled(Clocked(0.0), ident, seen, seen)  # the identity names the content
    assert settled(Clocked(-1.0), ident, seen, seen)
    whole_seconds = Clocked(1.0)
    assert not settled(whole_seconds, ident, seen, seen + 1.0)
    assert not settled(whole_seconds, ident, seen, seen + 1.24)
    assert settled(whole_seconds, ident, seen, seen + 1.25)  # exactly a resolution and the margin after
    assert whole_seconds.asked == [seen + 1.0, seen + 1.24, seen + 1.25]  # asked about the fetch's start
    assert settled(Clocked(1.0, changed_before=True), ident, seen, seen)  # the origin's own clock says so
    assert not settled(Clocked(2.0), ident, seen, seen + 2.2)


# -- errors -----------------------------------------------------------------------------------------------------
def decide(exc: BaseException):
    return OriginTransient, f"decided: {exc}"


def test_classify_error_names_origin_and_path_and_keeps_origin_errors():
    mine = OriginNotFound("x", origin="o", path="p")
    assert classify_error(mine, "o", "p", decide) is mine
    err = classify_error(ConnectionResetError("reset"), "s3://b", "a.flac", decide)
    assert type(err) is OriginTransient and str(err) == "s3://b: a.flac: decided: reset"
    assert (err.origin, err.path) == ("s3://b", "a.flac")
    assert str(classify_error(ConnectionResetError("reset"), "s3://b", "", decide)) == "s3://b: decided: reset"


def test_local_exhaustion_is_never_the_origins_fault():
    for code, words in ((errno.EMFILE, "too many open files"), (errno.ENFILE, "too many open files in the system"),
                        (errno.ENOBUFS, "no buffer space"), (errno.ENOMEM, "out of memory")):
        err = classify_error(OSError(code, "x"), "o", "p", decide)
        assert type(err) is LocalExhaustion and str(err) == f"o: p: this process is out of resources ({words}), " \
                                                           "not the origin's fault"
    assert exhaustion(OSError(errno.ECONNRESET, "x")) is None and exhaustion(None) is None


def chained(depth: int) -> BaseException:
    """An exception with EMFILE `depth` links behind it (an SDK wrapping a socket's error)."""
    exc: BaseException = OSError(errno.EMFILE, "no fds")
    for i in range(depth):
        outer = RuntimeError(f"wrapper {i}")
        if i % 2:
            outer.__cause__ = exc
        else:
            outer.__context__ = exc
        exc = outer
    return exc


def test_exhaustion_is_found_behind_wrappers_up_to_ten_deep():
    assert exhaustion(chained(0)) == "too many open files"
    assert exhaustion(chained(9)) == "too many open files"
    assert exhaustion(chained(10)) is None  # a chain is not followed for ever


@pytest.mark.parametrize("url, error", [
    ("sftp://h/music", None),
    ("s3://b/music", "not an sftp:// URL"),
    ("sftp://h/music?x=1", "query strings and fragments are not supported"),
    ("sftp://h/music#top", "query strings and fragments are not supported"),
])
def test_split_url(url, error):
    if error is None:
        parts = split_url(url, "sftp")
        assert (parts.scheme, parts.hostname, parts.path) == ("sftp", "h", "/music")
        return
    with pytest.raises(OriginFatal) as err:
        split_url(url, "sftp")
    assert str(err.value) == f"{url}: {error}" and err.value.origin == url
    assert isinstance(err.value, OriginError)


# -- sharper edges (the mutation run's survivors) ---------------------------------------------------------------
def test_identities_compare_by_value_never_by_object():
    big, same_big = 10**6, int("1000000")  # equal, and not the same int object
    etag, same_etag = "etag-1", "".join(["etag", "-1"])
    assert big is not same_big and etag is not same_etag
    assert Identity(big, 5, etag).matches(Identity(same_big, 9, same_etag), strict=False)
    assert Identity(big, 10**12).matches(Identity(same_big, int(str(10**12))), strict=False)
    Identity(same_big, 5, same_etag).require(Identity(big, 5, etag), origin="o", path="p")
    with pytest.raises(OriginFileChanged) as err:
        Identity(same_big - 1, 5, same_etag).require(Identity(big, 5, etag), origin="o", path="p")
    assert str(err.value).endswith("(size 1000000 -> 999999)")  # only what differs, whichever way it moved


def test_identities_and_stats_are_frozen_and_compared_by_keyword_too():
    ident, stat = Identity(1, 2, "e"), FileStat("p", 1, 2, "e")
    for record, field in ((ident, "size"), (stat, "size")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field, 3)
    assert ident.matches(other=Identity(1, 2, "e")) and ident.matches(other=Identity(1, 3, "e"), strict=False)
    ident.require(expected=Identity(1, 2, "e"), origin="o", path="p")


class StreamCounting(MemoryOrigin):
    def __init__(self, handler):
        super().__init__(handler, name="m")
        self.streams = 0

    def open_stream(self, path, expect=None):
        self.streams += 1
        return super().open_stream(path, expect)


def test_one_range_is_one_read_without_a_stream_and_none_is_nothing():
    origin, _ = recording({"a": b"0123456789"})
    counting = StreamCounting(origin.handler)
    assert Origin.read_ranges(counting, "a", [(3, 4)]) == [b"3456"] and counting.streams == 0
    assert Origin.read_ranges(counting, "a", [(0, 1), (9, 1)]) == [b"0", b"9"] and counting.streams == 1
    assert Origin.read_ranges(counting, "a", []) == []


def test_settled_past_the_boundary_and_for_content_names():
    ident, seen = Identity(10, 1), 1000.0
    assert settled(Clocked(1.0), ident, seen, seen + 1.3)
    assert settled(Clocked(1.0), ident, seen, seen + 100.0)
    assert settled(Clocked(-5.0), ident, seen, seen - 10.0)  # no resolution at all: never racy


def test_split_url_refuses_any_other_scheme():
    for url in ("zz://h/music", "http://h/music", "sftpx://h/music"):
        with pytest.raises(OriginFatal, match="not an sftp:// URL"):
            split_url(url, "sftp")


@pytest.mark.parametrize("raw, escaped", [
    ("plain name.flac", "plain name.flac"),
    ("caf\udce9.flac", "caf\ufdd0E9.flac"),  # a Latin-1 byte 0xE9 that is not UTF-8
    ("\udc80\udcff", "\ufdd080\ufdd0FF"),
    ("a\ufdd0b", "a\ufdd0\ufdd0b"),  # the escape character itself, doubled
    ("\ufdd0\udcc3", "\ufdd0\ufdd0\ufdd0C3"),
])
def test_names_that_are_not_utf8_are_escaped_exactly_and_back(raw, escaped):
    assert escape_name(raw) == escaped
    assert unescape_name(escaped) == raw
    escaped.encode("utf-8")  # valid text for SQLite and the index


def test_every_undecodable_byte_survives_the_round_trip():
    for byte in range(0x80, 0x100):
        name = os.fsdecode(b"x" + bytes([byte]) + b"y")
        assert os.fsencode(unescape_name(escape_name(name))) == b"x" + bytes([byte]) + b"y"
    assert unescape_name("no escapes \u00e9") == "no escapes \u00e9"


@pytest.mark.parametrize("path, safe", [
    ("a/b.flac", True), ("top.mp3", True), ("", False), ("/etc/passwd", False), ("a/../b", False), ("..", False),
    ("a//b", False), ("./a", False), ("a/\0b", False), ("a/..b/c", True)])
def test_a_safe_relative_path_stays_below_its_root(path, safe):
    from musicfs.origins.base import is_safe_relative

    assert is_safe_relative(path) is safe
