"""An SFTP server's refusals (STATUS replies) sorted into the origin error tree; ssh's own failures are sorted by
sftp_ssh when it exits."""

from __future__ import annotations

from ..shared import (
    OriginError,
    OriginFatal,
    OriginNotFound,
    OriginPermission,
    OriginTransient,
)
from . import sftp_wire as wire
from .base import Verdict, classify_error

_STATUS_CLASSES: dict[int, type[OriginError]] = {
    wire.NO_SUCH_FILE: OriginNotFound,
    wire.PERMISSION_DENIED: OriginPermission,
    # a FAILURE the server did not name (an I/O error on its disk) may pass; a lost connection does
    wire.FAILURE: OriginTransient,
    wire.NO_CONNECTION: OriginTransient,
    wire.CONNECTION_LOST: OriginTransient,
}


def classify_sftp_error(exc: BaseException, origin: str, path: str = "") -> OriginError:
    """`exc` (a StatusError, a ProtocolError, an OSError of this machine) as an OriginError naming origin and path."""
    return classify_error(exc, origin, path, _classify)


def _classify(exc: BaseException) -> Verdict:
    if isinstance(exc, wire.StatusError):
        return _STATUS_CLASSES.get(exc.code, OriginFatal), f"SFTP server: {exc.strerror}"
    if isinstance(exc, wire.ProtocolError):
        return OriginTransient, f"bad SFTP answer: {exc}"
    if isinstance(exc, OSError):  # starting ssh failed on this machine
        return OriginFatal, f"cannot start ssh: {exc}"
    return OriginFatal, f"{type(exc).__name__}: {exc}"
