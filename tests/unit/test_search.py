"""Issue 14, search as people type: case and accent folding (both ways, NFC and NFD), word prefixes, CJK
by characters, mixed scripts, ranking; the CLI's paths, --json, exit codes; the index's schema version."""

from __future__ import annotations

import json
import logging
import os
import unicodedata

import pytest
import tantivy

from musicfs.commands import cli
from musicfs.library.search import (
    SCHEMA_VERSION,
    VERSION_FILE,
    IndexDoc,
    SearchIndex,
    schema_version,
)
from musicfs.library.storage import Library
from musicfs.library.tags import Tags, catalog_fields
from musicfs.shared.config import Config
from musicfs.shared.errors import SearchIndexError
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.fixtures import make_file_meta, make_library, setup_test_tree


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def doc(i: int, artist: str, album: str, title: str, genre: str = "", duration: float | None = 200.0) -> IndexDoc:
    return IndexDoc(i, f"{artist}/{album}/{title}.flac", artist, album, title, genre, duration)


def scanned(i: int, artist: str, album: str, title: str) -> IndexDoc:
    """A document of tags as the scan stores them (tags.catalog_fields) and the tree names them."""
    tags = catalog_fields(Tags(artist=artist, album=album, title=title))
    tree = setup_test_tree([make_file_meta(i, f"x/{i}.flac", 10, **tags)])
    [node] = tree.walk_files()
    return IndexDoc(i, tree.path(node.ino), tags["artist"], tags["album"], tags["title"])


DOCS = [
    doc(1, "Beyoncé", "Lemonade", "Formation", "R&B", 206.5),
    doc(2, "Björk", "Homogenic", "Jóga"),
    doc(3, "Motörhead", "Ace of Spades", "Ace of Spades"),
    doc(4, "Sigur Rós", "Takk", "Glósóli"),
    doc(5, "Café Tacvba", "Re", "La Ingrata"),
    scanned(6, nfd("Éric Serra"), "Le Grand Bleu", nfd("Café Bleu")),  # NFD tags, through the scan's rules
    doc(7, "坂本 美雨", "Summer Compilation", "夏の雨"),
    doc(8, "Orchestra", "Complete Symphonies", "Symphony No. 5"),
    doc(9, "Beyonce Tribute Band", "Covers", "Halo"),  # the same word without its accent
    doc(10, "Nobody", "Hunter", "Other Song"),  # album match
    doc(11, "Someone", "Another Album", "Hunter"),  # title match
    doc(12, "Ryuichi", "Rain 雨 Live", "Rain 夏の雨 (Live)"),  # mixed scripts
    doc(13, "Orchestra", "Symphonic Poems", "Symphonic"),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    idx = SearchIndex(str(tmp_path_factory.mktemp("search") / "index"))
    assert idx.rebuild(DOCS) == len(DOCS)
    return idx


def ids(index: SearchIndex, query: str) -> list[int]:
    by_path = {d.path: d.id for d in DOCS}
    return [by_path[p] for p in index.search(query)]


@pytest.mark.parametrize("query, want", [
    ("beyonce", {1, 9}), ("BEYONCE", {1, 9}),
    ("bjork", {2}), ("joga", {2}), ("motorhead", {3}), ("sigur ros", {4}), ("ros", {4}), ("glosoli", {4}),
    ("cafe", {5, 6}), ("eric", {6}), ("eric cafe", {6}),
])
def test_accents_and_case_fold(index, query, want):
    assert set(ids(index, query)) == want


@pytest.mark.parametrize("query, want", [("Beyoncé", {1, 9}), ("Björk", {2}), ("MOTÖRHEAD", {3}), ("Rós", {4}),
                                         ("Éric", {6}), ("ÉRIC", {6})])
def test_accented_queries_find_unaccented_and_accented_text(index, query, want):
    assert set(ids(index, query)) == want  # accents both ways: Beyoncé finds "Beyonce Tribute Band" too


def test_nfd_and_nfc_queries_and_tags_meet(index):
    assert ids(index, nfd("Beyoncé")) == ids(index, "Beyoncé")  # NFD query, NFC tag
    assert ids(index, "Éric Serra") == [6] == ids(index, nfd("Éric Serra"))  # NFC and NFD query, NFD tag
    assert ids(index, nfd("Café Bleu")) == [6]


@pytest.mark.parametrize("query, want", [("symph", {8, 13}), ("beyon", {1, 9}), ("sig ro", {4}), ("mot", {3}),
                                         ("ac spa", {3}), ("symphony", {8})])
def test_word_prefixes_match(index, query, want):
    assert set(ids(index, query)) == want


def test_prefixes_start_at_word_starts_only(index):
    assert ids(index, "ymph") == [] and ids(index, "yonce") == []


@pytest.mark.parametrize("query, want", [("雨", {7, 12}), ("夏の", {7, 12}), ("の雨", {7, 12}), ("夏の雨", {7, 12}),
                                         ("美雨", {7}), ("坂本", {7}), ("本", {7})])
def test_cjk_matches_by_character_runs(index, query, want):
    assert set(ids(index, query)) == want


def test_cjk_characters_must_be_adjacent(index):
    assert ids(index, "夏雨") == []  # both characters are there, not as a run


@pytest.mark.parametrize("query, want", [("rain 雨", {12}), ("ryu 夏の雨", {12}), ("sakamoto 雨", set()),
                                         ("坂本 summer", {7}), ("live 雨", {12})])
def test_mixed_scripts(index, query, want):
    assert set(ids(index, query)) == want


def test_a_title_match_ranks_above_an_album_match(index):
    assert ids(index, "hunter") == [11, 10]


def test_a_whole_word_ranks_above_a_longer_word_it_starts(index):
    assert ids(index, "symphonic")[0] == 13  # title "Symphonic" (whole) first
    assert ids(index, "symphony")[0] == 8


def test_a_word_can_be_restricted_to_a_field(index):
    assert ids(index, "title:hunter") == [11]
    assert ids(index, "album:hunter") == [10]
    assert ids(index, "artist:cafe") == [5]


@pytest.mark.parametrize("query", ["", "  ", "\n\t", "*", "!!!", '"', "a^^2", "((", "\x07", "nosuchfield:"])
def test_queries_without_words_find_nothing(index, query):
    assert index.search(query) == []


def test_limits(index):
    assert index.search("beyonce", limit=0) == []
    assert len(index.search("beyonce", limit=1)) == 1
    assert set(index.search("symph", limit=10**30)) == {DOCS[7].path, DOCS[12].path}  # never past the count


def test_hits_carry_what_json_shows(index):
    [hit] = index.hits("formation")
    assert (hit.path, hit.artist, hit.album, hit.title, hit.duration) == (
        "Beyoncé/Lemonade/Formation.flac", "Beyoncé", "Lemonade", "Formation", 206.5)


# -- the command line ----------------------------------------------------------------------------------------
@pytest.fixture
def state(tmp_path):
    state = tmp_path / "state"
    SearchIndex(str(state / "index")).rebuild(DOCS)
    return state


def test_cli_prints_full_paths_inside_the_mount(state, tmp_path, capsys):
    (state / "daemon.json").write_text(json.dumps({"mountpoint": str(tmp_path / "mnt"), "pid": 1}))
    assert cli.main(["search", "hunter", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [str(tmp_path / "mnt" / "Someone/Another Album/Hunter.flac"),
                   str(tmp_path / "mnt" / "Nobody/Hunter/Other Song.flac")]


def test_cli_without_a_recorded_mount_prints_tree_paths(state, capsys):
    assert cli.main(["search", "formation", "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out == "Beyoncé/Lemonade/Formation.flac\n"


def test_cli_json(state, tmp_path, capsys):
    (state / "daemon.json").write_text(json.dumps({"mountpoint": "/music"}))
    assert cli.main(["search", "beyonce", "--json", "--limit", "1", "--state-dir", str(state)]) == 0
    assert json.loads(capsys.readouterr().out) == [{"path": "/music/Beyoncé/Lemonade/Formation.flac",
                                                    "artist": "Beyoncé", "album": "Lemonade",
                                                    "title": "Formation", "duration": 206.5}]


def test_cli_no_match_says_so_on_stderr_and_exits_1(state, capsys):
    assert cli.main(["search", "zzzz", "--state-dir", str(state)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "nothing matches 'zzzz'" in captured.err


@pytest.mark.parametrize("value, why", [("0", "at least 1"), ("-1", "at least 1"), ("x", "whole number"),
                                        ("1.5", "whole number")])
def test_cli_bad_limit_is_a_usage_error(state, capsys, value, why):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["search", "beyonce", "--limit", value, "--state-dir", str(state)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --limit" in err and why in err and "Traceback" not in err and "panicked" not in err


# -- schema version -----------------------------------------------------------------------------------------
def old_index(path) -> None:
    """An index as musicfs wrote it before schema versions: default tokenizer, no version file."""
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("id", stored=True, indexed=True)
    for name in ("artist", "album", "title", "genre", "path"):
        sb.add_text_field(name, stored=name == "path")
    os.makedirs(path)
    index = tantivy.Index(sb.build(), path=str(path))
    writer = index.writer(heap_size=15 << 20, num_threads=1)
    d = tantivy.Document()
    d.add_unsigned("id", 1)
    for name in ("artist", "album", "title", "genre", "path"):
        d.add_text(name, "Beyoncé")
    writer.add_document(d)
    writer.commit()
    writer.wait_merging_threads()
    del writer


def test_a_new_index_records_its_schema_version(tmp_path):
    SearchIndex(str(tmp_path / "index"))
    assert (tmp_path / "index" / VERSION_FILE).read_text().strip() == str(SCHEMA_VERSION)
    assert schema_version(str(tmp_path / "index")) == SCHEMA_VERSION


def test_an_older_index_is_never_searched(tmp_path, capsys):
    old_index(tmp_path / "state" / "index")
    index = SearchIndex(str(tmp_path / "state" / "index"), create=False)
    assert index.outdated and index.version == 1
    with pytest.raises(SearchIndexError, match="older musicfs"):
        index.search("beyonce")
    assert cli.main(["search", "beyonce", "--state-dir", str(tmp_path / "state")]) == 1
    assert "older musicfs" in capsys.readouterr().err


def test_an_older_index_is_rebuilt_from_the_catalog_at_start_with_one_log_line(tmp_path):
    make_library(tmp_path / "lib", 12)
    cfg = Config(sources=(str(tmp_path / "lib"),), state_dir=str(tmp_path / "state")).resolved()
    lib = Library.open(cfg, with_cache=False)
    lib.scan()
    lib.close()
    os.rename(tmp_path / "state" / "index", tmp_path / "new-index")
    old_index(tmp_path / "state" / "index")
    with assert_logs("^musicfs.library.search: ", count=1, level=logging.INFO) as lines:
        lib = Library.open(cfg, with_cache=False)
    try:
        assert "has schema 1, this version uses 2: rebuilding it from the catalog" in lines[0]
        assert not lib.index.outdated and lib.repairs == []  # not damage: nothing moved aside
        assert not [p for p in os.listdir(tmp_path / "state") if "damaged" in p]
        tree = lib.build_tree()
        assert lib.index.count() == 0 != tree.track_count  # what makes the daemon reindex at start
        assert lib.reindex(tree) == tree.track_count
        assert lib.index.search("bjork muller")  # the new analyzers: folded
    finally:
        lib.close()


def test_a_rebuild_of_an_older_index_replaces_it_first(tmp_path):
    old_index(tmp_path / "index")
    index = SearchIndex(str(tmp_path / "index"))
    assert index.outdated
    assert index.rebuild(DOCS) == len(DOCS)  # what `fsck --repair` does with an outdated index
    assert not index.outdated and index.search("bjork") == [DOCS[1].path]
    assert SearchIndex(str(tmp_path / "index"), create=False).version == SCHEMA_VERSION


def test_fsck_reports_an_older_index_and_repair_rebuilds_it(tmp_path, capsys):
    from musicfs.commands.fsck import EXIT_CLEAN, EXIT_LEFT, EXIT_REPAIRED, run_fsck

    make_library(tmp_path / "lib", 12)
    cfg = Config(sources=(str(tmp_path / "lib"),), state_dir=str(tmp_path / "state"),
                 cache_dir=str(tmp_path / "cache")).resolved()
    lib = Library.open(cfg)
    lib.scan()
    lib.reindex(lib.build_tree())
    lib.close()
    os.rename(tmp_path / "state" / "index", tmp_path / "new-index")
    old_index(tmp_path / "state" / "index")
    capsys.readouterr()
    assert run_fsck(cfg.state_dir, cfg.cache_dir) == EXIT_LEFT
    assert "built by an older musicfs (schema 1)" in capsys.readouterr().out
    assert run_fsck(cfg.state_dir, cfg.cache_dir, repair=True) == EXIT_REPAIRED
    assert run_fsck(cfg.state_dir, cfg.cache_dir) == EXIT_CLEAN
    assert SearchIndex(cfg.state_dir + "/index", create=False).search("bjork muller")
