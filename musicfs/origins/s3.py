"""S3Origin: objects under s3://bucket/prefix (AWS S3 or anything speaking its API).

Credentials, region and endpoint follow the standard AWS conventions (boto3's
default chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_PROFILE, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ~/.aws/...), each overridable
by an option key (see `S3Origin.OPTION_KEYS`).

One botocore client is shared by every worker thread (clients are thread-safe,
sessions are not: the client is built once, under a lock). botocore never
retries (total_max_attempts=1; its max_attempts=1 would mean one retry): retry policy lives above the origin.
GETs, the bulk of the traffic (scans, streams), go as presigned URLs on that client's connection pool
(`_get_object`), at less than half the CPU of its get_object.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as _dt
import email.utils
import html
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

from ..shared import (
    OriginError,
    OriginFatal,
    OriginTransient,
    PathEscape,
    ShortRead,
    add_secrets,
    points,
)
from .base import FileStat, Identity, Origin, OriginStream, is_safe_relative, split_url
from .options import option_keys
from .options import parse as parse_options
from .s3_errors import _is_invalid_range, classify_s3_error

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_POOL_CONNECTIONS = 32  # concurrent ranged GETs: scans, read-ahead windows


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")




def _mtime_ns(value: Any) -> int:
    """LastModified -> ns, truncated to whole seconds.

    ListObjectsV2 reports milliseconds, HEAD/GET's Last-Modified header only
    seconds: truncating keeps walk() and stat() identities comparable.
    """
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return calendar.timegm(value.utctimetuple()) * 1_000_000_000
    return 0


def _etag(value: Any) -> str:
    return str(value or "").strip().strip('"')


def _response_stat(path: str, response: dict, total: int | None) -> FileStat:
    """The object's identity as a GET reports it (size -1: unknown)."""
    return FileStat(
        path=path,
        size=total if total is not None else -1,
        mtime_ns=_mtime_ns(response.get("LastModified")),
        etag=_etag(response.get("ETag")),
    )


def _requested_bytes(body: Any, response: dict, offset: int, length: int, total: int | None) -> tuple[bytes, int]:
    """Read the body: the requested bytes, and how many there should be."""
    if response.get("ContentRange"):
        want = length if total is None else max(0, min(length, total - offset))
        return body.read(), want
    # The server ignored Range and sent the whole object (200).
    whole = body.read()
    want = max(0, min(length, len(whole) - offset))
    return whole[offset:offset + length], want


#: How long a GET's presigned URL is valid (it is sent at once).
PRESIGNED_SECONDS = 300

_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]*)</\1>")


def _client_error(status: int, document: bytes) -> Exception:
    """A refused GET as the client's ClientError (what classify_s3_error sorts): the code and message of S3's
    error document, else the HTTP status."""
    from botocore.exceptions import ClientError

    fields = {name.decode(): html.unescape(value.decode("utf-8", "replace"))
              for name, value in _ERROR_FIELD.findall(document[:4096])}
    error = {"Code": fields.get("Code") or str(status), "Message": fields.get("Message", "")}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def _http_date(value: str | None) -> _dt.datetime | None:
    """An HTTP date (Last-Modified) as a datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


#: A part GET: a stream's read of a batch goes as this many bytes per GET, all at once. A server that pays a fixed
#: cost per GET (moto: tens of ms) wants big parts; 8 MiB keeps two or more in flight for a read-ahead batch.
PART = 8 << 20


class _S3Parts(OriginStream):
    """Reads of one version of one object as concurrent part GETs, as a parallel downloader fetches a file: a read
    is cut into even ranges of about PART bytes fetched at once (through the origin's pool, up to
    max_pool_connections GETs), each one version (If-Match on the pinned identity and the response's own ETag), so an object that changes
    fails the read and never mixes. Reads of one stream may run at once (`ordered_streams` is False): read-ahead
    keeps several batches, so several parts, in flight per file."""

    def __init__(self, origin: "S3Origin", path: str, expect: FileStat | None):
        super().__init__(origin, path, expect)
        self.s3 = origin

    def read(self, offset: int, length: int) -> bytes:
        if self.closed:
            raise ValueError(f"{self.origin.name}: stream of {self.path} is closed")
        expect = self._pinned()
        count = max(1, (length + PART // 2) // PART)  # parts of about PART bytes, even: no small GET at the end
        if count == 1:
            return self.s3.read(self.path, offset, length, expect)
        size = -(-length // count)
        parts = [(at, min(size, offset + length - at)) for at in range(offset, offset + length, size)]
        return b"".join(self.s3.read_ranges(self.path, parts, expect))


#: What the S3 client takes as a bucket name (servers may be stricter: AWS wants 3 to 63 of them, in lower case).
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}")


class S3Origin(Origin):
    OPTION_KEYS = option_keys("s3")  # declared in origins/options.py

    def timestamp_resolution(self, identity: Identity) -> float:
        """An ETag names the object's content: a version is never racy (without one, S3's whole seconds)."""
        return 0.0 if identity.etag else 1.0

    def __init__(self, name: str, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 profile: str | None = None, region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, session_token: str | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, read_timeout: float = DEFAULT_READ_TIMEOUT,
                 addressing_style: str | None = None, max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS):
        if not bucket:
            raise OriginFatal(f"{name}: no bucket in the S3 URL", origin=name)
        if (access_key_id is None) != (secret_access_key is None):
            raise OriginFatal(f"{name}: access_key_id and secret_access_key must be given together", origin=name)
        self.name = name
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url or None
        self.profile = profile or None
        self.region = region or None
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._session_token = session_token
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.addressing_style = addressing_style or None
        self.max_pool_connections = int(max_pool_connections)
        self.scan_parallelism = max(1, min(32, self.max_pool_connections))  # one GET per file in flight
        self._client: Any = None
        self._lock = threading.Lock()
        self._ranges_pool: ThreadPoolExecutor | None = None  # read_ranges' concurrent GETs, made on first use

    @classmethod
    def from_url(cls, url: str, options: dict | None = None) -> "S3Origin":
        options = parse_options("s3", options)  # unknown keys and wrong types: ConfigError
        parts = split_url(url, "s3")
        bucket = parts.netloc
        if "@" in bucket or ":" in bucket:
            raise OriginFatal(f"{url}: put credentials and endpoints in options/environment, not in the URL", origin=url)
        if not _BUCKET.fullmatch(bucket):
            raise OriginFatal(f"{url}: {bucket!r} is not a bucket name (letters, digits, '.', '-' and '_' only)",
                              origin=url)
        return cls(url, bucket, parts.path, **options)  # checked and typed by parse_options

    # -- client ------------------------------------------------------------
    def _get_client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        import boto3.session
        import botocore.config

        try:
            session = boto3.session.Session(
                profile_name=self.profile,
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret_access_key,
                aws_session_token=self._session_token,
            )
            credentials = session.get_credentials()  # from the options, the environment or a profile
            if credentials is not None:
                frozen = credentials.get_frozen_credentials()
                add_secrets(frozen.access_key, frozen.secret_key, frozen.token)  # never in a log line (row 7.6)
            region = self.region or session.region_name or "us-east-1"
            s3_config: dict[str, Any] = {}
            if self.addressing_style:
                s3_config["addressing_style"] = self.addressing_style
            config = botocore.config.Config(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                retries={"total_max_attempts": 1, "mode": "standard"},  # one attempt: no botocore retry
                # The ranges executor's GETs (max_pool_connections) come on top of the reader's and the scan's
                # own threads: room for both, so connections are reused rather than discarded with a warning.
                max_pool_connections=2 * self.max_pool_connections,
                s3=s3_config or None,
            )
            return session.client("s3", region_name=region, endpoint_url=self.endpoint_url, config=config)
        except Exception as exc:  # ProfileNotFound, bad endpoint URL, bad region ...
            err = classify_s3_error(exc, self.name)
            if not isinstance(err, OriginFatal):
                err = OriginFatal(f"{self.name}: cannot set up the S3 client: {exc}", origin=self.name)
            raise err from exc

    @contextlib.contextmanager
    def _mapped(self, where: str, *, bucket_level: bool = False) -> Iterator[None]:
        """The S3 client's exceptions inside as OriginErrors naming the key (classify_s3_error): every call maps its
        errors this one way."""
        try:
            yield
        except OriginError:
            raise
        except Exception as exc:
            raise classify_s3_error(exc, self.name, where, bucket_level=bucket_level) from exc

    # -- paths -------------------------------------------------------------
    def _key(self, path: str) -> str:
        if not is_safe_relative(path):
            raise PathEscape(f"{self.name}: refusing path {path!r}", origin=self.name, path=path)
        return self.prefix + path

    # -- Origin ------------------------------------------------------------
    def walk(self) -> Iterator[FileStat]:
        client = self._get_client()
        with self._mapped(self.prefix, bucket_level=True):
            paginator = client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for obj in page.get("Contents") or ():
                    key = obj["Key"]
                    if key.endswith("/") or not key.startswith(self.prefix):
                        continue  # "directory" placeholder
                    rel = key[len(self.prefix):]
                    if not is_safe_relative(rel):
                        continue  # keys like a//b or ../x cannot be files of a library
                    yield FileStat(
                        path=rel,
                        size=int(obj.get("Size") or 0),
                        mtime_ns=_mtime_ns(obj.get("LastModified")),
                        etag=_etag(obj.get("ETag")),
                    )

    def stat(self, path: str) -> FileStat:
        key = self._key(path)
        with self._mapped(key):
            head = self._get_client().head_object(Bucket=self.bucket, Key=key)
        return FileStat(
            path=path,
            size=int(head.get("ContentLength") or 0),
            mtime_ns=_mtime_ns(head.get("LastModified")),
            etag=_etag(head.get("ETag")),
        )

    def read(self, path: str, offset: int, length: int, expect: FileStat | None = None) -> bytes:
        key = self._key(path)
        if offset < 0 or length < 0:
            raise ValueError(f"bad range offset={offset} length={length}")
        if length == 0:
            return b""
        try:
            response = self._get_object(key, offset, length, expect)
        except OriginError:
            raise
        except Exception as exc:
            if _is_invalid_range(exc):
                # At or past EOF. Still make sure the file is the one expected.
                if expect is not None:
                    self._check_identity(path, self.stat(path), expect)
                return b""
            raise classify_s3_error(exc, self.name, key) from exc
        return self._read_body(response, path, key, offset, length, expect)

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]],
                    expect: FileStat | None = None) -> list[bytes]:
        """Concurrent ranged GETs (up to max_pool_connections), each as `read`: one version per GET by
        If-Match and the response's ETag. Without `expect`, a HEAD first pins the version for all."""
        ranges = [(int(offset), int(length)) for offset, length in ranges]
        if len(ranges) <= 1:
            return [self.read(path, offset, length, expect) for offset, length in ranges]
        if expect is None:
            expect = self.stat(path)
        pool = self._ranges_executor()
        futures = [pool.submit(self.read, path, offset, length, expect) for offset, length in ranges]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()  # after an error: the GETs not started yet are not sent

    def open_stream(self, path: str, expect: FileStat | None = None) -> OriginStream:
        """Reads of one version as concurrent part GETs (see _S3Parts)."""
        return _S3Parts(self, path, expect)

    def _ranges_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._ranges_pool is None:
                self._ranges_pool = ThreadPoolExecutor(self.max_pool_connections, thread_name_prefix="s3-ranges")
            return self._ranges_pool

    def _get_object(self, key: str, offset: int, length: int, expect: FileStat | None) -> dict[str, Any]:
        """One ranged GET (If-Match on the expected ETag), answered as the client's get_object answers: a
        refusal raises ClientError (its code from the error document), else the response's fields and Body.

        Sent as a presigned URL on the client's own connection pool (its endpoint, TLS, proxy and timeouts):
        botocore's whole request pipeline costs about 2 ms of CPU per GET under the GIL, this about 0.8 ms,
        and a scan or a read-ahead stream is made of GETs."""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if expect is not None and expect.etag:
            headers["If-Match"] = f'"{expect.etag}"'
        status, answer, body = self._send_get(key, headers)
        if status >= 300:
            try:
                document = body.read()
            finally:
                body.close()
            raise _client_error(status, document)
        length_header = answer.get("Content-Length")
        return {"Body": body, "ETag": answer.get("ETag"), "LastModified": _http_date(answer.get("Last-Modified")),
                "ContentRange": answer.get("Content-Range"),
                "ContentLength": int(length_header) if length_header and length_header.isdigit() else None}

    def _send_get(self, key: str, headers: dict[str, str]) -> tuple[int, Any, Any]:
        """The HTTP exchange of a GET of `key`: (status, headers, body); the body has read() and close()."""
        from botocore.awsrequest import AWSPreparedRequest

        client = self._get_client()
        url = client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                            ExpiresIn=PRESIGNED_SECONDS)
        try:
            response = client._endpoint.http_session.send(AWSPreparedRequest("GET", url, headers, None, True))
        except Exception as exc:  # a transport error names the URL: not its signed query (one line, no token)
            kwargs = getattr(exc, "kwargs", None)
            if not isinstance(kwargs, dict) or "?" not in str(kwargs.get("endpoint_url", "")):
                raise
            raise type(exc)(**{**kwargs, "endpoint_url": url.split("?", 1)[0]}) from None
        return response.status_code, response.headers, response.raw

    def _read_body(
        self, response: dict, path: str, key: str, offset: int, length: int, expect: FileStat | None
    ) -> bytes:
        """Check the object's identity, then read and length-check the body; always closes it.

        One GET is one version of the object (If-Match and the response's own ETag say which), so a PUT
        while the body streams cannot mix versions: there is nothing to check after the read.
        """
        body = response["Body"]
        try:
            with self._mapped(key):
                total = self._total_size(response, offset)
                if expect is not None:
                    self._check_identity(path, _response_stat(path, response, total), expect)
                points.hit(points.ORIGIN_READ_CHECKED, OriginTransient)
                data, want = _requested_bytes(body, response, offset, length, total)
                if len(data) != want:
                    raise ShortRead(f"{self.name}: {key}: got {len(data)} bytes at offset {offset}, expected {want}",
                                    origin=self.name, path=key)
                return data
        finally:
            try:
                body.close()
            except Exception:
                pass

    @staticmethod
    def _total_size(response: dict, offset: int) -> int | None:
        content_range = response.get("ContentRange")
        if content_range:
            m = _CONTENT_RANGE.match(content_range.strip())
            if m and m.group(3) != "*":
                return int(m.group(3))
            return None
        length = response.get("ContentLength")
        return int(length) if length is not None else None

    def _check_identity(self, path: str, now: FileStat, expect: FileStat) -> None:
        # A GET may not say the size (-1), and a replica's expect may lack the ETag: what both know.
        now.identity.require(expect.identity, origin=self.name, path=self.prefix + path, strict=False)

    def write_file(self, path: str, data: bytes) -> None:
        """One PUT: S3 replaces an object whole, at once."""
        key = self._key(path)
        with self._mapped(key):
            self._get_client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def remove_file(self, path: str) -> None:
        key = self._key(path)
        with self._mapped(key):
            self._get_client().delete_object(Bucket=self.bucket, Key=key)  # S3: no error when already gone

    def probe(self) -> None:
        with self._mapped("", bucket_level=True):
            self._get_client().head_bucket(Bucket=self.bucket)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            pool, self._ranges_pool = self._ranges_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
