"""L2: the real daemon mounts a generated library of real audio; everything read is the origin's bytes."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest

from musicfs.commands.demo import JUNK_FILES
from musicfs_test_utils.assertions import (
    assert_mount_matches_origin,
    file_digest,
    tree_files,
)
from musicfs_test_utils.daemon import MusicfsDaemon, is_mounted
from musicfs_test_utils.fixtures import make_library

pytestmark = pytest.mark.l2
CHUNK = 1 << 20
BIG = "Big Artist/Big Album/01 - Long Track.flac"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("origin") / "library"
    tracks = make_library(root, 24, big_file_mb=52)
    return root, tracks


@pytest.fixture(scope="module")
def mount(library, tmp_path_factory):
    work = tmp_path_factory.mktemp("daemon")
    daemon = MusicfsDaemon([library[0]], work / "mnt", work)
    daemon.start()
    daemon.wait_for_mount()
    yield daemon
    assert daemon.stop() == 0
    assert not is_mounted(daemon.mountpoint)


def _origin_files(root):
    junk = {root / j for j in JUNK_FILES}
    return [p for p in tree_files(root) if p not in junk]


def test_tree_follows_naming_rules(mount, library):
    mnt = mount.mountpoint
    names = {str(p.relative_to(mnt)) for p in tree_files(mnt)}
    expected = {
        BIG,
        "Midnight Orchestra/The Complete Symphonies/1-01 - Symphony No. 1: Allegro.flac",
        "Midnight Orchestra/The Complete Symphonies/2-02 - Symphony No. 2: Finale.flac",
        "Various Artists/Summer Compilation 2024/02 - 夏の雨.ogg",
        "Various Artists/Summer Compilation 2024/folder.png",
        "Aurora Quartet/Northern Lights/cover.jpg",
        "Street Busker/Sessions/Untitled Jam.ogg",
        "Street Busker/Sessions/Untitled Jam (2).ogg",
        "Slash & Friends/Slashes/01 - AC_DC Tribute.ogg",
        "Unknown Artist/Unknown Album/no_tags_at_all.mp3",
        "_dotfile Collective/Hidden Things/01 - Invisible.flac",
    }
    assert expected <= names, sorted(expected - names)
    assert len([n for n in names if not n.endswith((".jpg", ".png"))]) == len(library[1])
    for name in names:
        for part in name.split("/"):
            assert len(part.encode()) <= 255 and not part.startswith(".")


def test_every_file_is_byte_identical(mount, library):
    pairs = assert_mount_matches_origin(mount.mountpoint, _origin_files(library[0]))
    assert len(pairs) == len(_origin_files(library[0]))


def test_ranges_of_the_big_file(mount, library):
    origin = library[0] / next(t.path for t in library[1] if t.title == "Long Track")
    size = os.path.getsize(origin)
    assert size >= 50 << 20
    rng = random.Random(7)
    spans = [(0, 1), (0, 4096), (CHUNK - 10, 20), (CHUNK - 1, CHUNK + 2), (3 * CHUNK - 5000, 2 * CHUNK + 10000),
             (size - 100, 100), (size - 10, 1000), (size, 10), (size + 5000, 10)]
    spans += [(rng.randrange(size), rng.randrange(1, 3 * CHUNK)) for _ in range(40)]
    with open(os.path.join(mount.mountpoint, BIG), "rb") as m, open(origin, "rb") as o:
        for off, n in spans:
            assert os.pread(m.fileno(), n, off) == os.pread(o.fileno(), n, off), (off, n)


def test_real_decoders_accept_files_read_through_the_mount(mount):
    files = tree_files(mount.mountpoint)
    flacs = [f for f in files if f.suffix == ".flac"]
    others = [f for f in files if f.suffix in (".mp3", ".ogg")]
    if shutil.which("flac"):
        for f in flacs:
            r = subprocess.run(["flac", "-t", "-s", str(f)], capture_output=True)
            assert r.returncode == 0, (f, r.stderr)
    if shutil.which("ffprobe"):
        for f in others:
            r = subprocess.run(["ffprobe", "-v", "error", "-show_format", str(f)], capture_output=True)
            assert r.returncode == 0, (f, r.stderr)
    if not (shutil.which("flac") or shutil.which("ffprobe")):
        pytest.skip("neither flac nor ffprobe installed")


def test_every_write_is_refused_with_erofs(mount):
    mnt = mount.mountpoint
    some = tree_files(mnt)[0]
    attempts = [
        lambda: open(some, "r+b"),
        lambda: open(os.path.join(mnt, "new.txt"), "wb"),
        lambda: os.mkdir(os.path.join(mnt, "d")),
        lambda: os.unlink(some),
        lambda: os.rename(some, str(some) + ".x"),
        lambda: os.chmod(some, 0o777),
        lambda: os.truncate(some, 0),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS


def test_search_prints_full_paths_inside_the_mount(mount):
    out = subprocess.run([sys.executable, "-m", "musicfs", "search", "symphony", "--state-dir", str(mount.state_dir)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 4
    for line in out:
        assert line.startswith(str(mount.mountpoint) + "/") and os.path.isfile(line), line


def test_restart_serves_cached_bytes_with_the_origin_gone(library, tmp_path):
    src = tmp_path / "library"
    shutil.copytree(library[0], src)
    daemon = MusicfsDaemon([src], tmp_path / "mnt", tmp_path / "work")
    with daemon:
        before = {str(p.relative_to(daemon.mountpoint)): file_digest(p) for p in tree_files(daemon.mountpoint)}
    assert daemon.proc.returncode == 0 and not is_mounted(daemon.mountpoint)
    shutil.rmtree(src)
    with daemon:
        after = {str(p.relative_to(daemon.mountpoint)): file_digest(p) for p in tree_files(daemon.mountpoint)}
    assert after == before
    assert "rescan skipped" in daemon.log_text()


def test_sigterm_unmounts_and_exits_zero(library, tmp_path):
    daemon = MusicfsDaemon([library[0]], tmp_path / "mnt", tmp_path / "work")
    daemon.start()
    daemon.wait_for_mount()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert not is_mounted(daemon.mountpoint)
    assert daemon.notify.find("STOPPING", "1")
    daemon.stop()
