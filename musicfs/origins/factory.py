"""Turn a SOURCE argument into an Origin."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Origin

# Keys of the config table `origin_options` (kept in step with S3Origin/SftpOrigin.OPTION_KEYS by a test);
# listed here so a local-only library need not import boto3 or paramiko to validate them.
S3_OPTION_KEYS = ("endpoint_url", "profile", "region", "access_key_id", "secret_access_key", "session_token",
                  "connect_timeout", "read_timeout", "addressing_style", "max_pool_connections")
SFTP_OPTION_KEYS = ("identity_file", "known_hosts", "password", "passphrase", "connect_timeout", "read_timeout",
                    "pool_size", "pool_timeout")


def check_options(options: dict) -> None:
    """An unknown origin option is a config error naming it (exit 78), not something silently ignored."""
    known = set(S3_OPTION_KEYS) | set(SFTP_OPTION_KEYS)
    for key in options:
        if key not in known:
            raise ConfigError(f"origin_options.{key}", f"unknown origin option; S3 takes {', '.join(S3_OPTION_KEYS)}; "
                                                       f"SFTP takes {', '.join(SFTP_OPTION_KEYS)}")


def open_origin(source: str, options: dict | None = None) -> Origin:
    """Build the origin for a SOURCE: a directory, s3://bucket/prefix or sftp://user@host/path.

    Nothing here connects: a library whose origins are all unreachable still opens (and serves its cache).
    """
    options = options or {}
    check_options(options)
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
