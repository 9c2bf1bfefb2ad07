"""tags: RangeFile (a lazy, seekable view over ranged reads) and parse() on real generated audio."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import mutagen.flac
import pytest

from musicfs.commands.demo import BIG_FILE_PATH, FULL_COVERAGE_TRACKS, JUNK_FILES
from musicfs.library import tags
from musicfs.library.scanner import MIN_BYTES_PER_SECOND
from musicfs.library.tags import BLOCK, RangeFile, Tags
from musicfs_test_utils.fixtures import make_library


class Source:
    """fetch(offset, length) over bytes, recording every call."""

    def __init__(self, data: bytes):
        self.data = data
        self.calls: list[tuple[int, int]] = []

    def fetch(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]

    def file(self) -> RangeFile:
        return RangeFile(self.fetch, len(self.data), name="x")


def pattern(n: int) -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    root = tmp_path_factory.mktemp("tags") / "lib"
    tracks = make_library(root, FULL_COVERAGE_TRACKS, big_file_mb=1)
    return root, tracks


def _parse_path(path: Path) -> tuple[Tags | None, RangeFile]:
    src = Source(path.read_bytes())
    rf = src.file()
    return tags.parse(rf), rf


# -- RangeFile -------------------------------------------------------------------
def test_rangefile_seek_tell_read():
    data = pattern(3 * BLOCK + 123)
    rf = Source(data).file()
    assert rf.readable() and rf.seekable() and rf.tell() == 0
    assert rf.read(10) == data[:10] and rf.tell() == 10
    assert rf.seek(BLOCK - 3) == BLOCK - 3
    assert rf.read(6) == data[BLOCK - 3 : BLOCK + 3]  # across a block boundary
    assert rf.seek(5, io.SEEK_CUR) == BLOCK + 8
    assert rf.read(2) == data[BLOCK + 8 : BLOCK + 10]
    assert rf.seek(-20, io.SEEK_END) == len(data) - 20
    assert rf.read(100) == data[-20:]  # short only at EOF
    assert rf.tell() == len(data)
    assert rf.read(10) == b""
    assert rf.seek(-10**9, io.SEEK_CUR) == 0  # clamped at the start
    assert rf.read() == data
    assert rf.seek(10, io.SEEK_END) == len(data) + 10
    assert rf.read(5) == b""  # past EOF


def test_rangefile_fetches_whole_blocks_lazily_and_once():
    data = pattern(10 * BLOCK)
    src = Source(data)
    rf = src.file()
    assert src.calls == []  # nothing fetched before the first read
    rf.seek(7 * BLOCK + 100)
    assert rf.read(50) == data[7 * BLOCK + 100 : 7 * BLOCK + 150]
    assert src.calls == [(7 * BLOCK, BLOCK)]
    rf.seek(7 * BLOCK)
    rf.read(BLOCK)
    assert rf.fetches == 1 == len(src.calls)  # cached
    rf.seek(2 * BLOCK - 1)
    rf.read(2)  # block 1, then block 2 right after it: read sequentially, so blocks 2 and 3 come in one request
    assert sorted(src.calls) == [(BLOCK, BLOCK), (2 * BLOCK, 2 * BLOCK), (7 * BLOCK, BLOCK)]
    assert rf.fetches == 3
    rf.seek(3 * BLOCK)
    assert rf.read(10) == data[3 * BLOCK : 3 * BLOCK + 10] and rf.fetches == 3  # already here


def test_rangefile_coalesces_sequential_blocks_and_never_reads_past_eof():
    data = pattern(5 * BLOCK + 123)
    src = Source(data)
    rf = src.file()
    assert rf.read() == data
    assert src.calls == [(0, BLOCK), (BLOCK, 2 * BLOCK), (3 * BLOCK, 2 * BLOCK), (5 * BLOCK, BLOCK)]
    rf.seek(0)
    assert rf.read() == data and rf.fetches == 4  # every block kept once


def test_rangefile_short_fetch_is_not_padded():
    data = pattern(2 * BLOCK)
    rf = RangeFile(lambda off, n: data[off : off + 100], len(data))
    assert rf.read(BLOCK + 10) == data[:100]


def test_rangefile_works_with_buffered_reader():
    data = pattern(BLOCK + 77)
    buffered = io.BufferedReader(Source(data).file(), buffer_size=4096)
    buffered.seek(BLOCK)
    assert buffered.read() == data[BLOCK:]


# -- parse() on real audio --------------------------------------------------------
def _expected(track) -> dict:
    return {
        "artist": track.artist or None,
        "albumartist": track.albumartist or None,
        "album": track.album or None,
        "title": track.title if track.tagged else None,
        "track_no": track.tracknumber,
        "disc_no": track.discnumber,
    }


def test_parse_returns_the_tags_the_generator_wrote(lib):
    root, tracks = lib
    assert {t.format for t in tracks} == {"flac", "mp3", "ogg"}
    assert any(not t.tagged for t in tracks)
    for track in tracks:
        found, rf = _parse_path(root / track.path)
        assert found is not None, track.path
        got = {k: getattr(found, k) for k in _expected(track)}
        assert got == _expected(track), track.path
        assert found.duration and 0 < found.duration < 60
        assert rf.fetches <= 6, f"{track.path}: {rf.fetches} blocks fetched"


def test_parse_reads_year_and_genre(lib):
    root, tracks = lib
    track = next(t for t in tracks if t.path.startswith("Aurora Quartet/"))
    found, _ = _parse_path(root / track.path)
    assert (found.year, found.genre) == ("2019", "Ambient")


def test_big_embedded_picture_needs_few_blocks(lib, tmp_path):
    root, tracks = lib
    # The generator's ~300 KB picture, embedded at the head of a 1 MB FLAC: mutagen must not
    # read the audio frames behind it.
    with_picture = next(t for t in tracks if t.format == "flac" and t.size > 300_000 and t.path != BIG_FILE_PATH)
    picture = mutagen.flac.FLAC(root / with_picture.path).pictures[0]
    assert len(picture.data) > 250_000
    big = tmp_path / "big.flac"
    shutil.copy(root / BIG_FILE_PATH, big)
    f = mutagen.flac.FLAC(big)
    f.add_picture(picture)
    f.save()
    size = big.stat().st_size
    total_blocks = -(-size // BLOCK)

    found, rf = _parse_path(big)
    assert found is not None and found.title == "Long Track" and found.artist == "Big Artist"
    picture_blocks = -(-len(picture.data) // BLOCK)
    assert 2 <= rf.fetches <= picture_blocks + 2, rf.fetches
    assert rf.fetches * 3 < total_blocks, f"{rf.fetches} of {total_blocks} blocks fetched"

    # the picture file itself: its blocks are mostly picture, but never more than the file
    found, rf = _parse_path(root / with_picture.path)
    assert found.title == with_picture.title
    assert 2 <= rf.fetches <= 6


def test_big_file_without_picture_needs_one_or_two_blocks(lib):
    root, _ = lib
    found, rf = _parse_path(root / BIG_FILE_PATH)
    assert found is not None and found.track_no == 1
    assert rf.fetches <= 2 < (root / BIG_FILE_PATH).stat().st_size // BLOCK


def _parse_or_none(data: bytes) -> Tags | None:
    try:
        return tags.parse(RangeFile(lambda o, n: data[o : o + n], len(data)))
    except Exception:  # mutagen raises many types on junk
        return None


@pytest.mark.parametrize(
    "data",
    [b"", b"\0" * 10, b"This is not an MP3 file.\n" * 400, bytes(range(256)) * 64, b"fLaC" + b"\xff" * 50,
     b"OggS" + b"\0" * 100, b"ID3\x04\x00\x00\x00\x00\x00\x10" + b"x" * 30],
)
def test_parse_junk_gives_nothing(data):
    assert _parse_or_none(data) is None


def test_parse_generated_junk(lib):
    root, _ = lib
    assert _parse_or_none((root / JUNK_FILES[0]).read_bytes()) is None
    # The truncated FLAC keeps a valid header, so mutagen may report a duration: it must then
    # be far too short for that duration (what the scanner uses to call it junk).
    data = (root / JUNK_FILES[1]).read_bytes()
    found = _parse_or_none(data)
    assert found is None or (found.duration and len(data) < found.duration * MIN_BYTES_PER_SECOND)


@pytest.mark.parametrize(
    "text, number", [("3", 3), ("03/12", 3), ("3 of 12", 3), ("", None), ("x", None), ("1e3", None),
                     ("-1", None), ("99999999", None), (None, None), ("  7  ", 7),
                     # digits int() refuses, and shapes that once raised: never an exception
                     ("\u00b2", None), ("\u00b9\u00b2", None), ("1/12", 1), ("A1", None), ("/12", None),
                     (" / ", None), ("\u2463", None), ("\u0663", 3), ("\uff17", 7), ("\u200b", None)]
)
def test_number(text, number):
    assert tags._number(text) == number


@pytest.mark.parametrize(
    "path, kind",
    [("a/b/01 x.FLAC", "track"), ("x.mp3", "track"), ("a/cover.jpg", "cover"), ("a/Folder.PNG", "cover"),
     ("a/front.jpeg", "cover"), ("a/back.jpg", None), ("notes.txt", None), ("a/cover.gif", None),
     ("noext", None), (os.path.join("a", ".mp3"), None)],
)
def test_classify(path, kind):
    assert tags.classify(path) == kind


@pytest.mark.parametrize("number", ["\u00b2", "A1", "1/12", "\u0663", "\u2463", "/3"])
def test_a_bad_number_drops_the_number_not_the_track(lib, tmp_path, number):
    """A valid FLAC whose TRACKNUMBER/DISCNUMBER are not numbers still parses, with the number left out."""
    root, tracks = lib
    source = next(t for t in tracks if t.format == "flac" and t.tagged)
    path = tmp_path / "odd.flac"
    shutil.copy(root / source.path, path)
    audio = mutagen.flac.FLAC(path)
    audio["tracknumber"] = number
    audio["discnumber"] = number
    audio.save()

    found, _ = _parse_path(path)
    assert found is not None
    assert (found.title, found.album) == (source.title, source.album)
    expect = tags._number(number)
    assert (found.track_no, found.disc_no) == (expect, expect)
    assert found.duration and found.duration > 0


def test_tag_text_is_always_storable():
    """Lone surrogates cannot go into SQLite TEXT (the whole batch would fail): they become U+FFFD."""
    class Broken(dict):
        def __getitem__(self, key):
            raise RuntimeError("mutagen could not decode this frame")

    assert tags._first({"title": ["caf\udce9"]}, "title") == "caf\ufffd"
    assert tags._first({"title": ["  "], "name": ["x"]}, "title", "name") == "x"
    assert tags._first(Broken(), "title") is None
    assert tags._duration(type("Info", (), {"length": float("nan")})()) is None
    assert tags._duration(type("Info", (), {"length": float("inf")})()) is None
    assert tags._duration(type("Info", (), {"length": 12.5})()) == 12.5


def _parse_file(path: Path) -> Tags | None:
    data = path.read_bytes()
    return tags.parse(RangeFile(Source(data).fetch, len(data), name=path.name))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg writes the M4A")
def test_an_itunes_compilation_m4a_is_filed_under_various_artists(tmp_path):
    """iTunes marks a compilation with the `cpil` atom and leaves the album artist empty: one album folder."""
    import subprocess

    import mutagen.mp4

    made = []
    for n, artist in enumerate(("Singer One", "Singer Two"), 1):
        path = tmp_path / f"{n}.m4a"
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac",
                        str(path)], check=True, timeout=60)
        m4a = mutagen.mp4.MP4(path)
        m4a.tags = m4a.tags or mutagen.mp4.MP4Tags()
        m4a.tags.update({"\xa9ART": [artist], "\xa9alb": ["Hits of the Year"], "\xa9nam": [f"Song {n}"],
                         "trkn": [(n, 2)], "cpil": True})
        m4a.save()
        made.append(_parse_file(path))
    assert all(t.compilation and t.albumartist is None for t in made)
    filed = [tags.catalog_fields(t) for t in made]
    assert {f["albumartist"] for f in filed} == {tags.VARIOUS_ARTISTS}
    assert [f["artist"] for f in filed] == ["Singer One", "Singer Two"] and filed[1]["track_no"] == 2
    plain = tmp_path / "1.m4a"  # the same file without the flag is its artist's own
    m4a = mutagen.mp4.MP4(plain)
    del m4a.tags["cpil"]
    m4a.save()
    assert not _parse_file(plain).compilation


def test_a_wav_with_an_id3_chunk_is_read_by_its_frames(tmp_path):
    import wave

    from mutagen.id3 import TALB, TCMP, TDRC, TIT2, TPE1, TPE2, TRCK
    from mutagen.wave import WAVE

    path = tmp_path / "take.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 8000)
    audio = WAVE(path)
    audio.add_tags()
    for frame in (TPE1(encoding=3, text=["Field Recorder"]), TPE2(encoding=3, text=["The Band"]),
                  TALB(encoding=3, text=["Rehearsals"]), TIT2(encoding=3, text=["Take 3"]),
                  TRCK(encoding=3, text=["3/9"]), TDRC(encoding=3, text=["2021"]), TCMP(encoding=3, text=["0"])):
        audio.tags.add(frame)
    audio.save()
    found = _parse_file(path)
    assert (found.artist, found.albumartist, found.album, found.title, found.track_no, found.year) == (
        "Field Recorder", "The Band", "Rehearsals", "Take 3", 3, "2021")
    assert not found.compilation and found.duration == pytest.approx(1.0, abs=0.01)
