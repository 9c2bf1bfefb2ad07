"""One spelling per library (shared/sources.py): what a SOURCE becomes before it names a library."""

from __future__ import annotations

import pytest

from musicfs.shared import BadArgument, Config, canonical_source, library_id


@pytest.mark.parametrize("typed,canonical", [
    ("s3://music/library/", "s3://music/library"),
    ("s3://music//library/./x/", "s3://music/library/x"),
    ("s3://music/", "s3://music"),
    ("S3://music/Library", "s3://music/Library"),  # keys are case-sensitive; the scheme is not
    ("sftp://Me@NAS.lan:22/srv/music/", "sftp://Me@nas.lan/srv/music"),  # the user name is case-sensitive
    ("sftp://nas:2222//srv/", "sftp://nas:2222/srv"),
    ("sftp://[::1]:22/x", "sftp://[::1]/x"),
    ("sftp://nas/", "sftp://nas/"),  # the server's root ...
    ("sftp://nas", "sftp://nas"),  # ... is not the login folder
    ("sftp://nas/~/music/", "sftp://nas/~/music"),
    ("/srv//music/./", "/srv/music"),
])
def test_every_spelling_of_a_source_has_one_canonical_form(typed, canonical):
    assert canonical_source(typed) == canonical
    assert canonical_source(canonical) == canonical


@pytest.mark.parametrize("typed,words", [
    ("s3:/music/library", "one slash: write s3://music/library"),
    ("sftp:/nas/x", "one slash: write sftp://nas/x"),
    ("s3://music/a/../b", "'..'"),
])
def test_a_source_that_cannot_be_one_says_why(typed, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        canonical_source(typed)
    with pytest.raises(BadArgument, match="SOURCE"):
        Config(sources=(typed,)).resolved()


def test_a_folder_named_like_a_scheme_that_exists_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s3:").mkdir()
    assert canonical_source("s3:/x") == str(tmp_path / "s3:" / "x")


def test_a_library_named_by_an_older_spelling_keeps_its_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    typed = "s3://music/library/"
    fresh = Config(sources=(typed,)).resolved()
    assert fresh.sources == ("s3://music/library",)
    assert fresh.state_dir.endswith(library_id(["s3://music/library"]))
    old = tmp_path / "state" / "musicfs" / library_id([typed])  # mounted before sources were canonical
    old.mkdir(parents=True)
    kept = Config(sources=(typed,)).resolved()
    assert kept.state_dir == str(old) and kept.cache_dir == str(tmp_path / "cache" / "musicfs" / old.name)
    assert Config(sources=("s3://music//library",)).resolved().state_dir == fresh.state_dir  # another spelling
