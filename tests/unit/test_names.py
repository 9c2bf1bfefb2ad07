"""Issue 14, names: tag text normalised once at scan (NFC, control characters), NFD lookups, hidden files
skipped, compilations under Various Artists; a property test over any tag text."""

from __future__ import annotations

import dataclasses
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs.library import scanner as sync
from musicfs.library.scanner import Scanner, is_hidden
from musicfs.library.tags import Tags, catalog_fields
from musicfs.library.tree import FIRST_INO, NAME_MAX, ROOT_INO, build_tree
from musicfs.origins.local import LocalOrigin
from musicfs.origins.registry import OriginRegistry
from musicfs.shared.config import ConfigError, load
from musicfs.shared.text import normalise
from musicfs_test_utils.fixtures import (
    HIDDEN_FILES,
    make_file_meta,
    make_library,
    make_names_library,
    open_catalog,
    setup_test_tree,
)


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029"


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


# -- text.normalise --------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, want", [
    ("Line one\nLine two\ttab", "Line one Line two tab"),
    ("Control\x07Bell", "Control Bell"),
    ("  a \x00\x1f\x7f\x85\x9f b  ", "a b"),
    ("para\u2028graph", "para graph"),
    (nfd("Éric Serra"), "Éric Serra"),
    ("\n\t\r", ""),
    ("夏の雨", "夏の雨"),
])
def test_normalise_examples(raw, want):
    assert normalise(raw) == want


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalise_gives_nfc_text_without_controls_or_space_runs(raw):
    out = normalise(raw)
    assert unicodedata.is_normalized("NFC", out)
    assert not any(is_control(ch) for ch in out)
    assert "  " not in out and out == out.strip()
    assert normalise(out) == out  # once is enough: normalising again changes nothing


# -- property: any tag text gives a good name --------------------------------------------------------------
# Tags reach the scanner as text mutagen decoded (no lone surrogates); controls, combining marks, separators,
# dots, slashes and very long text are drawn on purpose.
_chars = st.one_of(st.characters(exclude_categories=["Cs"]),
                   st.sampled_from(["\n", "\t", "\x07", "\x7f", "\x85", "\u2028", "\u0301", "\u0308", "e", "/",
                                    "\0", ".", " ", "夏", "🎻"]))
_tag = st.one_of(st.none(), st.text(alphabet=_chars, max_size=24),
                 st.text(alphabet=_chars, min_size=1, max_size=6).map(lambda s: s * 80))
_one = st.tuples(_tag, _tag, _tag, _tag, st.one_of(st.none(), st.integers(0, 99)), st.booleans(),
                 st.text(alphabet=_chars, min_size=1, max_size=30).filter(lambda s: "/" not in s))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_one, min_size=1, max_size=8))
def test_any_tag_text_gives_nfc_names_without_controls_short_and_unique(items):
    rows = []
    for i, (artist, albumartist, album, title, track_no, compilation, stem) in enumerate(items):
        found = Tags(artist=artist, albumartist=albumartist, album=album, title=title, track_no=track_no,
                     compilation=compilation)
        rows.append(make_file_meta(i + 1, f"src/{stem}#{i}.flac", 1000, **catalog_fields(found)))
    tree = setup_test_tree(rows)
    assert len(list(tree.walk_files())) == len(rows)  # unique in its folder: nobody overwritten
    for ino, node in tree.nodes.items():
        if ino == ROOT_INO:
            continue
        name = node.name.decode("utf-8")
        assert name and len(node.name) <= NAME_MAX
        assert unicodedata.is_normalized("NFC", name), repr(name)
        assert not any(is_control(ch) for ch in name), repr(name)
        assert "/" not in name and not name.startswith(".")
        assert tree.lookup(node.parent, node.name) is node
        assert tree.lookup(node.parent, nfd(name).encode()) is node  # typed decomposed: the same entry
    for listing in tree.listings.values():
        assert len({name for name, _ in listing}) == len(listing)


# -- lookups and the compilation rule ----------------------------------------------------------------------------
def test_nfd_and_nfc_spellings_share_one_folder_and_both_lookups_work():
    rows = [make_file_meta(i + 1, f"s/{i}.flac", 10, **catalog_fields(Tags(artist=a, album="Lemonade", title=t)))
            for i, (a, t) in enumerate([(nfd("Beyoncé"), "Formation"), ("Beyoncé", "Sorry")])]
    tree = setup_test_tree(rows)
    [artist] = [n for n in tree.nodes.values() if n.parent == ROOT_INO and n.ino != ROOT_INO]
    assert artist.name == "Beyoncé".encode() and len(tree.listings[artist.ino]) == 1  # one artist, one album
    assert tree.lookup(ROOT_INO, "Beyoncé".encode()) is artist
    assert tree.lookup(ROOT_INO, nfd("Beyoncé").encode()) is artist
    assert tree.lookup(ROOT_INO, b"Beyonce") is None  # folding is search's business, not the tree's
    assert tree.lookup(ROOT_INO, b"\xff\xfe") is None  # not UTF-8: simply not there


def test_a_compilation_without_album_artist_goes_under_various_artists():
    fields = [catalog_fields(Tags(artist=f"Artist {i}", album="Hits", title=f"T{i}", track_no=i, compilation=True))
              for i in (1, 2)]
    assert {f["albumartist"] for f in fields} == {"Various Artists"}
    own = catalog_fields(Tags(artist="A", albumartist="The Label", album="Hits", compilation=True))
    assert own["albumartist"] == "The Label"  # an album artist of its own is kept
    plain = catalog_fields(Tags(artist="A", album="Solo", compilation=False))
    assert plain["albumartist"] is None
    assert "compilation" not in plain  # a scan-time rule only: the catalog keeps no flag


def test_catalog_fields_normalise_every_text_tag_and_drop_empty_ones():
    found = Tags(artist="Control\x07Bell", albumartist="\t", album=nfd("Café"), title="a\nb", year="2024\n",
                 genre="Pop\x85Rock", track_no=3, duration=1.5)
    assert catalog_fields(found) == {"artist": "Control Bell", "albumartist": None, "album": "Café",
                                     "title": "a b", "year": "2024", "genre": "Pop Rock", "track_no": 3,
                                     "disc_no": None, "duration": 1.5}


# -- hidden files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, default, included", [
    ("a/b.flac", False, False),
    (".hidden/secret.flac", True, False),
    ("a/.dotfile.flac", True, False),
    ("a/.b/c.flac", True, False),
    ("a/._01 formation.flac", True, True),  # AppleDouble: always
    ("._x/._y.flac", True, True),
    ("a/x.y.flac", False, False),
])
def test_is_hidden(path, default, included):
    assert is_hidden(path) is default
    assert is_hidden(path, include_hidden=True) is included


def test_include_hidden_is_a_boolean_config_key(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("include_hidden = true\n")
    assert load(str(conf), {}).include_hidden is True
    assert load(None, {}).include_hidden is False
    conf.write_text('include_hidden = "yes"\n')
    with pytest.raises(ConfigError, match="include_hidden"):
        load(str(conf), {})


# -- a scan of tags as collections hold them -----------------------------------------------------------------
@pytest.fixture(scope="module")
def names_library(tmp_path_factory):
    base = tmp_path_factory.mktemp("names")
    make_library(base / "audio", 12)
    return base / "lib", make_names_library(base / "lib", base / "audio")


def scan(root, state, **kwargs):
    cat = open_catalog(str(state))
    Scanner(cat, OriginRegistry([LocalOrigin(root)]), **kwargs).scan()
    return cat


def tree_paths(cat) -> set[str]:
    tree = build_tree(cat.files(), cat.inode_map(), lambda keys: cat.add_inodes(keys, FIRST_INO))
    return {tree.path(n.ino) for n in tree.walk_files()}


def test_scan_normalises_tags_and_skips_hidden_files(names_library, tmp_path):
    root, shown = names_library
    cat = scan(root, tmp_path / "state")
    try:
        assert tree_paths(cat) == set(shown)
        assert not {r.path for r in cat.files()} & set(HIDDEN_FILES)
        ctl = next(r for r in cat.files() if r.path == "ctl/ctl.flac")
        assert (ctl.artist, ctl.album, ctl.title) == ("Control Bell", "Tabs and Lines", "Line one Line two tab")
        eric = next(r for r in cat.files() if r.path == "nfd/eric.mp3")
        assert eric.artist == "Éric Serra" and unicodedata.is_normalized("NFC", eric.title)
    finally:
        cat.close()


def test_include_hidden_scans_dot_files_but_never_appledouble(names_library, tmp_path):
    root, _shown = names_library
    cat = scan(root, tmp_path / "state", include_hidden=True)
    try:
        paths = {r.path for r in cat.files()}
        assert {".hidden/secret.flac", "visible/.dotfile.flac"} <= paths
        assert "visible/._01 formation.flac" not in paths
    finally:
        cat.close()


def test_a_catalog_read_by_older_rules_has_every_tag_read_again(names_library, tmp_path, monkeypatch):
    root, shown = names_library
    cat = scan(root, tmp_path / "state")
    try:
        row = next(r for r in cat.files() if r.path == "ctl/ctl.flac")
        cat.upsert_files([dataclasses.replace(row, title="Line one\nLine two")])  # as an old version kept it
        cat.set_scan_state(tags_version="1")
        read = []
        real = sync.read_file_row
        monkeypatch.setattr(sync, "read_file_row", lambda o, reg, s, k: read.append(s.path) or real(o, reg, s, k))
        result = Scanner(cat, OriginRegistry([LocalOrigin(root)])).scan()
        assert sorted(read) == sorted(str(p.relative_to(root)) for p in shown.values())
        assert result.changed == len(shown) and result.touched
        assert next(r for r in cat.files() if r.path == "ctl/ctl.flac").title == "Line one Line two tab"
        assert cat.scan_state()["tags_version"] == sync.TAGS_VERSION
        read.clear()
        Scanner(cat, OriginRegistry([LocalOrigin(root)])).scan()
        assert read == []  # up to date now: a rescan reads nothing again
    finally:
        cat.close()
