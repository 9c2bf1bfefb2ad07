"""Settings: TOML file + command-line flags -> one frozen Config; errors name the key."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import BadArgument, ConfigError
from .sources import canonical_source

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int, key: str = "size") -> int:
    """'500M' -> bytes. Binary units; a bare number is bytes."""
    if isinstance(text, bool) or (isinstance(text, int) and text < 0):
        raise ConfigError(key, f"{text!r} is not a size (try 500M or 10G)")
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(key, f"{text!r} is not a size (try 500M or 10G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') -> (host, port); ValueError saying what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT (e.g. 127.0.0.1:9567), not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, not {port!r} (in {text!r})")
    if not host or (":" in host and not text.strip().startswith("[")):
        raise ValueError(f"must be HOST:PORT with an IPv6 host in brackets ([::1]:9567), not {text!r}")
    return host, int(port)


def library_id(sources: list[str]) -> str:
    """A short stable id for a set of sources, so two libraries never share state."""
    canon = [s if "://" in s else os.path.realpath(s) for s in sources]
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:16]


def xdg_dir(env: str, fallback: str) -> Path:
    value = os.environ.get(env)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


@dataclass(frozen=True)
class Config:
    sources: tuple[str, ...] = ()
    mountpoint: str = ""
    state_dir: str = ""
    cache_dir: str = ""
    cache_size: int = 10 << 30
    chunk_size: int = 1 << 20
    memory_cache: int = 32 << 20  # verified chunks in RAM; the kernel's page cache holds what readers stream (page_push)
    readahead: int = 32 << 20  # bytes of chunks in flight ahead of sequential readers, daemon-wide (0: off)
    rescan_interval: float = 900.0
    read_timeout: float = 30.0
    drain_timeout: float = 10.0
    health_interval: float = 10.0  # seconds between origin health probe rounds
    health_timeout: float = 5.0  # a probe that takes longer marks its origin unhealthy
    failover_grace: float = 60.0  # a recovered primary is preferred again after this long healthy
    log_level: str = "INFO"
    allow_other: bool = False
    allow_non_empty: bool = False  # mount over a folder that holds files (hidden until unmounted)
    allow_empty: bool = False  # mount a library whose first scan finds no audio (else refused: a typo'd source)
    include_hidden: bool = False  # scan files and folders whose names start with a dot (`._*` never)
    metrics: str = ""  # HOST:PORT of the Prometheus endpoint (/metrics); "" = off
    metrics_public: bool = False  # serve /metrics on an address other machines can reach (else loopback only)
    page_push: bool = True  # push verified chunks of sequential readers into the kernel's page cache (see README)
    published_catalog: bool = True  # a first mount starts from the catalog published at the origin (musicfs publish)
    origin_options: dict = field(default_factory=dict)

    def resolved(self) -> "Config":
        """Sources in canonical form (BadArgument for one that cannot be), and state/cache dirs from XDG defaults
        (one set per library, named by its canonical sources)."""
        try:
            sources = tuple(canonical_source(s) for s in self.sources)
        except ValueError as exc:
            raise BadArgument("SOURCE", str(exc)) from None
        lib = library_id(list(sources)) if sources else "default"
        before = library_id(list(self.sources)) if sources else lib
        state_base = xdg_dir("XDG_STATE_HOME", ".local/state") / "musicfs"
        if before != lib and (state_base / before).is_dir() and not (state_base / lib).exists():
            lib = before  # a library first mounted under another spelling keeps its state and cache
        state = self.state_dir or str(state_base / lib)
        cache = self.cache_dir or str(xdg_dir("XDG_CACHE_HOME", ".cache") / "musicfs" / lib)
        return replace(self, sources=sources, state_dir=os.path.abspath(state), cache_dir=os.path.abspath(cache))


# The sane range of every numeric key (inclusive), documented in README's config section. A value outside
# it (or not finite: TOML has nan and inf) is refused: `read_timeout = nan` would fail every read,
# `health_interval = 1e-300` would spin a core.
SIZE_RANGES = {
    "cache_size": (256 << 10, 1 << 50),  # 256K (4 of the smallest chunks) .. 1P; at least 4 chunks: check_sizes
    "chunk_size": (64 << 10, 16 << 20),  # 64K .. 16M
    "memory_cache": (0, 64 << 30),  # 0 (off) .. 64G
    "readahead": (0, 4 << 30),  # 0 (off) .. 4G
}
# Bounds that depend on other keys or on the machine, checked once every key is known (`check_sizes`):
# the disk cache must hold at least this many chunks (a smaller one evicts the chunk it just stored and warns
# once per chunk), and the memory cache may use at most this share of the machine's RAM.
MIN_CACHE_CHUNKS = 4
MEMORY_CACHE_RAM_SHARE = 0.5
SECONDS_RANGES = {
    "rescan_interval": (1.0, 30 * 86400.0),  # 1 s .. 30 days
    "read_timeout": (0.1, 3600.0),
    "drain_timeout": (0.1, 3600.0),
    "health_interval": (0.1, 86400.0),
    "health_timeout": (0.1, 3600.0),
    "failover_grace": (0.1, 86400.0),
}
_FILE_KEYS = {f.name for f in fields(Config)} - {"sources", "mountpoint"}
_BOOL_KEYS = {"allow_other", "allow_non_empty", "allow_empty", "include_hidden", "metrics_public", "page_push",
              "published_catalog"}
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines of TOML: a bigger one (or /dev/zero) is a mistake


def format_size(n: int) -> str:
    """Bytes in the units parse_size reads: 65536 -> '64K'."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def _seconds(x: float) -> str:
    return f"{x:f}".rstrip("0").rstrip(".")


def _size_range_text(key: str) -> str:
    low, high = SIZE_RANGES[key]
    return f"between {format_size(low)} and {format_size(high)}"


def _check_value(key: str, value):
    if key in SIZE_RANGES:
        size = parse_size(value, key)
        low, high = SIZE_RANGES[key]
        if (key == "cache_size" and size < low) or (key == "memory_cache" and size > high):
            return size  # check_sizes says the bound for the chunk size / the RAM in force, which is tighter
        if not low <= size <= high:
            raise ConfigError(key, f"must be {_size_range_text(key)}, not {value!r}")
        return size
    if key in SECONDS_RANGES:
        low, high = SECONDS_RANGES[key]
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not low <= value <= high):
            raise ConfigError(key, f"must be a number of seconds between {_seconds(low)} and {_seconds(high)}, not {value!r}")
        return float(value)
    if key == "log_level":
        if str(value).upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(key, f"must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
        return str(value).upper()
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, not {value!r}")
        return value
    if key == "metrics":
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string HOST:PORT (e.g. \"127.0.0.1:9567\"), not {value!r}")
        if value.strip():
            try:
                parse_address(value)
            except ValueError as exc:
                raise ConfigError(key, str(exc)) from None
        return value.strip()
    if key == "origin_options":
        if not isinstance(value, dict):
            raise ConfigError(key, "must be a table")
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, not {value!r}")
    return value


def flag_name(key: str) -> str:
    """The command-line flag that sets a config key: cache_size -> --cache-size."""
    return "--" + key.replace("_", "-")


def _as_bad_argument(exc: ConfigError, key: str) -> BadArgument:
    detail = str(exc).partition(": ")[2] or str(exc)
    return BadArgument(flag_name(key), detail)


def machine_ram() -> int:
    """Total RAM of this machine in bytes (psutil)."""
    import psutil

    return psutil.virtual_memory().total


def check_sizes(values: dict, from_flag: set[str], ram: int | None = None) -> None:
    """The bounds relative to other keys and to the machine: cache_size >= MIN_CACHE_CHUNKS chunks,
    memory_cache <= MEMORY_CACHE_RAM_SHARE of RAM. The error names the flag (BadArgument, exit 2) when a flag
    set the value, else the file's key (ConfigError, exit 78)."""
    def refuse(key: str, message: str):
        raise BadArgument(flag_name(key), message) if key in from_flag else ConfigError(key, message)

    chunk = values.get("chunk_size", Config.chunk_size)
    cache = values.get("cache_size", Config.cache_size)
    least = MIN_CACHE_CHUNKS * chunk
    if cache < least:
        refuse("cache_size", f"must be at least {format_size(least)} ({MIN_CACHE_CHUNKS} chunks of "
                             f"{format_size(chunk)}; chunk_size sets the chunk), not {format_size(cache)}")
    metrics = values.get("metrics", "")
    if metrics and not values.get("metrics_public", False) and not is_loopback(parse_address(metrics)[0]):
        refuse("metrics", f"{metrics} is not a loopback address: /metrics would be open to other machines "
                          "(set metrics_public = true in the config file to allow it)")
    memory = values.get("memory_cache", Config.memory_cache)
    if memory:
        ram = machine_ram() if ram is None else ram
        most = min(SIZE_RANGES["memory_cache"][1], int(ram * MEMORY_CACHE_RAM_SHARE))
        if memory > most:
            refuse("memory_cache", f"must be at most {_round_size(most)} (half of this machine's "
                                   f"{_round_size(ram)} of RAM, and never more than "
                                   f"{format_size(SIZE_RANGES['memory_cache'][1])}), not {format_size(memory)}")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or "localhost") is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve anywhere


def read_config_file(path: str) -> bytes:
    """The bytes of a config file: a regular file of at most MAX_CONFIG_BYTES (a FIFO, a device or a huge file is
    refused, never read: `--config /dev/zero` or a FIFO would hang or fill the memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("--config", f"{path} is not a regular file")
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("--config", f"{path} is over {format_size(MAX_CONFIG_BYTES)}: not a config file")
    return data


def _round_size(n: int) -> str:
    """A size rounded down to whole M (at least 1M) in parse_size's units: 12884901888 -> '12G'."""
    mib = max(1, n >> 20)
    return format_size(mib << 20)


def load(path: str | None, overrides: dict) -> Config:
    """Read the TOML file (if any), apply flag overrides (None = not given), validate.

    A bad file value raises ConfigError naming the TOML key; a bad flag value raises BadArgument
    naming the flag (`--cache-size`), so the CLI can tell a usage error from a config error.
    """
    values: dict = {}
    from_flag: set[str] = set()
    if path:
        try:
            data = tomllib.loads(read_config_file(path).decode("utf-8"))
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: not UTF-8 at byte {exc.start}") from exc
        for key, value in data.items():
            if key not in _FILE_KEYS:
                raise ConfigError(key, f"unknown key in {path}")
            values[key] = _check_value(key, value)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _FILE_KEYS:
            try:
                values[key] = _check_value(key, value)
            except ConfigError as exc:
                raise _as_bad_argument(exc, key) from exc
            from_flag.add(key)
        else:
            values[key] = value
    check_sizes(values, from_flag)
    return Config(**values)
