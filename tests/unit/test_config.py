"""config: sizes, TOML loading, validation that names the key, flag overrides, XDG defaults."""

from __future__ import annotations

import os
from dataclasses import fields as _fields
from pathlib import Path

import pytest

from musicfs.shared import config
from musicfs.shared.config import (
    SECONDS_RANGES,
    SIZE_RANGES,
    Config,
    format_size,
    library_id,
    load,
    parse_size,
)
from musicfs.shared.errors import BadArgument, ConfigError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


# -- parse_size ---------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("500M", 500 * MiB),
        ("10G", 10 * GiB),
        ("1.5G", int(1.5 * GiB)),
        ("123", 123),
        ("64K", 64 * KiB),
        ("2T", 2 << 40),
        ("500m", 500 * MiB),
        ("500MiB", 500 * MiB),
        ("500MB", 500 * MiB),
        (" 7 G ", 7 * GiB),
        (4096, 4096),
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "10X", "-5M", "M", "1.2.3G", "10 GG", "½G"])
def test_parse_size_rejects_and_names_the_key(bad):
    with pytest.raises(ConfigError) as err:
        parse_size(bad, "cache_size")
    assert err.value.key == "cache_size"
    assert "cache_size" in str(err.value)


@pytest.mark.parametrize("bad", [True, False, -1])
def test_parse_size_rejects_non_sizes_given_as_toml_values(bad):
    # TOML gives ints and bools directly: a bool or a negative number is not a size.
    with pytest.raises(ConfigError) as err:
        parse_size(bad, "cache_size")
    assert err.value.key == "cache_size"


# -- load() from a file ---------------------------------------------------------
def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "musicfs.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_load_reads_every_kind_of_value(tmp_path):
    path = _toml(
        tmp_path,
        'cache_size = "2G"\nchunk_size = "4M"\nmemory_cache = 1048576\nrescan_interval = 60\n'
        'read_timeout = 2.5\nlog_level = "debug"\nallow_other = true\nstate_dir = "/srv/state"\n'
        '[origin_options]\nregion = "eu-west-1"\n',
    )
    cfg = load(path, {})
    assert cfg.cache_size == 2 * GiB
    assert cfg.chunk_size == 4 * MiB
    assert cfg.memory_cache == MiB
    assert cfg.rescan_interval == 60.0 and isinstance(cfg.rescan_interval, float)
    assert cfg.read_timeout == 2.5
    assert cfg.log_level == "DEBUG"
    assert cfg.allow_other is True
    assert cfg.state_dir == "/srv/state"
    assert cfg.origin_options == {"region": "eu-west-1"}
    # untouched keys keep their defaults
    assert cfg.drain_timeout == Config().drain_timeout


def test_load_without_a_file_gives_defaults():
    assert load(None, {}) == Config()


@pytest.mark.parametrize("key", ["cache_sise", "sources", "mountpoint", "Cache_Size"])
def test_unknown_key_is_named(tmp_path, key):
    path = _toml(tmp_path, f'log_level = "INFO"\n{key} = "x"\n')
    with pytest.raises(ConfigError) as err:
        load(path, {})
    assert err.value.key == key


@pytest.mark.parametrize(
    "line, key",
    [
        ('cache_size = "lots"', "cache_size"),
        ("cache_size = true", "cache_size"),
        ("cache_size = -1", "cache_size"),
        ('chunk_size = "1K"', "chunk_size"),  # below 64K
        ('chunk_size = "64M"', "chunk_size"),  # above 16M
        ("rescan_interval = 0", "rescan_interval"),
        ("read_timeout = -3", "read_timeout"),
        ('drain_timeout = "10"', "drain_timeout"),
        ("drain_timeout = true", "drain_timeout"),
        ('log_level = "LOUD"', "log_level"),
        ('allow_other = "yes"', "allow_other"),
        ("origin_options = 3", "origin_options"),
        ("state_dir = 5", "state_dir"),
    ],
)
def test_bad_values_name_their_key(tmp_path, line, key):
    with pytest.raises(ConfigError) as err:
        load(_toml(tmp_path, line + "\n"), {})
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}:")


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(_toml(tmp_path, "cache_size = = 3\n"), {})
    assert err.value.key == "--config"
    with pytest.raises(ConfigError) as err:
        load(str(tmp_path / "nope.toml"), {})
    assert err.value.key == "--config"


def test_flags_override_the_file(tmp_path):
    path = _toml(tmp_path, 'cache_size = "2G"\nlog_level = "ERROR"\nrescan_interval = 60\n')
    cfg = load(path, {"cache_size": "500M", "log_level": None, "rescan_interval": 5.0,
                      "sources": ("/music",), "mountpoint": "/mnt/music"})
    assert cfg.cache_size == 500 * MiB  # flag wins
    assert cfg.log_level == "ERROR"  # None means "flag not given": the file's value stays
    assert cfg.rescan_interval == 5.0
    assert cfg.sources == ("/music",)
    assert cfg.mountpoint == "/mnt/music"


@pytest.mark.parametrize("key, value", [("cache_size", "huge"), ("rescan_interval", -1.0), ("log_level", "LOUD"),
                                        ("chunk_size", "1K")])
def test_bad_flag_value_names_the_flag(tmp_path, key, value):
    with pytest.raises(BadArgument) as err:  # a usage error, told apart from a bad config file
        load(None, {key: value})
    assert isinstance(err.value, ConfigError)
    assert err.value.key == "--" + key.replace("_", "-")


def test_bad_file_value_is_not_blamed_on_a_flag(tmp_path):
    path = _toml(tmp_path, 'chunk_size = "1K"\n')
    with pytest.raises(ConfigError) as err:
        load(path, {"cache_size": "1G"})
    assert not isinstance(err.value, BadArgument) and err.value.key == "chunk_size"


# -- resolved(): XDG defaults, one set of dirs per library ------------------------
def test_resolved_uses_xdg_dirs(tmp_path, monkeypatch):
    state, cache = tmp_path / "state", tmp_path / "cache"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    src = str(tmp_path / "music")
    cfg = Config(sources=(src,)).resolved()
    lib = library_id([src])
    assert cfg.state_dir == str(state / "musicfs" / lib)
    assert cfg.cache_dir == str(cache / "musicfs" / lib)


def test_resolved_falls_back_to_home_when_xdg_is_unset_or_relative(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the spec says: ignore relative paths
    cfg = Config(sources=("/music",)).resolved()
    lib = library_id(["/music"])
    assert cfg.state_dir == str(tmp_path / "home" / ".local/state" / "musicfs" / lib)
    assert cfg.cache_dir == str(tmp_path / "home" / ".cache" / "musicfs" / lib)


def test_resolved_keeps_explicit_dirs_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(sources=("/music",), state_dir="st", cache_dir=str(tmp_path / "c")).resolved()
    assert cfg.state_dir == str(tmp_path / "st")
    assert cfg.cache_dir == str(tmp_path / "c")


def test_different_sources_get_different_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a = Config(sources=(str(tmp_path / "a"),)).resolved()
    b = Config(sources=(str(tmp_path / "b"),)).resolved()
    both = Config(sources=(str(tmp_path / "a"), str(tmp_path / "b"))).resolved()
    assert len({a.state_dir, b.state_dir, both.state_dir}) == 3
    assert len({a.cache_dir, b.cache_dir, both.cache_dir}) == 3
    # the id is stable, and a relative spelling of the same folder is the same library
    monkeypatch.chdir(tmp_path)
    assert Config(sources=("a",)).resolved().state_dir == a.state_dir
    assert library_id(["s3://bucket/x"]) != library_id(["s3://bucket/y"])
    assert os.path.isabs(a.state_dir)


# -- ranges: every numeric key has a sane one, refused values name the key and the range ----------------------
def test_every_numeric_key_has_a_range():
    numeric = {f.name for f in _fields(Config) if f.type in ("int", "float")}
    assert numeric == set(SIZE_RANGES) | set(SECONDS_RANGES)


@pytest.mark.parametrize("key", sorted(SECONDS_RANGES))
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e-300", "1e300", "-1"])
def test_non_finite_and_out_of_range_seconds_are_refused(tmp_path, key, value):
    low, high = SECONDS_RANGES[key]
    with pytest.raises(ConfigError) as err:
        load(_toml(tmp_path, f"{key} = {value}\n"), {})
    assert err.value.key == key and not isinstance(err.value, BadArgument)
    assert "between" in str(err.value) and f"{high:.0f}" in str(err.value), str(err.value)
    with pytest.raises(BadArgument) as err:  # the same value given as a flag names the flag
        load(None, {key: float(value)})
    assert err.value.key == "--" + key.replace("_", "-")


@pytest.mark.parametrize("key", sorted(SECONDS_RANGES))
def test_the_ends_of_each_seconds_range_are_accepted(tmp_path, key):
    low, high = SECONDS_RANGES[key]
    for value in (low, high):
        assert getattr(load(_toml(tmp_path, f"{key} = {value!r}\n"), {}), key) == value
    for value in (low / 2, high * 2):
        with pytest.raises(ConfigError, match=key):
            load(_toml(tmp_path, f"{key} = {value!r}\n"), {})


@pytest.mark.parametrize("key", sorted(SIZE_RANGES))
def test_sizes_outside_their_range_are_refused(tmp_path, key, monkeypatch):
    # the bounds relative to the chunk size and the RAM have their own tests: here they do not bite
    monkeypatch.setattr(config, "machine_ram", lambda: 1 << 60)
    chunk = 'chunk_size = "64K"\n' if key == "cache_size" else ""
    low, high = SIZE_RANGES[key]
    assert getattr(load(_toml(tmp_path, f'{chunk}{key} = "{format_size(low)}"\n'), {}), key) == low
    assert getattr(load(_toml(tmp_path, f'{chunk}{key} = "{format_size(high)}"\n'), {}), key) == high
    for bad, bound in ([(f"{high + 1}", high)] + ([(f"{low - 1}", low)] if low else [])):
        with pytest.raises(ConfigError) as err:
            load(_toml(tmp_path, f"{chunk}{key} = {bad}\n"), {})
        assert err.value.key == key
        assert format_size(bound) in str(err.value)
    with pytest.raises(ConfigError, match=key):
        load(_toml(tmp_path, f"{key} = nan\n"), {})


def test_readme_documents_every_range():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Config file"):readme.index("### Remote sources")]
    for key, (low, high) in SIZE_RANGES.items():
        assert f"{key} " in section and f"{format_size(low)}..{format_size(high)}" in section, key
    for key, (low, high) in SECONDS_RANGES.items():
        assert f"{key} " in section and f"{low:g}..{high:.0f} s" in section, key


@pytest.mark.parametrize("flag", ["0", "1K", "500", "3M"])
def test_a_cache_smaller_than_four_chunks_is_refused_with_the_minimum(flag):
    with pytest.raises(BadArgument) as err:
        load(None, {"cache_size": flag})
    assert err.value.key == "--cache-size"
    assert f"at least 4M ({config.MIN_CACHE_CHUNKS} chunks of 1M" in str(err.value)
    assert load(None, {"cache_size": "4M"}).cache_size == 4 * MiB


def test_the_cache_minimum_follows_the_chunk_size_and_names_the_file_key(tmp_path):
    path = _toml(tmp_path, 'chunk_size = "4M"\ncache_size = "8M"\n')
    with pytest.raises(ConfigError) as err:
        load(path, {})
    assert type(err.value) is ConfigError and err.value.key == "cache_size"
    assert "at least 16M (4 chunks of 4M" in str(err.value)
    with pytest.raises(BadArgument, match="--cache-size: must be at least 16M"):
        load(path, {"cache_size": "15M"})  # the flag set the value that is too small: exit 2


def test_memory_cache_is_bounded_by_half_the_ram(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "machine_ram", lambda: 24 << 30)
    assert load(_toml(tmp_path, 'memory_cache = "12G"\n'), {}).memory_cache == 12 << 30
    with pytest.raises(ConfigError) as err:
        load(_toml(tmp_path, 'memory_cache = "100G"\n'), {})
    assert type(err.value) is ConfigError and err.value.key == "memory_cache"
    assert "at most 12G (half of this machine's 24G of RAM" in str(err.value)
    assert load(_toml(tmp_path, "memory_cache = 0\n"), {}).memory_cache == 0  # off is always fine
