"""Every origin kind, declared once (`KINDS`: its scheme, display name, options and class), and the checks of
the options (config table `origin_options`).

Imports no SDK (boto3): a library is checked before any origin is built, and a local-only one never
loads the remote libraries. An option that no source kind of the library knows, or a value of the wrong type,
is a ConfigError naming `origin_options.<key>` (exit 78); an option that came from a flag (`--sftp-identity`)
is a BadArgument naming the flag (exit 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from ..shared import BadArgument, ConfigError, OriginFatal


class OptionError(ConfigError, OriginFatal):
    """A bad origin option: a config error naming `origin_options.<key>` (exit 78) and, to code that builds
    origins directly (`S3Origin.from_url`), an OriginFatal: retrying will not help."""


@dataclass(frozen=True)
class Option:
    key: str
    type: str  # "text", "seconds" (a finite number > 0), "count" (a whole number >= 1), or "choice"
    choices: tuple[str, ...] = ()


def _text(*keys: str) -> tuple[Option, ...]:
    return tuple(Option(k, "text") for k in keys)


def _seconds(*keys: str) -> tuple[Option, ...]:
    return tuple(Option(k, "seconds") for k in keys)


@dataclass(frozen=True)
class Kind:
    """One kind of origin: the scheme of its SOURCEs ("" for a directory), its name in messages, the options it
    knows (README "Origin options" lists them), and its class ("module:Class", imported only when one is built:
    a local-only library never loads boto3)."""

    scheme: str
    name: str
    options: tuple[Option, ...]
    cls: str


# The one declaration of every kind.
KINDS: dict[str, Kind] = {
    "local": Kind("", "local", (), "local:LocalOrigin"),
    "s3": Kind("s3", "S3", _text("endpoint_url", "profile", "region", "access_key_id", "secret_access_key",
                                  "session_token") + _seconds("connect_timeout", "read_timeout")
               + (Option("addressing_style", "choice", ("auto", "virtual", "path")), Option("max_pool_connections",
                                                                                             "count")),
               "s3:S3Origin"),
    "sftp": Kind("sftp", "SFTP", _text("identity_file", "known_hosts", "password", "passphrase")
                 + _seconds("connect_timeout", "read_timeout", "pool_timeout") + (Option("pool_size", "count"),),
                 "sftp:SftpOrigin"),
}


def option_keys(kind: str) -> tuple[str, ...]:
    return tuple(o.key for o in KINDS[kind].options)


def kind_of(source: str) -> str:
    """The kind of a SOURCE: by its scheme, 'local' for one without; BadArgument for another scheme."""
    for key, kind in KINDS.items():
        if kind.scheme and source.startswith(f"{kind.scheme}://"):
            return key
    if "://" in source:
        schemes = ", ".join(f"{k.scheme}://" for k in KINDS.values() if k.scheme)
        # SOURCEs come from the command line only (a config file has no sources): a usage error, exit 2
        raise BadArgument("SOURCE", f"unsupported scheme in {source!r} (use a directory, {schemes})")
    return "local"


def _takes(kind: str) -> str:
    keys = option_keys(kind)
    return f"{KINDS[kind].name} takes " + (", ".join(keys) if keys else "no options")


def check(sources: Iterable[str], options: dict | None, flags: dict[str, str] | None = None) -> dict[str, Any]:
    """Check a library's `origin_options` against the kinds of its SOURCEs: every key must be known to at least
    one of them (a table shared by an S3 and an SFTP replica may hold both kinds' options), every value of its
    type. Returns the options with their values converted (seconds to float, counts to int).

    `flags` maps an option key to the flag that set it: a problem with that key is a BadArgument naming it."""
    kinds = sorted({kind_of(s) for s in sources}) or ["local"]
    flags = flags or {}
    known = {o.key: o for kind in kinds for o in KINDS[kind].options}
    result = {}
    for key, value in (options or {}).items():
        try:
            if key not in known:
                where = " or ".join(KINDS[k].name for k in kinds)
                raise OptionError(f"origin_options.{key}", f"unknown origin option for {where} sources; "
                                  + "; ".join(_takes(k) for k in kinds))
            if value is not None:  # None (from Python callers; TOML has none) means not given
                result[key] = convert(known[key], value, f"origin_options.{key}")
        except ConfigError as exc:
            if key in flags:
                raise BadArgument(flags[key], exc.args[0].partition(": ")[2]) from exc
            raise
    return result


def for_kind(kind: str, checked: dict[str, Any]) -> dict[str, Any]:
    """The options `kind` knows, of a library's options `check` returned (the rest are its other kinds')."""
    known = set(option_keys(kind))
    return {k: v for k, v in checked.items() if k in known}


def parse(kind: str, options: dict | None) -> dict[str, Any]:
    """One origin's own options: checked as for a library of that kind alone (unknown keys refused)."""
    return check([f"{KINDS[kind].scheme}://" if KINDS[kind].scheme else "/"], options)


def convert(option: Option, value: Any, name: str) -> Any:
    """`value` as the option's type, or a ConfigError naming `name` and the value."""
    if option.type == "text":
        if not isinstance(value, str):
            raise OptionError(name, f"must be a string, not {value!r}")
        return value
    if option.type == "choice":
        if value not in option.choices:
            raise OptionError(name, f"must be one of {', '.join(option.choices)}, not {value!r}")
        return value
    number = _number(value)
    if option.type == "seconds":
        if number is None or not math.isfinite(number) or number <= 0:
            raise OptionError(name, f"must be a number of seconds greater than 0, not {value!r}")
        return float(number)
    if number is None or not math.isfinite(number) or number != int(number) or number < 1:
        raise OptionError(name, f"must be a whole number of at least 1, not {value!r}")
    return int(number)


def _number(value: Any) -> float | None:
    """A number from an int, a float or a numeric string ("5"); None for anything else (bools included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None
