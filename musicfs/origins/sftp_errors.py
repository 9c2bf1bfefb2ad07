"""SFTP's failures (paramiko, sockets, SFTP status replies) sorted into the origin error tree."""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    IncompatiblePeer,
    NoValidConnectionsError,
    SSHException,
)

from ..shared import (
    OriginError,
    OriginFatal,
    OriginNotFound,
    OriginPermission,
    OriginTimeout,
    OriginTransient,
)
from .base import (
    Verdict,
    classify_error,
)

# errno values that mean "the connection/network is the problem"
_NET_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.EHOSTDOWN,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ENETRESET,
    errno.ENOTCONN,
    errno.ESHUTDOWN,
    errno.EIO,
    errno.EAGAIN,
    errno.EINTR,
    errno.EMFILE,
    errno.ENFILE,
    errno.ESTALE,
}


class UnknownHostKey(SSHException):
    """The server's host key is not in the known_hosts file: refused."""


def _timeout_in_chain(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def classify_sftp_error(exc: BaseException, origin: str, path: str = "") -> OriginError:
    """Map a paramiko / socket / SFTP-status exception into the origin error tree."""
    return classify_error(exc, origin, path, _classify)


def _prefixed(cls: type[OriginError], prefix: str) -> Callable[[Any], Verdict]:
    return lambda exc: (cls, f"{prefix}: {exc}")


def _bad_host_key(exc: BadHostKeyException) -> Verdict:
    return OriginFatal, (
        f"host key for {exc.hostname} does not match known_hosts "
        f"(got {exc.key.get_name()}, expected {exc.expected_key.get_name()}): refusing to connect"
    )


def _classify_ssh_exception(exc: SSHException) -> Verdict:
    """paramiko raises bare SSHException for many things: tell them apart by the message."""
    text = str(exc)
    if "No existing session" in text:
        # SSHClient.connect: start_client() gave up waiting for the key exchange
        return OriginTimeout, f"SSH handshake did not complete in time: {text}"
    if "No authentication methods available" in text:
        return OriginFatal, f"no SSH credentials (set identity_file or password): {text}"
    if _timeout_in_chain(exc):
        return OriginTimeout, f"SSH timed out: {text}"
    return OriginTransient, f"SSH connection problem: {text}"


def _classify_os_error(exc: OSError) -> Verdict:
    """Socket errors, and SFTP status replies (paramiko raises those as IOError with an errno)."""
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return OriginNotFound, f"no such file: {exc.strerror or exc}"
    if code in (errno.EACCES, errno.EPERM):
        return OriginPermission, f"permission denied: {exc.strerror or exc}"
    if code == errno.ETIMEDOUT:
        return OriginTimeout, f"timed out: {exc}"
    if isinstance(exc, ConnectionError) or code in _NET_ERRNOS:
        return OriginTransient, f"connection problem: {exc}"
    if code is None:
        # paramiko's "Socket is closed", or an SFTP status of plain FAILURE
        # (the server hit an error it did not name, e.g. an I/O error).
        return OriginTransient, f"SFTP failure: {exc}"
    return OriginFatal, f"{exc.strerror or exc}"


def _classify(exc: BaseException) -> Verdict:
    for exc_type, classify in _ERROR_RULES:
        if isinstance(exc, exc_type):
            return classify(exc)
    return OriginFatal, f"{type(exc).__name__}: {exc}"


def _keeps_connection_usable(exc: BaseException) -> bool:
    """After this exception, is the SFTP session still in a known state?

    Status replies from the server (no such file, permission denied, plain
    failure) and our own logical errors leave it fine; timeouts, EOF and any
    transport error leave it unusable (a late reply could be read as the
    answer to the next request).
    """
    if isinstance(exc, OriginError):
        return True
    if isinstance(exc, (TimeoutError, ConnectionError, socket.gaierror, SSHException, EOFError)):
        return False
    if isinstance(exc, OSError):
        return exc.errno in (None, errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM)
    return False


# (exception type, how to classify it); first match wins, so order matters: most
# paramiko errors derive from SSHException, and socket errors from OSError.
_ERROR_RULES: tuple[tuple[type[BaseException], Callable[[Any], Verdict]], ...] = (
    # --- never worth retrying: trust and credentials -----------------------
    (UnknownHostKey, lambda exc: (OriginFatal, str(exc))),
    (BadHostKeyException, _bad_host_key),
    (AuthenticationException, _prefixed(OriginFatal, "SSH authentication failed")),
    (IncompatiblePeer, _prefixed(OriginFatal, "no SSH algorithms in common with the server")),
    # --- the network ------------------------------------------------------
    (TimeoutError, lambda exc: (OriginTimeout, f"timed out: {exc or 'no answer'}")),  # socket.timeout is one
    (NoValidConnectionsError, _prefixed(OriginTransient, "cannot connect")),
    (socket.gaierror, _prefixed(OriginTransient, "cannot resolve host")),
    (SSHException, _classify_ssh_exception),
    (EOFError, _prefixed(OriginTransient, "connection closed by the server")),
    (OSError, _classify_os_error),
)
