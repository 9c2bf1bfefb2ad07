"""VirtualTree: naming rules, collisions, covers, inode stability, and a property test on hostile tags."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs.library.catalog import FileRow
from musicfs.library.tree import (
    FIRST_INO,
    NAME_MAX,
    ROOT_INO,
    VirtualTree,
    build_tree,
    clean_name,
    plan_paths,
)
from musicfs_test_utils.fixtures import (
    counting_assigner,
    make_audio_meta,
    make_file_meta,
    open_catalog,
    setup_test_tree,
)


def track(i: int, path: str, artist=None, album=None, title=None, *, track_no=None, disc_no=None,
          albumartist=None, size=1000, mtime_ns=1_700_000_000_000_000_000) -> FileRow:
    return make_file_meta(i, path, size, mtime_ns=mtime_ns,
                          **make_audio_meta(artist, album, title, track_no=track_no, disc_no=disc_no,
                                            albumartist=albumartist))


def cover(i: int, path: str, size: int = 50) -> FileRow:
    return make_file_meta(i, path, size, kind="cover")


def paths_of(tree: VirtualTree) -> dict[str, FileRow]:
    """tree path -> catalog row, for every file in the tree."""
    return {tree.path(n.ino): n.file for n in tree.walk_files()}


def by_origin(tree: VirtualTree) -> dict[str, str]:
    """origin path -> tree path (tracks only: a cover can appear in several folders)."""
    return {row.path: p for p, row in paths_of(tree).items() if row.kind == "track"}


# -- naming ------------------------------------------------------------------------
def test_artist_album_title_layout():
    files = [
        track(1, "in/a.flac", "Artist", "Album", "Song", track_no=3, albumartist="Band"),
        track(2, "in/b.MP3", "Solo", "Album", "Other", track_no=12),
        track(3, "in/c.ogg", None, None, "Nobody", track_no=1),
        track(4, "in/d.ogg", "", "", "Blank", track_no=2),  # empty tags count as missing
    ]
    assert set(by_origin(setup_test_tree(files)).values()) == {
        "Band/Album/03 - Song.flac",  # albumartist wins over artist
        "Solo/Album/12 - Other.mp3",  # extension lower-cased
        "Unknown Artist/Unknown Album/01 - Nobody.ogg",
        "Unknown Artist/Unknown Album/02 - Blank.ogg",
    }


def test_no_track_number_means_no_prefix():
    files = [track(1, "x/a.flac", "A", "B", "Song"), track(2, "x/b.flac", "A", "B", "Zero", track_no=0)]
    assert set(by_origin(setup_test_tree(files)).values()) == {"A/B/Song.flac", "A/B/00 - Zero.flac"}


def test_missing_title_falls_back_to_the_file_name():
    files = [
        track(1, "raw/My Song.flac", "A", "B", None, track_no=4),
        track(2, "raw/Other Thing.v2.mp3", "A", "B", None),
    ]
    assert set(by_origin(setup_test_tree(files)).values()) == {"A/B/04 - My Song.flac", "A/B/Other Thing.v2.mp3"}


def test_multi_disc_albums_prefix_every_track_with_the_disc():
    files = [
        track(1, "s/d1/01.flac", "Orch", "Symphonies", "Allegro", track_no=1, disc_no=1),
        track(2, "s/d1/02.flac", "Orch", "Symphonies", "Adagio", track_no=2, disc_no=None),  # disc unknown: 1
        track(3, "s/d2/01.flac", "Orch", "Symphonies", "Finale", track_no=1, disc_no=2),
        track(4, "s/d2/xx.flac", "Orch", "Symphonies", "Bonus", disc_no=2),  # no track number: no prefix
        track(5, "o/01.flac", "Orch", "Single Disc", "One", track_no=1, disc_no=1),  # only disc 1: no prefix
    ]
    assert set(by_origin(setup_test_tree(files)).values()) == {
        "Orch/Symphonies/1-01 - Allegro.flac",
        "Orch/Symphonies/1-02 - Adagio.flac",
        "Orch/Symphonies/2-01 - Finale.flac",
        "Orch/Symphonies/Bonus.flac",
        "Orch/Single Disc/01 - One.flac",
    }


def test_slashes_nuls_and_leading_dots_are_neutralised():
    files = [
        track(1, "p/1.ogg", "AC/DC", "High\0Voltage", "T.N.T./Live", track_no=1),
        track(2, "p/2.flac", ".hidden", "..", "../../etc/passwd"),
        track(3, "p/3.flac", ".hidden", "..", ".", track_no=None),
    ]
    tree = setup_test_tree(files)
    got = by_origin(tree)
    assert got["p/1.ogg"] == "AC_DC/High_Voltage/01 - T.N.T._Live.ogg"
    for p in (got["p/2.flac"], got["p/3.flac"]):
        parts = p.split("/")
        assert len(parts) == 3
        assert all(part and not part.startswith(".") for part in parts), p
    assert got["p/2.flac"].split("/")[2].endswith("etc_passwd.flac")
    for node in tree.nodes.values():
        assert b"/" not in node.name and b"\0" not in node.name


@pytest.mark.parametrize("char", ["é", "長", "🎻", "a"])
def test_long_names_are_cut_to_255_bytes_on_a_character_boundary(char):
    title = char * 400
    files = [
        track(1, "l/1.flac", char * 300, char * 300, title, track_no=1),
        track(2, "l/2.flac", char * 300, char * 300, title, track_no=1),  # same long name: needs ' (2)'
    ]
    tree = setup_test_tree(files)
    for node in tree.nodes.values():
        if node.ino == ROOT_INO:
            continue
        assert 0 < len(node.name) <= NAME_MAX
        text = node.name.decode("utf-8")  # strict: never a split character
        assert len(node.name) > NAME_MAX - len(char.encode()) - 10  # cut close to the limit, not far below
        if not node.is_dir:
            assert text.endswith(".flac")
    names = sorted(n.name.decode() for n in tree.walk_files())
    assert len(set(names)) == 2
    assert any(n.endswith(" (2).flac") for n in names)


@pytest.mark.parametrize(
    "raw, clean",
    [("\udcc3\udca9", "é"),  # undecodable bytes that are valid UTF-8 together
     ("a\udcff", "a\ufffd"), (" .x ", "_x"), ("", "_"), ("\0", "_"), ("/", "_"), ("a/b\0c", "a_b_c"),
     # an origin name that is not UTF-8, as the origin escapes it (origins/base.py escape_name)
     ("caf\ufdd0E9", "caf\ufffd"), ("\ufdd0C3\ufdd0A9t\ufdd0E9", "\u00e9t\ufffd")],
)
def test_clean_name(raw, clean):
    assert clean_name(raw) == clean


@pytest.mark.parametrize("raw", ["\ud800x", "\ud800\udcc3", "x\udfff"])
def test_clean_name_replaces_lone_surrogates(raw):
    out = clean_name(raw)
    out.encode("utf-8")  # strict: no surrogate survives
    assert "\ufffd" in out and out.strip("\ufffd") == raw.strip("\ud800\udcc3\udfff")


# -- collisions ----------------------------------------------------------------------------
def test_collisions_are_numbered_by_origin_path_whatever_the_input_order():
    files = [track(i, f"src/take{i}.flac", "Busker", "Sessions", "Untitled Jam") for i in (3, 1, 2)]
    files.append(track(9, "src/take0.mp3", "Busker", "Sessions", "Untitled Jam"))  # other extension: no clash
    expected = {
        "src/take1.flac": "Busker/Sessions/Untitled Jam.flac",
        "src/take2.flac": "Busker/Sessions/Untitled Jam (2).flac",
        "src/take3.flac": "Busker/Sessions/Untitled Jam (3).flac",
        "src/take0.mp3": "Busker/Sessions/Untitled Jam.mp3",
    }
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(files)
        assert by_origin(setup_test_tree(list(files))) == expected


def test_a_title_that_looks_like_a_numbered_duplicate():
    files = [
        track(1, "a/1.flac", "A", "B", "X"),
        track(2, "a/2.flac", "A", "B", "X (2)"),
        track(3, "a/3.flac", "A", "B", "X"),
    ]
    got = by_origin(setup_test_tree(files))
    assert got["a/1.flac"] == "A/B/X.flac" and got["a/2.flac"] == "A/B/X (2).flac"
    assert got["a/3.flac"] == "A/B/X (3).flac"


def test_same_name_in_different_albums_is_not_a_collision():
    files = [track(1, "a/1.flac", "A", "One", "Intro", track_no=1), track(2, "b/1.flac", "A", "Two", "Intro", track_no=1)]
    assert set(by_origin(setup_test_tree(files)).values()) == {"A/One/01 - Intro.flac", "A/Two/01 - Intro.flac"}


# -- covers --------------------------------------------------------------------------------
def test_covers_join_the_albums_of_tracks_from_their_folder():
    files = [
        track(1, "Quartet/Lights/01.flac", "Quartet", "Lights", "Dawn", track_no=1),
        cover(2, "Quartet/Lights/cover.jpg"),
        track(3, "VA/Mix/01.mp3", "X", "Mix", "A", albumartist="Various"),
        track(4, "VA/Mix/02.mp3", "Y", "Other Mix", "B", albumartist="Various"),  # same folder, two albums
        cover(5, "VA/Mix/Folder.PNG"),
        cover(6, "Lonely/front.jpg"),  # no track in its folder: not shown
        cover(7, "Quartet/Lights/Disc 1/cover.jpg"),  # a sub-folder without tracks: not shown
    ]
    tree = setup_test_tree(files)
    covers = {p: row.path for p, row in paths_of(tree).items() if row.kind == "cover"}
    assert covers == {
        "Quartet/Lights/cover.jpg": "Quartet/Lights/cover.jpg",
        "Various/Mix/Folder.png": "VA/Mix/Folder.PNG",
        "Various/Other Mix/Folder.png": "VA/Mix/Folder.PNG",
    }
    inos = [n.ino for n in tree.walk_files() if n.file.path == "VA/Mix/Folder.PNG"]
    assert len(set(inos)) == 2  # one image, two folders, two inodes
    node = tree.lookup(tree.lookup(tree.lookup(ROOT_INO, b"Quartet").ino, b"Lights").ino, b"cover.jpg")
    assert node.size == 50 and node.file.kind == "cover"


def test_junk_is_never_in_the_tree():
    files = [track(1, "a/1.flac", "A", "B", "C"), make_file_meta(2, "misc/broken.mp3", 10, kind="junk")]
    tree = setup_test_tree(files)
    assert [n.file.path for n in tree.walk_files()] == ["a/1.flac"]
    assert tree.track_count == 1


# -- the tree object ------------------------------------------------------------------------
def test_tree_structure_lookups_and_attributes():
    files = [
        track(1, "a/1.flac", "A", "B", "One", track_no=1, size=111, mtime_ns=5),
        track(2, "a/2.flac", "A", "B", "Two", track_no=2, size=222, mtime_ns=9),
        track(3, "c/1.mp3", "C", "D", "Three", size=333, mtime_ns=7),
    ]
    tree = setup_test_tree(files)
    root = tree.get(ROOT_INO)
    assert root.is_dir and [name for name, _ in tree.listings[ROOT_INO]] == [b"A", b"C"]
    a = tree.lookup(ROOT_INO, b"A")
    b = tree.lookup(a.ino, b"B")
    assert [name for name, _ in tree.listings[b.ino]] == [b"01 - One.flac", b"02 - Two.flac"]
    two = tree.lookup(b.ino, b"02 - Two.flac")
    assert (two.size, two.mtime_ns, two.parent, two.is_dir) == (222, 9, b.ino, False)
    assert tree.path(two.ino) == "A/B/02 - Two.flac"
    assert b.mtime_ns == 9 and a.mtime_ns == 9 and root.mtime_ns == 9  # folders: newest content
    assert tree.total_size == 111 + 222 + 333 and tree.track_count == 3
    assert tree.lookup(ROOT_INO, b"nope") is None
    assert tree.lookup(two.ino, b"x") is None  # a file has no children
    assert tree.lookup(12345, b"A") is None and tree.get(12345) is None
    assert all(ino >= FIRST_INO for ino in tree.nodes if ino != ROOT_INO)


def test_empty_catalog_gives_an_empty_root():
    tree = setup_test_tree([])
    assert list(tree.nodes) == [ROOT_INO] and tree.listings[ROOT_INO] == []


# -- inode stability -----------------------------------------------------------------------
def test_inodes_are_stable_across_rebuilds():
    assign = counting_assigner()
    base = [track(1, "a/1.flac", "A", "B", "One", track_no=1), track(2, "a/2.flac", "A", "B", "Two", track_no=2),
            cover(3, "a/cover.jpg")]
    first = build_tree(base, {}, assign)
    inos = {tree_path: ino for tree_path, ino in ((first.path(n.ino), n.ino) for n in first.nodes.values())}

    # unchanged input: identical numbers, no new allocations
    allocated = len(assign.known)
    again = build_tree(list(reversed(base)), dict(assign.known), assign)
    assert {again.path(n.ino): n.ino for n in again.nodes.values()} == inos
    assert len(assign.known) == allocated

    # another track added (and a retag that renames track 2): old files keep their numbers
    more = [base[0], dataclasses.replace(base[1], title="Two (remastered)"), base[2],
            track(4, "a/0.flac", "A", "B", "Zero", track_no=0)]
    third = build_tree(more, dict(assign.known), assign)
    by_path = {n.file.path: n.ino for n in third.walk_files()}
    old_by_path = {n.file.path: n.ino for n in first.walk_files()}
    for path in ("a/1.flac", "a/2.flac", "a/cover.jpg"):
        assert by_path[path] == old_by_path[path]
    assert by_path["a/0.flac"] not in old_by_path.values()
    assert third.path(by_path["a/2.flac"]) == "A/B/02 - Two (remastered).flac"
    assert third.lookup(ROOT_INO, b"A").ino == inos["A"]


def test_inodes_survive_a_restart_through_the_catalog(tmp_path):
    files = [track(1, "a/1.flac", "A", "B", "One", track_no=1), track(2, "b/2.flac", "C", "D", "Two")]

    def build(cat):
        return build_tree(files, cat.inode_map(), lambda keys: cat.add_inodes(keys, FIRST_INO))

    cat = open_catalog(str(tmp_path))
    before = {t.path(n.ino): n.ino for t in [build(cat)] for n in t.nodes.values()}
    cat.close()
    cat = open_catalog(str(tmp_path))
    after = {t.path(n.ino): n.ino for t in [build(cat)] for n in t.nodes.values()}
    cat.close()
    assert before == after and len(set(before.values())) == len(before)


@pytest.mark.resilience("4.5")
def test_a_changed_file_gets_a_new_inode_and_its_old_number_is_never_handed_out_again(tmp_path):
    files = [track(1, "a/1.flac", "A", "B", "One", track_no=1), track(2, "a/2.flac", "A", "B", "Two", track_no=2)]
    cat = open_catalog(str(tmp_path))

    def build(rows):
        tree = build_tree(rows, cat.inode_map(), lambda keys: cat.add_inodes(keys, FIRST_INO))
        return {n.file.path: n.ino for n in tree.walk_files()}

    first = build(files)
    edited = dataclasses.replace(files[1], mtime_ns=files[1].mtime_ns + 1)  # same size and tags, new content
    second = build([files[0], edited])
    assert second["a/1.flac"] == first["a/1.flac"]  # unchanged: same inode
    assert second["a/2.flac"] not in first.values()  # changed: a new inode, so a page cache of its own
    assert len(cat.inode_map()) == 4  # artist, album and one key per file: old versions are dropped
    back = build(files)  # back to the first identity: still a number never used before
    assert back["a/2.flac"] not in (first["a/2.flac"], second["a/2.flac"])
    cat.close()


# -- property: hostile tags never make a bad name ------------------------------------------
_HOSTILE = ["", " ", "/", "\0", ".", "..", "../..", "a/b", ".hidden", "x" * 1000, "é" * 600, "🎻" * 300,
            "\ud800", "\udcff", "\udcc3\udca9", "trailing ", "Same", "Same", "same", "\u2028"]
_chars = st.one_of(st.characters(), st.sampled_from(["/", "\0", ".", " ", "é", "🎻"]),
                   st.characters(categories=["Cs"]))
_tag = st.one_of(st.none(), st.sampled_from(_HOSTILE), st.text(alphabet=_chars, max_size=20),
                 st.text(alphabet=_chars, min_size=1, max_size=8).map(lambda s: s * 60))  # long names, cheaply
_stem = st.text(alphabet=st.characters(exclude_characters="/\0", exclude_categories=["Cs"]), min_size=1, max_size=80)


_row_parts = st.tuples(
    st.sampled_from(["s1", "s2", "s1/deep"]),  # source folder
    st.one_of(_stem, st.sampled_from(["..", ".x", "same", " "])),  # file name stem (title fallback)
    st.sampled_from([".flac", ".mp3", ".ogg", ".FLAC"]),
    _tag, _tag, _tag, _tag,  # artist, album, title, albumartist
    st.one_of(st.none(), st.integers(0, 120)),  # track number
    st.one_of(st.none(), st.integers(0, 3)),  # disc number
)
_covers = st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]), st.sampled_from(["cover.jpg", "Folder.PNG"])),
                   unique_by=lambda c: c[0], max_size=3)


@st.composite
def _library(draw):
    rows = []
    for i, (folder, stem, ext, artist, album, title, albumartist, track_no, disc_no) in enumerate(
            draw(st.lists(_row_parts, min_size=1, max_size=10))):
        rows.append(track(i + 1, f"{folder}/{stem}#{i}{ext}", artist, album, title, track_no=track_no,
                          disc_no=disc_no, albumartist=albumartist))
    for folder, name in draw(_covers):
        rows.append(cover(100 + len(rows), f"{folder}/{name}"))
    return rows


@pytest.mark.resilience("5.6")
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_library())
def test_every_name_is_safe_and_unique(rows):
    placed = plan_paths(rows)
    places = [place for place, _row in placed]
    assert len(places) == len(set(places)), "two files share a name in one folder"
    assert sorted(r.path for _, r in placed if r.kind == "track") == sorted(r.path for r in rows if r.kind == "track")

    tree = setup_test_tree(rows)
    files = list(tree.walk_files())
    assert len(files) == len(placed)  # nobody overwritten in a folder's children
    for node in tree.nodes.values():
        if node.ino == ROOT_INO:
            continue
        name = node.name
        assert name, node
        assert len(name) <= NAME_MAX
        name.decode("utf-8")  # valid UTF-8, strictly
        assert b"/" not in name and b"\0" not in name
        assert not name.startswith(b".")
        assert tree.nodes[node.parent].children[name] == node.ino
    for ino, listing in tree.listings.items():
        names = [name for name, _ in listing]
        assert len(names) == len(set(names))
    for node in files:  # Artist/Album/file: always exactly three levels
        assert len(tree.path(node.ino).split("/")) == 3
        if node.file.kind == "track":
            assert os.path.splitext(node.name.decode())[1] == os.path.splitext(node.file.path)[1].lower()
