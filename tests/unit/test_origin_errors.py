"""Error classification of the remote origins, with constructed exceptions (no servers)."""

from __future__ import annotations

import datetime
import errno
import io
import re
import socket

import botocore.exceptions as bce
import pytest
import urllib3.exceptions as u3e

from musicfs.origins.s3 import S3Origin, classify_s3_error
from musicfs.shared.errors import (
    OriginError,
    OriginFatal,
    OriginFileChanged,
    OriginNotFound,
    OriginPermission,
    OriginTimeout,
    OriginTransient,
    PathEscape,
    ShortRead,
)

ORIGIN = "s3://bucket/music"
KEY = "music/Artist/song.flac"


def client_error(code: str, status: int, op: str = "GetObject", message: str = "") -> bce.ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bce.ClientError(response, op)


# ---------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code,status,expected",
    [
        ("NoSuchKey", 404, OriginNotFound),
        ("404", 404, OriginNotFound),  # HEAD: no body, the code is the status
        ("NotFound", 404, OriginNotFound),
        ("AccessDenied", 403, OriginPermission),
        ("403", 403, OriginPermission),
        ("InvalidAccessKeyId", 403, OriginPermission),
        ("SignatureDoesNotMatch", 403, OriginPermission),
        ("ExpiredToken", 400, OriginPermission),
        ("NoSuchBucket", 404, OriginFatal),
        ("PreconditionFailed", 412, OriginFileChanged),
        ("412", 412, OriginFileChanged),
        ("InternalError", 500, OriginTransient),
        ("ServiceUnavailable", 503, OriginTransient),
        ("SlowDown", 503, OriginTransient),
        ("502", 502, OriginTransient),
        ("Throttling", 400, OriginTransient),
        ("ThrottlingException", 400, OriginTransient),
        ("TooManyRequestsException", 429, OriginTransient),
        ("RequestTimeout", 400, OriginTimeout),
        ("InvalidArgument", 400, OriginFatal),
        ("MalformedXML", 400, OriginFatal),
        ("SomethingNew", 418, OriginFatal),
    ],
)
def test_s3_client_errors(code: str, status: int, expected: type[OriginError]) -> None:
    err = classify_s3_error(client_error(code, status, message="boom"), ORIGIN, KEY)
    assert type(err) is expected, (code, status, type(err))
    assert ORIGIN in str(err) and KEY in str(err)
    assert err.origin == ORIGIN and err.path == KEY


def test_s3_transient_errors_are_not_timeouts_unless_they_are() -> None:
    assert type(classify_s3_error(client_error("InternalError", 500), ORIGIN, KEY)) is OriginTransient
    assert isinstance(classify_s3_error(client_error("RequestTimeout", 400), ORIGIN, KEY), OriginTransient)


def test_s3_bucket_level_404_is_fatal() -> None:
    err = classify_s3_error(client_error("404", 404, "HeadBucket"), ORIGIN, bucket_level=True)
    assert type(err) is OriginFatal
    assert "bucket" in str(err)
    # ... but the same 404 on an object is just a missing file
    assert type(classify_s3_error(client_error("404", 404, "HeadObject"), ORIGIN, KEY)) is OriginNotFound
    # 403 on the bucket stays a permission problem
    assert type(classify_s3_error(client_error("403", 403, "HeadBucket"), ORIGIN, bucket_level=True)) is OriginPermission


@pytest.mark.parametrize(
    "exc,expected",
    [
        (bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), OriginTransient),
        (bce.ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), OriginTransient),
        (bce.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), OriginTimeout),
        (bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), OriginTimeout),
        (bce.IncompleteReadError(actual_bytes=10, expected_bytes=100), ShortRead),
        (
            bce.ResponseStreamingError(
                error=u3e.ProtocolError("Connection broken: IncompleteRead", u3e.IncompleteRead(10, 90))
            ),
            ShortRead,
        ),
        (bce.ResponseStreamingError(error=u3e.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))), OriginTransient),
        (u3e.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), OriginTransient),
        (u3e.ReadTimeoutError(None, "/", "Read timed out."), OriginTimeout),
        (ConnectionResetError(errno.ECONNRESET, "reset"), OriginTransient),
        (socket.timeout("timed out"), OriginTimeout),
        (bce.SSLError(endpoint_url="https://x", error="EOF occurred in violation of protocol"), OriginTransient),
        (bce.SSLError(endpoint_url="https://x", error="[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), OriginFatal),
        (bce.NoCredentialsError(), OriginFatal),
        (bce.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), OriginFatal),
        (bce.ProfileNotFound(profile="nope"), OriginFatal),
        (bce.ParamValidationError(report="bad"), OriginFatal),
        (ValueError("what"), OriginFatal),
    ],
)
def test_s3_transport_errors(exc: BaseException, expected: type[OriginError]) -> None:
    err = classify_s3_error(exc, ORIGIN, KEY)
    assert type(err) is expected, (exc, type(err))
    assert ORIGIN in str(err) and KEY in str(err)


def test_s3_short_read_and_timeout_are_transient() -> None:
    assert issubclass(ShortRead, OriginTransient) and issubclass(OriginTimeout, OriginTransient)
    err = classify_s3_error(bce.IncompleteReadError(actual_bytes=1, expected_bytes=2), ORIGIN, KEY)
    assert err.kind == "transient"


class Answers:
    """S3's HTTP answers to the origin's GETs (S3Origin._send_get), one per GET, in order."""

    def __init__(self, *answers: tuple[int, dict, bytes]):
        self.answers = list(answers)

    def __call__(self, key, headers):
        status, fields, body = self.answers.pop(0)
        return status, fields, io.BytesIO(body)


def error_document(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Key>song.flac</Key><RequestId>4442587FB7D0A2F9</RequestId></Error>").encode()


@pytest.mark.parametrize(
    "status,body,expected,words",
    [
        (404, error_document("NoSuchKey", "The specified key does not exist."), OriginNotFound, "NoSuchKey"),
        (403, error_document("AccessDenied", "Access &amp; denied"), OriginPermission, "AccessDenied (Access & denied)"),
        (412, error_document("PreconditionFailed", "no"), OriginFileChanged, "changed at the origin"),
        (503, error_document("SlowDown", "Please reduce your request rate."), OriginTransient, "SlowDown"),
        (502, b"<html><body>Bad Gateway</body></html>", OriginTransient, "502"),  # a proxy's page, not S3's
        (400, b"", OriginFatal, "400"),
    ],
)
def test_s3_a_refused_get_is_classed_by_its_error_document(status, body, expected, words) -> None:
    origin = S3Origin(ORIGIN, "bucket", "music")
    origin._send_get = Answers((status, {}, body))
    with pytest.raises(expected, match=re.escape(words)) as caught:
        origin.read("song.flac", 0, 10)
    assert "song.flac" in str(caught.value)


def test_s3_a_get_past_the_end_reads_nothing_once_the_object_is_the_one_expected() -> None:
    origin = S3Origin(ORIGIN, "bucket", "music")
    origin._send_get = Answers((416, {}, error_document("InvalidRange", "The requested range is not satisfiable")))
    assert origin.read("song.flac", 100, 10) == b""


def test_s3_a_get_reads_its_answer_fields_and_refuses_a_short_body() -> None:
    origin = S3Origin(ORIGIN, "bucket", "music")
    fields = {"Content-Range": "bytes 0-9/100", "Content-Length": "10", "ETag": '"abc"',
              "Last-Modified": "Mon, 07 Dec 2026 17:02:19 GMT"}
    origin._send_get = Answers((206, fields, b"0123456789"), (206, fields, b"01234"))
    response = origin._get_object("music/song.flac", 0, 10, None)
    assert response["ETag"] == '"abc"' and response["ContentLength"] == 10 and response["Body"].read() == b"0123456789"
    assert response["LastModified"] == datetime.datetime(2026, 12, 7, 17, 2, 19, tzinfo=datetime.timezone.utc)
    with pytest.raises(ShortRead, match="got 5 bytes"):
        origin.read("song.flac", 0, 10)


def test_s3_a_transport_error_names_the_url_without_its_signed_query(monkeypatch) -> None:
    origin = S3Origin(ORIGIN, "bucket", "music", endpoint_url="http://127.0.0.1:9",
                      access_key_id="AKIAEXAMPLEKEY000000", secret_access_key="x" * 40, connect_timeout=0.5)
    with pytest.raises(OriginTransient) as caught:
        origin.read("song.flac", 0, 10)
    text = str(caught.value)
    assert "http://127.0.0.1:9/bucket/music/song.flac" in text and "?" not in text and "X-Amz" not in text
    origin.close()


def test_s3_origin_errors_pass_through() -> None:
    original = OriginFileChanged("x", origin=ORIGIN, path=KEY)
    assert classify_s3_error(original, ORIGIN, KEY) is original


def test_s3_url_and_paths() -> None:
    origin = S3Origin.from_url("s3://bucket/some/prefix/", {"connect_timeout": "2", "read_timeout": 3})
    assert origin.name == "s3://bucket/some/prefix/"
    assert (origin.bucket, origin.prefix) == ("bucket", "some/prefix/")
    assert (origin.connect_timeout, origin.read_timeout) == (2.0, 3.0)
    assert S3Origin.from_url("s3://bucket", {}).prefix == ""
    assert (S3Origin.from_url("s3://b", {}).connect_timeout, S3Origin.from_url("s3://b", {}).read_timeout) == (5.0, 10.0)
    for bad in ("../x", "a/../../x", "/abs", "a//b", "", "a\0b", "./a"):
        with pytest.raises(PathEscape):
            origin.read(bad, 0, 1)  # refused before any network use
    with pytest.raises(OriginFatal):
        S3Origin.from_url("s3:///prefix-without-bucket", {})
    with pytest.raises(OriginFatal):
        S3Origin.from_url("s3://b/p", {"access_key_id": "only-half"})
    with pytest.raises(OriginFatal):
        S3Origin.from_url("s3://b/p", {"connect_timeout": "soon"})


# ---------------------------------------------------------------------------
# SFTP
# ---------------------------------------------------------------------------
