"""SOURCE URLs, origin options and the --sftp-* flags: parsed, checked, and never a connection at start-up."""

from __future__ import annotations


import pytest

from musicfs.commands import cli
from musicfs.origins import factory
from musicfs.origins.factory import open_origin
from musicfs.origins.s3 import S3Origin
from musicfs.origins.sftp import SftpOrigin
from musicfs.shared.config import load
from musicfs.shared.errors import ConfigError


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_factory_option_lists_match_the_origins():
    assert set(factory.S3_OPTION_KEYS) == set(S3Origin.OPTION_KEYS)
    assert set(factory.SFTP_OPTION_KEYS) == set(SftpOrigin.OPTION_KEYS)


def test_remote_origins_are_built_without_connecting(tmp_path, monkeypatch):
    """A mount may start with every origin unreachable: building one must not touch the network."""
    import socket
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"building an origin touched the network: {args[:1]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)  # no ssh started either
    s3 = open_origin("s3://bucket/music", {"endpoint_url": "http://192.0.2.1:9", "connect_timeout": 30})
    sftp = open_origin("sftp://me@192.0.2.1:2222/srv/music", {"known_hosts": str(tmp_path / "none")})
    assert isinstance(s3, S3Origin) and (s3.bucket, s3.prefix) == ("bucket", "music/")
    assert isinstance(sftp, SftpOrigin) and (sftp.target.user, sftp.host, sftp.target.port, sftp.root) == ("me", "192.0.2.1", 2222,
                                                                                               "/srv/music")
    s3.close()
    sftp.close()


@pytest.mark.resilience("3.4")
def test_unknown_origin_option_in_the_config_exits_78_naming_it(tmp_path, capsys):
    config = tmp_path / "musicfs.toml"
    config.write_text('origin_options = {endpoint_url = "http://127.0.0.1:9", identiy_file = "/k"}\n')
    code, err = run(capsys, "scan", "s3://bucket/music", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert code == cli.EX_CONFIG
    assert "origin_options.identiy_file" in err and "unknown origin option" in err
    assert not (tmp_path / "s" / "catalog.db").exists()


@pytest.mark.resilience("3.4")
def test_bad_origin_option_value_fails_naming_the_option(tmp_path, capsys):
    config = tmp_path / "musicfs.toml"
    config.write_text('origin_options = {connect_timeout = "soon"}\n')
    code, err = run(capsys, "scan", "s3://bucket/music", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert code != 0
    assert "connect_timeout" in err and "'soon'" in err


@pytest.mark.resilience("3.4")
@pytest.mark.parametrize("flag", ["--sftp-identity", "--sftp-known-hosts"])
def test_a_missing_sftp_file_is_a_usage_error_naming_the_flag(tmp_path, capsys, flag):
    code, err = run(capsys, "scan", "sftp://me@127.0.0.1:1/music", flag, str(tmp_path / "nope"),
                    "--state-dir", str(tmp_path / "s"))
    assert code == cli.EX_USAGE
    assert flag in err and "no such file" in err


def test_sftp_flags_win_over_the_config_file_and_keep_its_other_options(tmp_path):
    key, hosts = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("k")
    hosts.write_text("h")
    config = tmp_path / "musicfs.toml"
    config.write_text('origin_options = {identity_file = "/etc/other", read_timeout = 3}\n')
    args = cli.build_parser().parse_args(["mount", "sftp://me@h/music", str(tmp_path / "mnt"), "--config", str(config),
                                          "--sftp-identity", str(key), "--sftp-known-hosts", str(hosts)])
    cfg = cli._config(args, ["sftp://me@h/music"], str(tmp_path / "mnt"))
    assert cfg.origin_options == {"identity_file": str(key), "known_hosts": str(hosts), "read_timeout": 3}
    assert cfg.sources == ("sftp://me@h/music",)


def test_health_settings_come_from_the_config_file(tmp_path):
    config = tmp_path / "musicfs.toml"
    config.write_text("health_interval = 2\nhealth_timeout = 0.5\nfailover_grace = 30\n")
    cfg = load(str(config), {})
    assert (cfg.health_interval, cfg.health_timeout, cfg.failover_grace) == (2.0, 0.5, 30.0)
    config.write_text("health_timeout = 0\n")
    with pytest.raises(ConfigError, match="health_timeout"):
        load(str(config), {})
