"""Bad config and bad arguments (3.4): the real CLI names the key or flag, exits 78 or 2, mounts and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.daemon.mounts import unmount
from musicfs.shared.config import load
from musicfs.shared.errors import BadArgument, ConfigError
from musicfs_test_utils.daemon import is_mounted

EX_USAGE, EX_CONFIG = 2, 78


def run_mount(tmp_path: Path, *args: str, config: str | None = None, paths: list[str] | None = None):
    """`python -m musicfs mount` in a child with every XDG dir inside tmp_path; returns (result, dirs)."""
    src, mnt = tmp_path / "music", tmp_path / "mnt"
    src.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    (src / "song.flac").write_bytes(b"not really audio")
    dirs = {"xdg_state": tmp_path / "xdg-state", "xdg_cache": tmp_path / "xdg-cache",
            "state": tmp_path / "state", "cache": tmp_path / "cache"}
    extra = []
    if config is not None:
        cfg = tmp_path / "musicfs.toml"
        cfg.write_text(config + f'\nstate_dir = "{dirs["state"]}"\ncache_dir = "{dirs["cache"]}"\n')
        extra = ["--config", str(cfg)]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "FAILPOINTS",
                                                            "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(XDG_STATE_HOME=str(dirs["xdg_state"]), XDG_CACHE_HOME=str(dirs["xdg_cache"]), HOME=str(tmp_path))
    cmd = [sys.executable, "-m", "musicfs", "mount", *(paths if paths is not None else [str(src), str(mnt)]),
           *extra, *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    finally:
        if is_mounted(str(mnt)):  # the config was accepted after all: do not leave a mount behind
            unmount(str(mnt), lazy=True)
    return result, mnt, dirs


def assert_nothing_mounted_or_written(mnt: Path, dirs: dict):
    assert not is_mounted(str(mnt))
    assert list(mnt.iterdir()) == []
    written = {name: str(path) for name, path in dirs.items() if path.exists()}
    assert not written, f"a refused start wrote {written}"


@pytest.mark.resilience("3.4")
@pytest.mark.parametrize("config, key, words", [
    ('cache_sise = "1G"', "cache_sise", "unknown key"),
    ('cache_size = "lots"', "cache_size", "'lots' is not a size"),
    ("rescan_interval = 0", "rescan_interval", "between 1 and 2592000"),
    ('chunk_size = "64M"', "chunk_size", "between 64K and 16M"),
    ("read_timeout = nan", "read_timeout", "seconds between 0.1 and 3600, not nan"),
    ("drain_timeout = nan", "drain_timeout", "seconds between 0.1 and 3600, not nan"),
    ("health_interval = 1e-300", "health_interval", "seconds between 0.1 and 86400, not 1e-300"),
    ("health_timeout = inf", "health_timeout", "seconds between 0.1 and 3600, not inf"),
    ('memory_cache = "100G"', "memory_cache", "half of this machine's"),
    ('cache_size = "500"', "cache_size", "at least 4M (4 chunks of 1M"),
    ('log_level = "LOUD"', "log_level", "DEBUG, INFO"),
    ("cache_size = = 3", "--config", "not valid TOML"),
], ids=["unknown-key", "bad-size", "bad-interval", "chunk-range", "read-timeout-nan", "drain-timeout-nan",
        "health-interval-tiny", "health-timeout-inf", "memory-cache-huge", "cache-size-500-bytes", "bad-level",
        "invalid-toml"])
def test_bad_config_file_exits_78_naming_the_key(tmp_path, config, key, words):
    result, mnt, dirs = run_mount(tmp_path, config=config)
    assert result.returncode == EX_CONFIG, result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f"musicfs: {key}: ") and words in first, result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_mounted_or_written(mnt, dirs)


@pytest.mark.resilience("3.4")
@pytest.mark.parametrize("what", ["missing", "directory", "not-utf8", "fifo", "huge"])
def test_unreadable_config_exits_78(tmp_path, what):
    path = tmp_path / "musicfs.toml"
    if what == "directory":
        path.mkdir()
    elif what == "not-utf8":
        path.write_bytes(b'cache_size = "\xff\xfe"\n')
    elif what == "fifo":  # never opened for reading: it would wait for a writer for ever
        os.mkfifo(path)
    elif what == "huge":  # never read whole (/dev/zero as --config grew a daemon to 11 GB)
        path.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    result, mnt, dirs = run_mount(tmp_path, "--config", str(path))
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr.startswith("musicfs: --config: ") and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_mounted_or_written(mnt, dirs)


@pytest.mark.resilience("3.4")
@pytest.mark.parametrize("args, flag, words", [
    (["--cache-size", "abc"], "--cache-size", "'abc' is not a size"),
    (["--cache-size=-5G"], "--cache-size", "not a size"),
    (["--rescan-interval", "0"], "--rescan-interval", "between 1 and 2592000"),
    (["--rescan-interval", "nan"], "--rescan-interval", "between 1 and 2592000, not nan"),
    (["--cache-size", "2000T"], "--cache-size", "between 256K and 1024T"),
    (["--cache-size", "0"], "--cache-size", "at least 4M (4 chunks of 1M"),
    (["--cache-size", "1K"], "--cache-size", "at least 4M (4 chunks of 1M"),
    (["--cache-size", "500"], "--cache-size", "at least 4M (4 chunks of 1M"),
], ids=["cache-size-abc", "cache-size-negative", "rescan-zero", "rescan-nan", "cache-size-huge", "cache-size-0",
        "cache-size-1K", "cache-size-500"])
def test_bad_flag_value_exits_2_naming_the_flag(tmp_path, args, flag, words):
    result, mnt, dirs = run_mount(tmp_path, *args)
    assert result.returncode == EX_USAGE, result.stderr
    assert result.stderr.startswith(f"musicfs: {flag}: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_mounted_or_written(mnt, dirs)


@pytest.mark.resilience("3.4")
def test_bad_flag_beats_a_good_file_and_is_still_a_usage_error(tmp_path):
    result, mnt, dirs = run_mount(tmp_path, "--cache-size", "huge", config='cache_size = "1G"')
    assert result.returncode == EX_USAGE, result.stderr
    assert "--cache-size" in result.stderr
    assert_nothing_mounted_or_written(mnt, dirs)


@pytest.mark.resilience("3.4")
@pytest.mark.parametrize("args, words", [
    (["--cache-sise", "1G"], "unrecognized arguments: --cache-sise"),
    (["--rescan-interval", "soon"], "--rescan-interval: invalid float value: 'soon'"),
    (["--log-level", "LOUD"], "--log-level: invalid choice: 'LOUD'"),
], ids=["unknown-flag", "non-number", "bad-choice"])
def test_argparse_errors_exit_2_naming_the_argument(tmp_path, args, words):
    result, mnt, dirs = run_mount(tmp_path, *args)
    assert result.returncode == EX_USAGE, result.stderr
    assert words in result.stderr and "usage: musicfs" in result.stderr
    assert_nothing_mounted_or_written(mnt, dirs)


@pytest.mark.resilience("3.4")
def test_missing_mountpoint_exits_2(tmp_path):
    result, mnt, dirs = run_mount(tmp_path, paths=[str(tmp_path / "music")])
    assert result.returncode == EX_USAGE, result.stderr
    assert result.stderr.startswith("musicfs: MOUNTPOINT: ")
    assert_nothing_mounted_or_written(mnt, dirs)


# -- load() itself: which class, which key -----------------------------------------------------------------
def test_load_tells_flags_from_file_keys(tmp_path):
    with pytest.raises(BadArgument) as err:
        load(None, {"cache_size": "abc"})
    assert err.value.key == "--cache-size" and isinstance(err.value, ConfigError)
    with pytest.raises(BadArgument) as err:
        load(None, {"chunk_size": "1K"})  # also the cross-field check names the flag when a flag set it
    assert err.value.key == "--chunk-size"
    path = tmp_path / "c.toml"
    path.write_text('cache_size = "abc"\n')
    with pytest.raises(ConfigError) as err:
        load(str(path), {})
    assert type(err.value) is ConfigError and err.value.key == "cache_size"
    assert load(None, {"sources": ("/m",), "mountpoint": "/mnt", "cache_size": None}).sources == ("/m",)


@pytest.mark.parametrize("config, words", [
    ('[origin_options]\npool_size = "abc"', "origin_options.pool_size: must be a whole number of at least 1, not 'abc'"),
    ('[origin_options]\nconnect_timeout = nan', "origin_options.connect_timeout: must be a number of seconds"),
    ('[origin_options]\npool_size = 0', "origin_options.pool_size: must be a whole number of at least 1, not 0"),
], ids=["pool-size-abc", "connect-timeout-nan", "pool-size-0"])
def test_a_bad_origin_option_value_exits_78_without_a_traceback(tmp_path, config, words):
    """Issue 13: `pool_size = "abc"` ended in a traceback (exit 1)."""
    mnt = tmp_path / "mnt"
    result, mnt, dirs = run_mount(tmp_path, config=config, paths=["sftp://me@127.0.0.1:9/srv/music", str(mnt)])
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr.startswith("musicfs: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_mounted_or_written(mnt, dirs)


@pytest.mark.parametrize("source, secrets", [
    ("s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCY@music/library", ["AKIAIOSFODNN7", "wJalrXUtnFEMI"]),
    ("sftp://me:hunter2@127.0.0.1/srv/music", ["hunter2"]),
], ids=["s3-key-and-secret", "sftp-password"])
def test_credentials_in_a_source_url_are_refused_and_never_echoed(tmp_path, source, secrets):
    mnt = tmp_path / "mnt"
    result, mnt, dirs = run_mount(tmp_path, paths=[source, str(mnt)])
    assert result.returncode == EX_USAGE, result.stderr
    assert result.stderr.startswith("musicfs: SOURCE: ") and "not in the URL" in result.stderr, result.stderr
    assert "***@" in result.stderr
    for secret in secrets:
        assert secret not in result.stderr + result.stdout
    assert_nothing_mounted_or_written(mnt, dirs)


def test_readme_has_the_exit_code_table():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("## Exit codes"):readme.index("## The tree")]
    for code in (0, 1, 2, 3, 4, 8, 78):
        assert f"\n| {code} |" in table, code
    for words in ("already mounted by another daemon", "--allow-non-empty", "4 chunks", "half the RAM",
                  'pool_size = "abc"', "inside a local SOURCE"):
        assert words in table, words
