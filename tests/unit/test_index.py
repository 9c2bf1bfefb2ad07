"""SearchIndex: rebuild + search over tree paths, conjunction, odd queries, reopen, missing index."""

from __future__ import annotations

import os

import pytest

from musicfs.library.search import IndexDoc, SearchIndex
from musicfs.shared.errors import SearchIndexError

DOCS = [
    IndexDoc(10, "Aurora Quartet/Northern Lights/01 - Polar Dawn.flac", "Aurora Quartet", "Northern Lights",
             "Polar Dawn", "Ambient"),
    IndexDoc(11, "Aurora Quartet/Northern Lights/02 - Midnight Sun.mp3", "Aurora Quartet", "Northern Lights",
             "Midnight Sun", "Ambient"),
    IndexDoc(12, "Björk Müller/Café Träume/01 - Über den Dächern.flac", "Björk Müller", "Café Träume",
             "Über den Dächern", "Chanson"),
    IndexDoc(13, "Midnight Orchestra/The Complete Symphonies/1-01 - Allegro.flac", "Midnight Orchestra",
             "The Complete Symphonies", "Symphony No. 1: Allegro", "Classical"),
    IndexDoc(14, "Various Artists/Summer Compilation 2024/02 - 夏の雨.ogg", "坂本 美雨", "Summer Compilation 2024",
             "夏の雨", "Pop"),
]


@pytest.fixture
def index(tmp_path):
    """A fresh index a test may change."""
    idx = SearchIndex(str(tmp_path / "index"))
    assert idx.rebuild(DOCS) == len(DOCS)
    return idx


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One index for the read-only tests (building one costs ~0.1 s)."""
    idx = SearchIndex(str(tmp_path_factory.mktemp("shared") / "index"))
    assert idx.rebuild(DOCS) == len(DOCS)
    return idx


def paths(*ids: int) -> set[str]:
    return {d.path for d in DOCS if d.id in ids}


def test_search_returns_tree_paths(shared):
    assert set(shared.search("aurora")) == paths(10, 11)
    assert shared.search("dawn") == [DOCS[0].path]
    assert set(shared.search("ambient")) == paths(10, 11)  # genre is searched too
    assert set(shared.search("northern")) == paths(10, 11)
    assert shared.count() == len(DOCS)


def test_words_are_a_conjunction(shared):
    assert set(shared.search("midnight")) == paths(11, 13)
    assert shared.search("midnight sun") == [DOCS[1].path]
    assert shared.search("midnight orchestra") == [DOCS[3].path]
    assert shared.search("polar orchestra") == []


def test_unicode_terms(shared):
    assert shared.search("Müller") == [DOCS[2].path]
    assert shared.search("dächern") == [DOCS[2].path]


def test_limit(shared):
    assert len(shared.search("aurora", limit=1)) == 1


@pytest.mark.parametrize("query", ["", "   ", "\t\n"])
def test_empty_query_gives_nothing(shared, query):
    assert shared.search(query) == []


@pytest.mark.parametrize(
    "query",
    ['"unclosed', "title:(", "AND OR NOT", "((", ")", "artist:", "nosuchfield:x", "*", "a^^2", "~", "\\",
     "[1 TO", "-", "+", "::", '"'],
)
def test_malformed_queries_do_not_raise(shared, query):
    result = shared.search(query)
    assert isinstance(result, list) and all(p in {d.path for d in DOCS} for p in result)


def test_field_query(shared):
    assert set(shared.search("genre:ambient")) == paths(10, 11)


def test_rebuild_replaces_everything(index):
    index.rebuild(DOCS[:1])
    assert index.count() == 1
    assert index.search("midnight") == []
    assert index.search("polar") == [DOCS[0].path]
    index.rebuild([])
    assert index.count() == 0 and index.search("polar") == []


def test_reopen_sees_committed_docs(index, tmp_path):
    again = SearchIndex(str(tmp_path / "index"), create=False)
    assert again.count() == len(DOCS)
    assert again.search("symphony allegro") == [DOCS[3].path]


def test_readers_see_a_rebuild_by_another_handle(index, tmp_path):
    reader = SearchIndex(str(tmp_path / "index"), create=False)
    assert reader.count() == len(DOCS)
    index.rebuild(DOCS[:2])
    assert reader.count() == 2
    assert reader.search("müller") == []


def test_missing_index_without_create_raises(tmp_path):
    with pytest.raises(SearchIndexError):
        SearchIndex(str(tmp_path / "absent"), create=False)
    assert not os.path.exists(tmp_path / "absent")


def test_folder_without_meta_json_is_not_an_index(tmp_path):
    # tantivy would silently create an empty index here: create=False must refuse instead
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "stray.file").write_bytes(b"x")
    with pytest.raises(SearchIndexError):
        SearchIndex(str(folder), create=False)


def test_path_that_is_a_file_raises(tmp_path):
    (tmp_path / "index").write_bytes(b"not a folder")
    with pytest.raises(SearchIndexError):
        SearchIndex(str(tmp_path / "index"))
