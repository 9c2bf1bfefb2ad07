"""Turn a SOURCE argument into an Origin."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Origin


def open_origin(source: str, options: dict | None = None) -> Origin:
    """Build the origin for a SOURCE: a directory, s3://bucket/prefix or sftp://user@host/path."""
    options = options or {}
    if source.startswith("s3://"):
        from .s3 import S3Origin

        return S3Origin.from_url(source, options)
    if source.startswith("sftp://"):
        from .sftp import SftpOrigin

        return SftpOrigin.from_url(source, options)
    if "://" in source:
        raise ConfigError("SOURCE", f"unsupported scheme in {source!r} (use a directory, s3:// or sftp://)")
    from .local import LocalOrigin

    return LocalOrigin(source)
