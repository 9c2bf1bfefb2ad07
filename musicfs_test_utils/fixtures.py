"""Shared test fixtures: real audio libraries, catalog rows, a CAS and a tree in one call."""

from __future__ import annotations

import os
from pathlib import Path

from musicfs.cas import CasStore
from musicfs.catalog import Catalog, FileRow
from musicfs.demo import JUNK_FILES, GeneratedTrack
from musicfs.demo import make_library as _make_library
from musicfs.tree import FIRST_INO, VirtualTree, build_tree

__all__ = ["make_library", "open_catalog", "make_file_meta", "make_audio_meta", "setup_test_cas", "setup_test_tree",
           "JUNK_FILES", "GeneratedTrack", "counting_assigner"]


def make_library(root: str | os.PathLike, tracks: int = 24, **kwargs) -> list[GeneratedTrack]:
    """A library of real FLAC/MP3/Ogg files with varied (and hostile) tags; see musicfs.demo."""
    return _make_library(root, tracks, **kwargs)


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
