"""Error classification of the remote origins, with constructed exceptions (no servers)."""

from __future__ import annotations

import errno
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
