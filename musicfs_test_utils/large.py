"""A large library without large audio: a synthetic catalog (and optionally tiny origin files) for
the 100k-track start-up test (row 5.5) and its benchmark."""

from __future__ import annotations

import os
import time
from pathlib import Path

from musicfs.library.catalog import FileRow
from musicfs.library.scanner import TAGS_VERSION
from musicfs.library.storage import Library
from musicfs.origins.local import local_etag
from musicfs.shared.config import Config


def synthetic_rows(tracks: int, per_album: int = 10, albums_per_artist: int = 10, root: Path | None = None) -> list[FileRow]:
    """Rows for Artist NNNN/Album NN/NN Track.mp3; with `root`, tiny real files are written there
    and the rows carry their real identity (size, mtime, the local ETag), so a rescan finds every one unchanged."""
    rows = []
    for i in range(tracks):
        album, track = divmod(i, per_album)
        artist = album // albums_per_artist
        path = f"Artist {artist:05d}/Album {album % albums_per_artist:02d}/{track + 1:02d} Track.mp3"
        size, mtime, etag = 4096, 1_700_000_000_000_000_000, ""
        if root is not None:
            full = root / path
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_bytes(b"\0" * 128)
            st = full.stat()
            size, mtime, etag = st.st_size, st.st_mtime_ns, local_etag(st)
        rows.append(FileRow(path=path, kind="track", size=size, mtime_ns=mtime, etag=etag, artist=f"Artist {artist:05d}",
                            album=f"Album {album % albums_per_artist:02d}", title=f"Track {i}",
                            track_no=track + 1))
    return rows


def seed_library(cfg: Config, rows: list[FileRow]) -> float:
    """Write rows into the library's catalog, mark it scanned and build its tree and index. Seconds taken."""
    started = time.perf_counter()
    lib = Library.open(cfg)
    try:
        for i in range(0, len(rows), 5000):
            lib.catalog.upsert_files(rows[i : i + 5000])
        # As a completed scan of this version leaves it: an older tags_version would re-read every file's tags.
        lib.catalog.set_scan_state(completed_at=str(time.time()), origin=cfg.sources[0], tags_version=TAGS_VERSION)
        lib.reindex(lib.build_tree())
    finally:
        lib.close()
    return time.perf_counter() - started


def large_config(source: Path, workdir: Path) -> Config:
    os.makedirs(source, exist_ok=True)
    return Config(sources=(str(source),), state_dir=str(workdir / "state"), cache_dir=str(workdir / "cache")).resolved()
