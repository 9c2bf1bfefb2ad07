"""What a new user meets first at the command line (issue 22, item 8), through the real CLI: `musicfs` alone
lists the commands, `mount --help` names the three kinds of source in one clean usage line, the test-only
`failpoints` command is not among the user's, and `demo` never writes into a folder that holds files."""

from __future__ import annotations

import subprocess
import sys

EX_USAGE = 2


def musicfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicfs", *args], capture_output=True, text=True, timeout=60)


def test_musicfs_alone_lists_its_commands_as_a_usage_error():
    result = musicfs()
    assert result.returncode == EX_USAGE and result.stdout == ""
    for command in ("mount", "scan", "search", "status", "pin", "unpin", "pins", "fsck", "demo"):
        assert f"\n    {command} " in result.stderr, command
    assert "failpoints" not in result.stderr


def test_the_mount_usage_is_one_line_naming_every_kind_of_source():
    result = musicfs("mount", "--help")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "usage: musicfs mount [options] SOURCE [SOURCE ...] MOUNTPOINT"
    assert "s3://BUCKET" in result.stdout and "sftp://" in result.stdout and "a folder" in result.stdout


def test_demo_refuses_a_folder_that_holds_files_and_writes_into_a_new_one(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = musicfs("demo", str(mine), "--tracks", "1")
    assert result.returncode == EX_USAGE
    assert result.stderr.strip().splitlines() == [
        f"musicfs: DIR: {mine} is not empty: the demo writes a library of its own into an empty or new folder "
        "(nothing of yours is overwritten)"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    fresh = tmp_path / "fresh"
    assert musicfs("demo", str(fresh), "--tracks", "1").returncode == 0
    assert any(p.suffix in (".flac", ".mp3", ".ogg") for p in fresh.rglob("*"))


def test_a_source_of_an_unknown_scheme_is_a_usage_error_naming_it(tmp_path):
    for source in ("s4://music/library", "http://nas/music"):
        result = musicfs("mount", source, str(tmp_path / "mnt"))
        assert result.returncode == EX_USAGE
        assert result.stderr.strip().splitlines()[-1] == (
            f"musicfs: SOURCE: unsupported scheme in {source!r} (use a directory, s3://, sftp://)")
        assert not (tmp_path / "mnt").exists()


def test_the_scan_summary_counts_what_it_skipped_by_reason(tmp_path):
    from musicfs_test_utils.fixtures import make_library

    source = tmp_path / "library"
    make_library(source, 3, hostile=False)
    (source / "notes.txt").write_text("not music")
    (source / "Artist" / "booklet.pdf").parent.mkdir(exist_ok=True)
    (source / "Artist" / "booklet.pdf").write_bytes(b"%PDF-1.4")
    (source / ".trash").mkdir()
    (source / ".trash" / "old.mp3").write_bytes(b"ID3")
    (source / "._old.mp3").write_bytes(b"\0\5\26\7")
    (source / "truncated.flac").write_bytes(b"fLaC")
    result = musicfs("scan", str(source), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert ", 1 unreadable, 2 not audio, 2 hidden in " in summary, summary
    assert "truncated.flac" in result.stderr  # the unreadable one is named in a line of its own
