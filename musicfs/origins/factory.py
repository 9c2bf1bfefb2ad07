"""Turn a SOURCE argument into an Origin, with the options its kind declares (origins/options.py)."""

from __future__ import annotations

import importlib

from . import options as _options
from .base import Origin

# Keys of the config table `origin_options` per kind (S3Origin/SftpOrigin.OPTION_KEYS are the same tuples);
# declared in origins/options.py so a local-only library need not import boto3 to check them.
S3_OPTION_KEYS = _options.option_keys("s3")
SFTP_OPTION_KEYS = _options.option_keys("sftp")


def check_options(sources, options: dict, flags: dict[str, str] | None = None) -> dict:
    """A library's origin options against its SOURCEs' kinds: an option none of them knows, or a value of the
    wrong type, is a config error naming it and the kinds (exit 78), or the flag that set it (exit 2)."""
    return _options.check(sources, options, flags)


def open_origins(sources, options: dict | None = None) -> list[Origin]:
    """Every SOURCE of a library, each given the options its kind knows (checked together first)."""
    checked = check_options(sources, options or {})  # parsed once, for every kind of the library
    return [_open(source, _options.for_kind(_options.kind_of(source), checked)) for source in sources]


def open_origin(source: str, options: dict | None = None) -> Origin:
    """Build the origin for a SOURCE: a directory, s3://bucket/prefix or sftp://user@host/path.

    An option its kind does not know is refused. Nothing here connects: a library whose origins are all
    unreachable still opens (and serves its cache).
    """
    return _open(source, _options.parse(_options.kind_of(source), options))


def _open(source: str, options: dict) -> Origin:
    module, _, name = _options.KINDS[_options.kind_of(source)].cls.partition(":")
    cls = getattr(importlib.import_module(f".{module}", __package__), name)
    return cls(source) if not hasattr(cls, "from_url") else cls.from_url(source, options)
