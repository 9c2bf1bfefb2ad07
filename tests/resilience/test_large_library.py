"""L2, row 5.5: a 100k-track library mounts from its catalog without rescanning first, and serves
listings and lookups (their speed is measured by bench/large_library.py, not asserted here)."""

from __future__ import annotations

import os

import pytest

from musicfs_test_utils.large import large_config, seed_library, synthetic_rows

pytestmark = pytest.mark.l2
TRACKS = 100_000


@pytest.mark.resilience("5.5")
def test_a_100k_track_library_mounts_at_once_from_its_catalog(daemons, tmp_path):
    source = tmp_path / "source"  # empty: every byte would have to come from the catalog
    daemon = daemons([source], name="big")
    seed_library(large_config(source, daemon.workdir), synthetic_rows(TRACKS))
    daemon.start()
    daemon.wait_for_mount(timeout=120)
    ready = daemon.notify.wait_for("READY", "1")
    assert ready.fields["STATUS"].startswith(f"{TRACKS} tracks")
    assert "scanning before mounting" not in daemon.log_text()
    artists = os.listdir(daemon.mountpoint)
    assert len(artists) == TRACKS // 100
    album = os.path.join(daemon.mountpoint, "Artist 00042", "Album 03")
    assert sorted(os.listdir(album))[4] == "05 - Track 4234.mp3"
    assert os.stat(os.path.join(album, "05 - Track 4234.mp3")).st_size == 4096
    daemon.wait_for_log("lists no files at all")  # the background rescan kept the library
    assert len(os.listdir(daemon.mountpoint)) == TRACKS // 100
    assert daemon.stop() == 0
