"""origins/options.py: each origin kind's options, refused when the kind does not know them, typed, never a
traceback; from a config file exit 78 naming the key and the kind, from a flag exit 2 naming the flag."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from musicfs.commands import cli
from musicfs.origins import options
from musicfs.origins.factory import check_options, open_origin, open_origins
from musicfs.origins.local import LocalOrigin
from musicfs.shared.errors import BadArgument, ConfigError


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_the_options_module_imports_no_sdk():
    code = "import sys, musicfs.origins.options, musicfs.origins.factory; print(sorted({'boto3', 'botocore', " \
           "'musicfs.origins.sftp_session'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_kind_declares_its_options():
    assert options.option_keys("local") == ()
    assert "pool_size" in options.option_keys("sftp") and "pool_size" not in options.option_keys("s3")
    assert "region" in options.option_keys("s3") and "region" not in options.option_keys("sftp")
    assert [options.kind_of(s) for s in ("/music", "s3://b/p", "sftp://h/p")] == ["local", "s3", "sftp"]
    with pytest.raises(ConfigError, match="SOURCE: unsupported scheme in 'ftp://h/p'"):
        options.kind_of("ftp://h/p")


@pytest.mark.parametrize("source, key, kind", [
    ("s3://bucket/music", "pool_size", "S3"),
    ("sftp://me@h/music", "region", "SFTP"),
    ("/srv/music", "connect_timeout", "local"),
])
def test_an_option_the_kind_does_not_know_is_refused_naming_key_and_kind(source, key, kind):
    with pytest.raises(ConfigError) as info:
        check_options([source], {key: 1 if "size" in key or "timeout" in key else "x"})
    assert info.value.key == f"origin_options.{key}"
    assert f"unknown origin option for {kind} sources" in str(info.value)
    with pytest.raises(ConfigError, match=f"origin_options.{key}: unknown origin option for {kind}"):
        open_origin(source, {key: 1})


def test_a_table_shared_by_s3_and_sftp_replicas_may_hold_both_kinds_options(tmp_path):
    table = {"region": "eu-west-1", "pool_size": 2, "connect_timeout": 3}
    assert check_options(["s3://b/m", "sftp://me@192.0.2.1/m"], table) == {"region": "eu-west-1", "pool_size": 2,
                                                                             "connect_timeout": 3.0}
    checked = options.check(["s3://b/p", "sftp://h/p"], table)
    assert options.for_kind("s3", checked) == {"region": "eu-west-1", "connect_timeout": 3.0}
    assert options.for_kind("sftp", checked) == {"pool_size": 2, "connect_timeout": 3.0}
    with pytest.raises(ConfigError, match="origin_options.identiy_file: unknown origin option for S3 or SFTP"):
        check_options(["s3://b/m", "sftp://me@h/m"], {"identiy_file": "/k"})
    built = open_origins([str(tmp_path)], {})
    assert len(built) == 1 and isinstance(built[0], LocalOrigin)
    with pytest.raises(ConfigError, match="local takes no options"):
        open_origins([str(tmp_path)], {"region": "x"})


@pytest.mark.parametrize("kind, key, value", [
    ("sftp", "pool_size", "abc"), ("sftp", "pool_size", 0), ("sftp", "pool_size", 2.5), ("sftp", "pool_size", True),
    ("sftp", "pool_size", math.inf), ("sftp", "connect_timeout", "x"), ("sftp", "connect_timeout", math.nan),
    ("sftp", "pool_timeout", -1), ("s3", "read_timeout", math.inf), ("s3", "read_timeout", 0),
    ("s3", "max_pool_connections", "many"), ("s3", "addressing_style", "sideways"), ("s3", "region", 5),
    ("sftp", "identity_file", ["a"]), ("s3", "connect_timeout", {"a": 1}),
])
def test_wrong_types_are_config_errors_naming_the_key(kind, key, value):
    source = "s3://b/m" if kind == "s3" else "sftp://me@192.0.2.1/m"
    with pytest.raises(ConfigError) as info:
        check_options([source], {key: value})
    assert info.value.key == f"origin_options.{key}" and repr(value) in str(info.value)
    with pytest.raises(ConfigError, match=f"origin_options.{key}"):
        open_origin(source, {key: value})


def test_values_are_converted_to_their_types():
    got = check_options(["sftp://me@h/m"], {"pool_size": "3", "connect_timeout": 2, "read_timeout": "1.5",
                                            "known_hosts": "/k", "password": None})
    assert got == {"pool_size": 3, "connect_timeout": 2.0, "read_timeout": 1.5, "known_hosts": "/k"}
    assert type(got["pool_size"]) is int and type(got["connect_timeout"]) is float


@pytest.mark.parametrize("line, key", [
    ('pool_size = "abc"', "pool_size"), ("connect_timeout = nan", "connect_timeout"),
    ('connect_timeout = "x"', "connect_timeout"), ("pool_size = 0", "pool_size"), ("region = \"eu\"", "region"),
])
def test_from_a_config_file_exit_78_naming_the_key_never_a_traceback(tmp_path, capsys, line, key):
    config = tmp_path / "musicfs.toml"
    config.write_text(f"[origin_options]\n{line}\n")
    code, err = run(capsys, "scan", "sftp://me@192.0.2.1/music", "--config", str(config),
                    "--state-dir", str(tmp_path / "s"))
    assert code == cli.EX_CONFIG, err
    assert f"origin_options.{key}" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_an_s3_source_refuses_an_sftp_option_from_the_file_naming_the_kind(tmp_path, capsys):
    config = tmp_path / "musicfs.toml"
    config.write_text("[origin_options]\npool_size = 4\n")
    code, err = run(capsys, "scan", "s3://bucket/music", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert code == cli.EX_CONFIG
    assert "origin_options.pool_size: unknown origin option for S3 sources" in err


@pytest.mark.parametrize("flag", ["--sftp-identity", "--sftp-known-hosts"])
def test_an_sftp_flag_for_an_s3_library_exits_2_naming_the_flag(tmp_path, capsys, flag):
    key = tmp_path / "k"
    key.write_text("k")
    code, err = run(capsys, "scan", "s3://bucket/music", flag, str(key), "--state-dir", str(tmp_path / "s"))
    assert code == cli.EX_USAGE
    assert err.startswith(f"musicfs: {flag}: unknown origin option for S3 sources")
    with pytest.raises(BadArgument) as info:
        check_options(["/m"], {"identity_file": str(key)}, {"identity_file": "--sftp-identity"})
    assert info.value.key == "--sftp-identity"


def test_a_bad_option_is_also_an_origin_fatal_to_code_that_builds_origins_directly():
    from musicfs.origins.s3 import S3Origin
    from musicfs.origins.sftp import SftpOrigin
    from musicfs.shared.errors import OriginFatal

    with pytest.raises(OriginFatal) as info:
        SftpOrigin.from_url("sftp://nas/x", {"pool_size": "abc"})
    assert isinstance(info.value, ConfigError) and info.value.key == "origin_options.pool_size"
    with pytest.raises(OriginFatal, match="origin_options.pool_size: unknown origin option for S3"):
        S3Origin.from_url("s3://b/p", {"pool_size": 2})
