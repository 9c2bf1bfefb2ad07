"""L1: the one file Identity (origins/base.py): its stored key and its comparisons."""

from __future__ import annotations

from musicfs.library.catalog import FileRow
from musicfs.origins.base import FileStat, Identity


def test_the_key_keeps_the_stored_format():
    ident = Identity(4000, 1_700_000_000_000_000_000, "abc-2")
    assert ident.key == "4000:1700000000000000000:abc-2"
    assert Identity(12).key == "12:0:"
    row = FileRow(path="a/b.flac", kind="track", size=4000, mtime_ns=1_700_000_000_000_000_000, etag="abc-2")
    assert row.ident == ident.key and row.identity == ident
    assert row.stat() == FileStat("a/b.flac", 4000, 1_700_000_000_000_000_000, "abc-2")
    assert row.stat().identity == ident


def test_strict_compares_all_three():
    a = Identity(10, 5, "e")
    assert a.matches(Identity(10, 5, "e"))
    assert not a.matches(Identity(11, 5, "e")) and not a.matches(Identity(10, 6, "e"))
    assert not a.matches(Identity(10, 5, "f")) and not a.matches(Identity(10, 5, ""))


def test_not_strict_compares_what_both_sides_know():
    s3 = Identity(10, 5_000_000_000, "e")
    assert s3.matches(Identity(10, 9_000_000_000, "e"), strict=False)  # the ETag names the content
    assert not s3.matches(Identity(10, 5_000_000_000, "f"), strict=False)
    assert s3.matches(Identity(-1, 0, "e"), strict=False)  # a GET that did not say the size
    assert not s3.matches(Identity(11, 0, "e"), strict=False)
    sftp = Identity(10, 5_000_000_000)
    assert sftp.matches(Identity(10, 5_000_000_000, "e"), strict=False)
    assert not sftp.matches(Identity(10, 6_000_000_000), strict=False)
    size_only = Identity(10)  # a replica: its copy checked by size alone
    assert size_only.matches(Identity(10, 123, "x"), strict=False)
    assert not size_only.matches(Identity(9, 123, "x"), strict=False)
