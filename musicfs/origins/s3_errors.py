"""S3's failures (botocore's client and transport errors) sorted into the origin error tree."""

from __future__ import annotations

import functools
from typing import Any, Callable

from ..shared import (
    OriginError,
    OriginFatal,
    OriginFileChanged,
    OriginNotFound,
    OriginPermission,
    OriginTimeout,
    OriginTransient,
    ShortRead,
)
from .base import Verdict, classify_error

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchVersion"}


_PERMISSION_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "RequestTimeTooSkewed",
}


_FATAL_CODES = {"NoSuchBucket", "PermanentRedirect", "AuthorizationHeaderMalformed", "InvalidBucketName"}


_CHANGED_CODES = {"PreconditionFailed", "412"}


_TIMEOUT_CODES = {"RequestTimeout", "RequestTimeoutException"}


_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "ServiceUnavailable",
    "InternalError",
    "OperationAborted",
    "503",
    "500",
    "429",
}


def _client_error_code(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    code = str(error.get("Code") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    if not status and code.isdigit():
        status = int(code)
    return code, status


def _is_incomplete_read(exc: BaseException) -> bool:
    """Does this (possibly wrapped) exception mean the body stopped early?"""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__name__ in ("IncompleteRead", "IncompleteReadError"):
            return True
        stack.append(e.__cause__)
        stack.append(e.__context__)
        stack.append((getattr(e, "kwargs", None) or {}).get("error") if isinstance(getattr(e, "kwargs", None), dict) else None)
        stack.extend(getattr(e, "args", ()))
    return False


def classify_s3_error(exc: BaseException, origin: str, key: str = "", *, bucket_level: bool = False) -> OriginError:
    """Map a boto3/botocore/urllib3 exception into the origin error tree.

    `key` names the object (for messages); `bucket_level` says the call was about
    the bucket itself (head_bucket), where a bare 404 means the bucket is missing.
    """
    import botocore.exceptions as bce

    def decide(e: BaseException) -> Verdict:
        return _classify_client_error(e, bucket_level) if isinstance(e, bce.ClientError) else _classify_transport_error(e)

    return classify_error(exc, origin, key, decide)


def _classify_client_error(exc: Any, bucket_level: bool) -> Verdict:
    """An error response from the service: decided by its error code and HTTP status."""
    code, status = _client_error_code(exc)
    message = ((getattr(exc, "response", None) or {}).get("Error") or {}).get("Message") or ""
    detail = f"{code or status}" + (f" ({message})" if message else "")
    if code == "NoSuchBucket" or (bucket_level and (status == 404 or code in _NOT_FOUND_CODES)):
        return OriginFatal, f"bucket does not exist: {detail}"
    for codes, status_matches, cls, prefix in _CLIENT_ERROR_RULES:
        if code in codes or status_matches(status):
            return cls, prefix + detail
    return OriginFatal, detail


_TransportRule = tuple[tuple[type, ...], Callable[[Any], bool] | None, type[OriginError], str]


@functools.lru_cache(maxsize=None)
def _transport_error_rules() -> tuple[_TransportRule, ...]:
    """(exception types, extra test or None, error class, message prefix); first match wins.

    Built on first use, because botocore is only imported when S3 is used.
    """
    import botocore.exceptions as bce
    import urllib3.exceptions as u3e

    timeouts = (bce.ConnectTimeoutError, bce.ReadTimeoutError, u3e.TimeoutError, TimeoutError)
    connection_problems = (
        bce.EndpointConnectionError,
        bce.ConnectionClosedError,
        bce.ConnectionError,  # botocore's: proxy, SSL, ...
        bce.HTTPClientError,  # ResponseStreamingError and friends
        u3e.ProtocolError,
        u3e.HTTPError,
        ConnectionError,  # the builtin: resets, refused, broken pipe
    )
    no_credentials = (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)
    return (
        # Timeouts first: several of these also derive from the connection errors.
        (timeouts, None, OriginTimeout, "timed out"),
        ((bce.IncompleteReadError,), None, ShortRead, "short read"),
        ((bce.ResponseStreamingError, u3e.ProtocolError), _is_incomplete_read, ShortRead, "response body cut short"),
        ((bce.SSLError,), lambda e: "CERTIFICATE_VERIFY_FAILED" in str(e), OriginFatal, "TLS certificate rejected"),
        (connection_problems, None, OriginTransient, "connection problem"),
        (no_credentials, None, OriginFatal, "no usable AWS credentials"),
        ((bce.ProfileNotFound,), None, OriginFatal, "AWS profile not found"),
        ((OSError,), lambda e: not isinstance(e, FileNotFoundError), OriginTransient, "connection problem"),
    )


def _classify_transport_error(exc: BaseException) -> Verdict:
    """No error response: the connection, the body stream, TLS or the local setup failed."""
    for types, extra_test, cls, prefix in _transport_error_rules():
        if isinstance(exc, types) and (extra_test is None or extra_test(exc)):
            return cls, f"{prefix}: {exc}"
    return OriginFatal, f"{type(exc).__name__}: {exc}"


def _is_invalid_range(exc: BaseException) -> bool:
    """Is this get_object's answer to a Range that starts at or past the end of the object?"""
    import botocore.exceptions as bce

    if not isinstance(exc, bce.ClientError):
        return False
    code, status = _client_error_code(exc)
    return code == "InvalidRange" or status == 416


# ClientError: (error codes, HTTP status test, error class, message prefix).
# First match wins, so the order is the precedence: e.g. a 504 is a timeout, not "server busy".
_CLIENT_ERROR_RULES: tuple[tuple[set[str], Callable[[int], bool], type[OriginError], str], ...] = (
    (_FATAL_CODES, lambda status: False, OriginFatal, ""),
    (_CHANGED_CODES, lambda status: status == 412, OriginFileChanged, "changed at the origin: "),
    (_NOT_FOUND_CODES, lambda status: status == 404, OriginNotFound, "not found: "),
    (_PERMISSION_CODES, lambda status: status in (401, 403), OriginPermission, "permission denied: "),
    (_TIMEOUT_CODES, lambda status: status in (408, 504), OriginTimeout, "timed out: "),
    (_THROTTLE_CODES, lambda status: status == 429 or status >= 500, OriginTransient, "server busy or failing: "),
)
