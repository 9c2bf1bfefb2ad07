"""Shared test fixtures: real audio libraries, catalog rows, a CAS and a tree in one call."""

from __future__ import annotations

import os
from pathlib import Path

from musicfs.cache.cas import CasStore
from musicfs.commands.demo import JUNK_FILES, GeneratedTrack
from musicfs.commands.demo import make_library as _make_library
from musicfs.library.catalog import Catalog, FileRow
from musicfs.library.tree import FIRST_INO, VirtualTree, build_tree

__all__ = ["make_library", "open_catalog", "make_file_meta", "make_audio_meta", "setup_test_cas", "setup_test_tree",
           "JUNK_FILES", "GeneratedTrack", "counting_assigner", "flac_audio_start", "retagged_copy",
           "make_names_library", "HIDDEN_FILES"]


def make_library(root: str | os.PathLike, tracks: int = 24, **kwargs) -> list[GeneratedTrack]:
    """A library of real FLAC/MP3/Ogg files with varied (and hostile) tags; see musicfs.commands.demo."""
    return _make_library(root, tracks, **kwargs)


def wait_settled(root: str | os.PathLike, timeout: float = 10.0) -> None:
    """Until no file under `root` is racy any more (origins/base.py: its ctime is older than its resolution and
    the margin), as a library written long before it is mounted is: a scan then keeps what it reads."""
    import time

    from musicfs.origins.local import LocalOrigin

    from .daemon import eventually

    origin = LocalOrigin(root)
    eventually(lambda: all(origin.changed_before(st.identity, time.time()) for st in origin.walk()), timeout,
               f"the files under {root} settled")


def retagged_copy(src: str | os.PathLike, dest: str | os.PathLike, **tags: str) -> Path:
    """Copy a real audio file (FLAC, Ogg Vorbis or MP3) to `dest` with exactly `tags` (mutagen easy keys:
    artist, albumartist, album, title, tracknumber, compilation, ...), text written as given."""
    import shutil

    import mutagen

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    audio = mutagen.File(dest, easy=True)
    if audio.tags is None:
        audio.add_tags()
    audio.tags.clear()
    for key, value in tags.items():
        audio[key] = value
    audio.save()
    return dest


def _nfd(text: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFD", text)


# origin files a scan must skip: hidden folders and files (include_hidden = false) and AppleDouble files
HIDDEN_FILES = (".hidden/secret.flac", "visible/.dotfile.flac", "visible/._01 formation.flac")


def make_names_library(root: str | os.PathLike, audio: str | os.PathLike) -> dict[str, Path]:
    """Tracks tagged as real collections are (issue 14): NFD and NFC spellings of one artist, control
    characters, a compilation without an album artist, CJK, and hidden files. `audio` is a library from
    make_library whose files are copied. Returns tree path (NFC) -> origin file of every track to be shown."""
    root, audio = Path(root), Path(audio)
    flac = audio / "Aurora Quartet/Northern Lights/01 Polar Dawn.flac"
    ogg = audio / "Aurora Quartet/Northern Lights/03 Aurora.ogg"
    mp3 = audio / "Aurora Quartet/Northern Lights/02 Midnight Sun.mp3"
    shown = {
        "Beyoncé/Lemonade/01 - Formation.flac": retagged_copy(
            flac, root / "nfd/beyonce.flac", artist=_nfd("Beyoncé"), album="Lemonade", title="Formation",
            tracknumber="1"),
        "Beyoncé/Lemonade/02 - Sorry.ogg": retagged_copy(
            ogg, root / "nfc/beyonce.ogg", artist="Beyoncé", album="Lemonade", title="Sorry", tracknumber="2"),
        "Control Bell/Tabs and Lines/01 - Line one Line two tab.flac": retagged_copy(
            flac, root / "ctl/ctl.flac", artist="Control\x07Bell", album="Tabs\t\tand\r\nLines",
            title="  Line one\nLine two\ttab\x7f", tracknumber="1"),
        "Éric Serra/Le Grand Bleu/03 - Café.mp3": retagged_copy(
            mp3, root / "nfd/eric.mp3", artist=_nfd("Éric Serra"), album="Le Grand Bleu", title=_nfd("Café"),
            tracknumber="3"),
        "Various Artists/Hits/01 - One.flac": retagged_copy(
            flac, root / "comp/a.flac", artist="Artist A", album="Hits", title="One", tracknumber="1",
            compilation="1"),
        "Various Artists/Hits/02 - Two.mp3": retagged_copy(
            mp3, root / "comp/b.mp3", artist="Artist B", album="Hits", title="Two", tracknumber="2",
            compilation="1"),
        "Sigur Rós/Takk/01 - Glósóli.ogg": retagged_copy(
            ogg, root / "sigur/glosoli.ogg", artist="Sigur Rós", album="Takk", title="Glósóli", tracknumber="1"),
        "坂本 美雨/夏/夏の雨.ogg": retagged_copy(ogg, root / "cjk/rain.ogg", artist="坂本 美雨", album="夏",
                                          title="夏の雨"),
    }
    for i, path in enumerate(HIDDEN_FILES):
        retagged_copy(flac, root / path, artist="Secret", album="Hidden", title=f"Hidden {i}")
    return shown


def open_catalog(state_dir: str) -> Catalog:
    """A catalog in state_dir/catalog.db, the folder made when missing."""
    os.makedirs(state_dir, exist_ok=True)
    return Catalog(os.path.join(state_dir, "catalog.db"))


def make_file_meta(id: int, path: str, size: int, *, kind: str = "track", mtime_ns: int = 1_700_000_000_000_000_000,
                   etag: str = "", **tags) -> FileRow:
    """A catalog row without touching any file."""
    return FileRow(path=path, kind=kind, size=size, mtime_ns=mtime_ns, etag=etag, id=id, **tags)


def make_audio_meta(artist: str | None, album: str | None, title: str | None, *, track_no: int | None = None,
                    disc_no: int | None = None, albumartist: str | None = None) -> dict:
    """Tag keyword arguments for make_file_meta."""
    return {"artist": artist, "album": album, "title": title, "track_no": track_no, "disc_no": disc_no,
            "albumartist": albumartist}


def setup_test_cas(directory: str | os.PathLike, quota: int = 1 << 30, **kwargs) -> CasStore:
    return CasStore(str(Path(directory)), quota, **kwargs)


def counting_assigner(start: int = FIRST_INO):
    """An inode allocator for build_tree that keeps its own map (no catalog needed)."""
    known: dict[str, int] = {}

    def assign(keys: list[str]) -> dict[str, int]:
        out = {}
        for key in keys:
            known[key] = out[key] = start + len(known)
        return out

    assign.known = known
    return assign


def setup_test_tree(files: list[FileRow], inodes: dict[str, int] | None = None) -> VirtualTree:
    assign = counting_assigner(max(inodes.values(), default=FIRST_INO - 1) + 1 if inodes else FIRST_INO)
    return build_tree(files, inodes or {}, assign)


def flac_audio_start(data: bytes) -> int:
    """Offset of a FLAC file's first audio frame: after its last metadata block (tags live before it)."""
    assert data[:4] == b"fLaC", "not a FLAC file"
    offset = 4
    while True:
        header, length = data[offset], int.from_bytes(data[offset + 1:offset + 4], "big")
        offset += 4 + length
        if header & 0x80:
            return offset
