"""L2, issue 14: the real daemon mounts tags as collections hold them (NFD and NFC spellings, control
characters, a compilation without album artist, CJK, hidden and AppleDouble files), and `ls`/`open` with
NFC names (and NFD ones) read the origin's bytes; `musicfs search` prints paths that open; an index of an
older schema is rebuilt from the catalog at start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import unicodedata

import pytest
import tantivy

from musicfs_test_utils.assertions import file_digest, tree_files
from musicfs_test_utils.fixtures import make_library, make_names_library

pytestmark = pytest.mark.l2


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    base = tmp_path_factory.mktemp("names")
    make_library(base / "audio", 12)
    return base / "lib", make_names_library(base / "lib", base / "audio")


def search(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicfs", "search", *args, "--state-dir", str(daemon.state_dir)],
                          capture_output=True, text=True, timeout=60)


def test_names_are_nfc_without_controls_and_open_by_nfc_and_nfd_names(names, daemons):
    root, shown = names
    daemon = daemons([root], "names").start()
    daemon.wait_for_mount()
    mnt = daemon.mountpoint
    assert {str(p.relative_to(mnt)) for p in tree_files(mnt)} == set(shown)  # nothing hidden, no AppleDouble
    assert sorted(os.listdir(mnt)) == sorted(
        {"Beyoncé", "Control Bell", "Éric Serra", "Various Artists", "Sigur Rós", "坂本 美雨"})
    assert os.listdir(os.path.join(mnt, "Beyoncé")) == ["Lemonade"]  # NFD and NFC tags: one folder
    assert sorted(os.listdir(os.path.join(mnt, "Various Artists", "Hits"))) == ["01 - One.flac", "02 - Two.mp3"]
    for tree_path, origin in shown.items():
        with open(os.path.join(mnt, tree_path), "rb") as fh:  # NFC, as typed
            assert fh.read() == origin.read_bytes(), tree_path
    for tree_path in ("Éric Serra/Le Grand Bleu/03 - Café.mp3", "Beyoncé/Lemonade/01 - Formation.flac"):
        typed = os.path.join(mnt, nfd(tree_path))  # as macOS and some keyboards give it
        assert os.listdir(os.path.dirname(typed))
        assert file_digest(typed) == file_digest(shown[tree_path])
    assert daemon.alive()


def test_search_prints_paths_that_open_and_says_when_nothing_matches(names, daemons):
    root, shown = names
    daemon = daemons([root], "search").start()
    daemon.wait_for_mount()
    for query, want in (("beyonce", {"Beyoncé/Lemonade/01 - Formation.flac", "Beyoncé/Lemonade/02 - Sorry.ogg"}),
                        ("雨", {"坂本 美雨/夏/夏の雨.ogg"}), ("sigur ros glos", {"Sigur Rós/Takk/01 - Glósóli.ogg"}),
                        (nfd("éric"), {"Éric Serra/Le Grand Bleu/03 - Café.mp3"}),
                        ("line two", {"Control Bell/Tabs and Lines/01 - Line one Line two tab.flac"})):
        found = search(daemon, query)
        assert found.returncode == 0, found.stderr
        assert set(found.stdout.splitlines()) == {os.path.join(daemon.mountpoint, p) for p in want}, query
        for line in found.stdout.splitlines():
            assert file_digest(line) == file_digest(shown[os.path.relpath(line, daemon.mountpoint)])
    none = search(daemon, "secret")  # only in hidden files
    assert none.returncode == 1 and none.stdout == "" and "nothing matches" in none.stderr
    bad = search(daemon, "x", "--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr and "panicked" not in bad.stderr


def test_an_index_of_an_older_schema_is_rebuilt_at_start(names, daemons):
    root, shown = names
    daemon = daemons([root], "old").start()
    daemon.wait_for_mount()
    assert daemon.stop() == 0
    index = daemon.state_dir / "index"
    shutil.rmtree(index)
    sb = tantivy.SchemaBuilder()  # what musicfs wrote before schema versions
    for name in ("artist", "album", "title", "genre", "path"):
        sb.add_text_field(name, stored=name == "path")
    index.mkdir()
    tantivy.Index(sb.build(), path=str(index))
    assert search(daemon, "beyonce").returncode == 1  # never searched with the old analyzers
    log_before = len(daemon.log_text())
    daemon.start()
    daemon.wait_for_mount()
    log = daemon.log_text()[log_before:]
    assert log.count("has schema 1, this version uses 2: rebuilding it from the catalog") == 1
    found = search(daemon, "beyonce")
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 2
