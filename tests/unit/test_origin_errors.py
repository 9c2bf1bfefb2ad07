"""Error classification of the remote origins, with constructed exceptions (no servers)."""

from __future__ import annotations

import errno
import socket

import botocore.exceptions as bce
import pytest
import urllib3.exceptions as u3e
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    IncompatiblePeer,
    NoValidConnectionsError,
    PasswordRequiredException,
    SSHException,
)

from musicfs.origins.s3 import S3Origin, classify_s3_error
from musicfs.origins.sftp import SftpOrigin
from musicfs.origins.sftp_errors import (
    UnknownHostKey,
    _keeps_connection_usable,
    classify_sftp_error,
)
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
SORIGIN = "sftp://me@nas:2222/srv/music"
SPATH = "Artist/song.flac"


class _FakeKey:
    def __init__(self, name: str, blob: str):
        self._name, self._blob = name, blob

    def get_name(self) -> str:
        return self._name

    def get_base64(self) -> str:
        return self._blob


def _timeout_wrapped_banner_error() -> SSHException:
    try:
        try:
            raise socket.timeout("timed out")
        except socket.timeout as inner:
            raise SSHException("Error reading SSH protocol banner") from inner
    except SSHException as exc:
        return exc


@pytest.mark.parametrize(
    "exc,expected",
    [
        (IOError(errno.ENOENT, "No such file"), OriginNotFound),
        (FileNotFoundError(errno.ENOENT, "No such file"), OriginNotFound),
        (IOError(errno.ENOTDIR, "Not a directory"), OriginNotFound),
        (IOError(errno.EACCES, "Permission denied"), OriginPermission),
        (PermissionError(errno.EPERM, "Operation not permitted"), OriginPermission),
        (socket.timeout("timed out"), OriginTimeout),
        (TimeoutError(), OriginTimeout),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), OriginTimeout),
        (_timeout_wrapped_banner_error(), OriginTimeout),
        (SSHException("No existing session"), OriginTimeout),
        (SSHException("Server connection dropped: "), OriginTransient),
        (SSHException("Error reading SSH protocol banner[Errno 104] Connection reset by peer"), OriginTransient),
        (EOFError(), OriginTransient),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), OriginTransient),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), OriginTransient),
        (OSError(errno.EHOSTUNREACH, "No route to host"), OriginTransient),
        (OSError("Socket is closed"), OriginTransient),
        (IOError("Failure"), OriginTransient),  # SFTP status FAILURE: no errno
        (NoValidConnectionsError({("127.0.0.1", 22): ConnectionRefusedError(errno.ECONNREFUSED, "refused")}), OriginTransient),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), OriginTransient),
        (AuthenticationException("Authentication failed."), OriginFatal),
        (PasswordRequiredException("Private key file is encrypted"), OriginFatal),
        (SSHException("No authentication methods available"), OriginFatal),
        (IncompatiblePeer("Incompatible ssh peer (no acceptable kex algorithm)"), OriginFatal),
        (UnknownHostKey("host [nas]:2222 is not in known_hosts file /k"), OriginFatal),
        (OSError(errno.EISDIR, "Is a directory"), OriginFatal),
        (ValueError("what"), OriginFatal),
    ],
)
def test_sftp_errors(exc: BaseException, expected: type[OriginError]) -> None:
    err = classify_sftp_error(exc, SORIGIN, SPATH)
    assert type(err) is expected, (exc, type(err))
    assert SORIGIN in str(err) and SPATH in str(err)
    assert err.origin == SORIGIN and err.path == SPATH


def test_sftp_bad_host_key_is_fatal_and_names_the_host() -> None:
    exc = BadHostKeyException("[nas]:2222", _FakeKey("ssh-ed25519", "AAAA1"), _FakeKey("ssh-ed25519", "AAAA2"))
    err = classify_sftp_error(exc, SORIGIN)
    assert type(err) is OriginFatal
    assert "[nas]:2222" in str(err) and "does not match" in str(err)


def test_sftp_unknown_host_policy_refuses_and_names_host_and_file(tmp_path) -> None:
    from musicfs.origins.sftp_hosts import _RejectUnknownHost

    class Key(_FakeKey):
        fingerprint = "SHA256:abc"

    policy = _RejectUnknownHost(str(tmp_path / "known_hosts"), exists=False)
    with pytest.raises(UnknownHostKey) as info:
        policy.missing_host_key(None, "[127.0.0.1]:2222", Key("ssh-ed25519", "AAAA"))
    message = str(info.value)
    assert "[127.0.0.1]:2222" in message and str(tmp_path / "known_hosts") in message
    assert "does not exist" in message
    assert type(classify_sftp_error(info.value, SORIGIN)) is OriginFatal


@pytest.mark.parametrize(
    "exc,usable",
    [
        (IOError(errno.ENOENT, "No such file"), True),
        (IOError(errno.EACCES, "Permission denied"), True),
        (IOError("Failure"), True),
        (OriginFileChanged("changed"), True),
        (socket.timeout("timed out"), False),  # a late reply would desynchronise the session
        (EOFError(), False),
        (SSHException("Server connection dropped"), False),
        (ConnectionResetError(errno.ECONNRESET, "reset"), False),
        (OSError(errno.EHOSTUNREACH, "unreachable"), False),
        (ValueError("odd"), False),
    ],
)
def test_sftp_pool_drops_connections_after_transport_errors(exc: BaseException, usable: bool) -> None:
    assert _keeps_connection_usable(exc) is usable


def test_sftp_url_parsing_and_options(tmp_path) -> None:
    key = tmp_path / "id"
    key.write_text("x")
    o = SftpOrigin.from_url("sftp://alice@nas.example:2222/srv/My%20Music/", {"identity_file": str(key), "pool_size": "2"})
    assert (o.user, o.host, o.port, o.root, o.pool_size) == ("alice", "nas.example", 2222, "/srv/My Music", 2)
    assert (o.connect_timeout, o.read_timeout) == (5.0, 10.0)
    assert o.name == "sftp://alice@nas.example:2222/srv/My%20Music/"
    assert SftpOrigin.from_url("sftp://nas/~/music", {}).root == "music"
    assert SftpOrigin.from_url("sftp://nas", {}).root == ""
    assert SftpOrigin.from_url("sftp://nas/", {}).root == "/"
    assert SftpOrigin.from_url("sftp://nas/x", {}).port == 22
    assert SftpOrigin.from_url("sftp://nas/x", {"known_hosts": "/k"}).known_hosts == "/k"
    assert SftpOrigin.from_url("sftp://nas/x", {}).known_hosts == str(__import__("pathlib").Path("~/.ssh/known_hosts").expanduser())
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\0b"):
        with pytest.raises(PathEscape):
            o.read(bad, 0, 1)  # refused before any network use
    with pytest.raises(OriginFatal) as info:
        SftpOrigin.from_url("sftp://nas/x", {"identity_file": str(tmp_path / "missing_key")})
    assert str(tmp_path / "missing_key") in str(info.value)
    with pytest.raises(OriginFatal):
        SftpOrigin.from_url("sftp://me:secret@nas/x", {})
    with pytest.raises(OriginFatal):
        SftpOrigin.from_url("sftp://nas:notaport/x", {})
    with pytest.raises(OriginFatal):
        SftpOrigin.from_url("sftp://nas/x", {"pool_size": 0})


class _FakeHandle:
    """An SFTP file handle whose server stops sending after `cut` bytes."""

    def __init__(self, data: bytes, mtime: int, cut: int | None = None):
        self.data, self.mtime, self.cut, self.pos = data, mtime, cut, 0

    def stat(self):
        attrs = type("Attrs", (), {})()
        attrs.st_size, attrs.st_mtime = len(self.data), self.mtime
        return attrs

    def seek(self, offset: int) -> None:
        self.pos = offset

    def read(self, n: int) -> bytes:
        end = len(self.data) if self.cut is None else min(len(self.data), self.cut)
        chunk = self.data[self.pos:min(end, self.pos + n, self.pos + 7)]  # servers may answer in small pieces
        self.pos += len(chunk)
        return chunk

    def readv(self, chunks, max_concurrent_prefetch_requests=None):  # as paramiko: read() per range
        for offset, size in chunks:
            self.seek(offset)
            parts = []
            while sum(map(len, parts)) < size and (part := self.read(size - sum(map(len, parts)))):
                parts.append(part)
            yield b"".join(parts)


def test_sftp_read_loop_short_read_and_identity() -> None:
    from musicfs.origins.base import FileStat

    origin = SftpOrigin.from_url("sftp://nas/srv", {})
    data = bytes(range(256)) * 4
    expect = FileStat("a.mp3", len(data), 1_700_000_000 * 10**9)
    # small pieces are joined until `length`
    assert origin._read_handle(_FakeHandle(data, 1_700_000_000), "a.mp3", [(10, 100)], expect) == [data[10:110]]
    assert origin._read_handle(_FakeHandle(data, 1_700_000_000), "a.mp3", [(1000, 100)], expect) == [data[1000:]]
    assert origin._read_handle(_FakeHandle(data, 1_700_000_000), "a.mp3", [(2000, 100)], expect) == [b""]
    assert origin._read_handle(_FakeHandle(data, 1_700_000_000), "a.mp3", [(0, 3), (2000, 1), (5, 9)],
                               expect) == [data[:3], b"", data[5:14]]
    # the stream stops mid-file: never a silent short chunk
    with pytest.raises(ShortRead) as info:
        origin._read_handle(_FakeHandle(data, 1_700_000_000, cut=50), "a.mp3", [(10, 100)], expect)
    assert "a.mp3" in str(info.value) and "40" in str(info.value)
    # identity: mtime or size differ
    with pytest.raises(OriginFileChanged):
        origin._read_handle(_FakeHandle(data, 1_700_000_001), "a.mp3", [(0, 10)], expect)
    with pytest.raises(OriginFileChanged):
        origin._read_handle(_FakeHandle(data[:-1], 1_700_000_000), "a.mp3", [(0, 10)], expect)
