"""L1: where two guards protect one promise (a read returns bytes of the version it expects, or
OriginFileChanged), each guard alone is needed: every test below fails when that one guard is removed.

* S3: the GET carries If-Match (the server refuses another version), and the response's own ETag is compared
  (a server that ignores If-Match still says which version it sent). A server that honours If-Match but does not
  send the ETag on ranged GETs leaves If-Match alone; one that ignores If-Match leaves the comparison alone.
* A local file: its identity is checked before the bytes are read (it changed since the scan) and after (it
  changed while it was read); neither check covers the other's case.
"""

from __future__ import annotations

import datetime
import email.utils
import io
import os
import re
from dataclasses import dataclass, field

import pytest
from musicfs.origins.local import LocalOrigin
from musicfs.origins.s3 import S3Origin
from musicfs.shared import OriginFileChanged

OLD, NEW = b"A" * 4096, b"B" * 4096  # same size: only the version tells them apart
MODIFIED = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)  # both versions in one second


@dataclass
class Bucket:
    """One object behind S3's HTTP API, answering as a given server does: HEAD through the client, GETs as the
    origin sends them (S3Origin._send_get: status, headers, body)."""

    data: bytes
    etag: str
    honours_if_match: bool = True
    sends_etag: bool = True
    gets: list[dict] = field(default_factory=list)

    def replace(self, data: bytes, etag: str) -> None:
        self.data, self.etag = data, etag

    def head_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803 (boto3's names)
        return {"ContentLength": len(self.data), "ETag": f'"{self.etag}"', "LastModified": MODIFIED}

    def send_get(self, key: str, headers: dict[str, str]) -> tuple[int, dict, io.BytesIO]:
        self.gets.append(dict(headers))
        if_match = headers.get("If-Match")
        if self.honours_if_match and if_match is not None and if_match.strip('"') != self.etag:
            return 412, {}, io.BytesIO(b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PreconditionFailed"
                                       b"</Code><Message>At least one of the pre-conditions you specified did not "
                                       b"hold</Message></Error>")
        first, last = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", headers["Range"]).groups())
        body = self.data[first:last + 1]
        answer = {"Content-Length": str(len(body)), "Last-Modified": email.utils.format_datetime(MODIFIED, True),
                  "Content-Range": f"bytes {first}-{first + len(body) - 1}/{len(self.data)}"}
        if self.sends_etag:
            answer["ETag"] = f'"{self.etag}"'
        return 206, answer, io.BytesIO(body)

    def close(self) -> None:
        pass


def s3_over(bucket: Bucket) -> S3Origin:
    origin = S3Origin("s3://b/", "b")
    origin._client = bucket  # the client it would make (HEAD): this server's behaviour instead
    origin._send_get = bucket.send_get  # and its GETs
    return origin


def read_all(origin, path, expect) -> list[bytes]:
    """A plain read, and a stream's part reads: both must hold the promise."""
    out = [origin.read(path, 0, 1024, expect)]
    with origin.open_stream(path, expect) as stream:
        out += stream.read_ranges([(0, 1024), (1024, 1024)])
    return out


@pytest.mark.parametrize("honours_if_match, sends_etag", [(True, False), (False, True), (True, True)])
def test_s3_a_replaced_object_is_never_read_for_the_old_version(honours_if_match, sends_etag):
    bucket = Bucket(OLD, "old", honours_if_match=honours_if_match, sends_etag=sends_etag)
    origin = s3_over(bucket)
    expect = origin.stat("a.flac")
    assert read_all(origin, "a.flac", expect) == [OLD[:1024], OLD[:1024], OLD[1024:2048]]
    bucket.replace(NEW, "new")
    bucket.gets.clear()
    with pytest.raises(OriginFileChanged, match="a.flac"):
        origin.read("a.flac", 0, 1024, expect)
    with pytest.raises(OriginFileChanged, match="a.flac"), origin.open_stream("a.flac", expect) as stream:
        stream.read_ranges([(0, 1024), (1024, 1024)])
    assert bucket.gets and all(g["If-Match"] == '"old"' for g in bucket.gets)


def test_s3_if_match_is_all_that_guards_a_server_without_etags_on_ranged_gets():
    bucket = Bucket(OLD, "old", honours_if_match=True, sends_etag=False)
    origin = s3_over(bucket)
    expect = origin.stat("a.flac")
    bucket.replace(NEW, "new")
    with pytest.raises(OriginFileChanged, match="changed at the origin"):  # the 412 itself
        origin.read("a.flac", 0, 1024, expect)


def test_s3_the_etag_comparison_is_all_that_guards_a_server_ignoring_if_match():
    bucket = Bucket(OLD, "old", honours_if_match=False, sends_etag=True)
    origin = s3_over(bucket)
    expect = origin.stat("a.flac")
    bucket.replace(NEW, "new")
    with pytest.raises(OriginFileChanged, match=r"etag 'old' -> 'new'"):  # the comparison's own words
        origin.read("a.flac", 0, 1024, expect)


# -- a local file -----------------------------------------------------------------------------------------------
def test_local_a_file_changed_since_the_scan_is_refused_before_reading(tmp_path):
    (tmp_path / "a.flac").write_bytes(OLD)
    origin = LocalOrigin(str(tmp_path))
    expect = origin.stat("a.flac")
    (tmp_path / "a.flac").write_bytes(NEW)  # same size, in place
    os.utime(tmp_path / "a.flac", ns=(expect.mtime_ns + 10**9, expect.mtime_ns + 10**9))
    with pytest.raises(OriginFileChanged, match="since it was scanned"):
        origin.read("a.flac", 0, 1024, expect)
    assert origin.read("a.flac", 0, 1024, origin.stat("a.flac")) == NEW[:1024]


def test_local_a_file_changed_while_it_is_read_is_refused_after_reading(tmp_path, monkeypatch):
    (tmp_path / "a.flac").write_bytes(OLD)
    origin = LocalOrigin(str(tmp_path))
    expect = origin.stat("a.flac")
    real_pread = os.pread
    edits = []

    def edited_during_the_read(fd, length, offset):
        if not edits:  # a tag editor rewrites the file in place between our checks
            edits.append(offset)
            with open(tmp_path / "a.flac", "r+b") as f:
                f.write(NEW + b"!")
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", edited_during_the_read)
    with pytest.raises(OriginFileChanged, match="while it was read"):
        origin.read("a.flac", 0, 1024, expect)
    assert edits == [0]
