"""L2: a catalog published beside a library (`musicfs publish`), and a first mount elsewhere that is READY from it:
the real CLI, the real daemon on a real FUSE mount, real audio. The tree is the library's own, no tag is read before
READY, the revalidation re-reads only what changed, status says where the catalog came from, and
`--no-published-catalog` scans as before."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from musicfs_test_utils.assertions import tree_files
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import make_library, retagged_copy

pytestmark = pytest.mark.l2


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicfs", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    tracks = make_library(root, 10, hostile=False)
    return root, tracks


def test_a_first_mount_is_ready_from_the_published_catalog_and_revalidates_it(library, tmp_path, daemons):
    root, tracks = library
    published = cli("publish", str(root), "--state-dir", str(tmp_path / "publisher"))
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published 10 tracks") and ".musicfs/catalog/" in published.stdout
    reference = daemons([root], "reference", extra_args=["--no-published-catalog"]).start()
    reference.wait_for_mount()
    expected = sorted(str(p.relative_to(reference.mountpoint)) for p in tree_files(reference.mountpoint))
    reference.stop()
    assert "from the snapshot" not in reference.log_text()

    original = shutil.copy(root / tracks[0].path, tmp_path / os.path.basename(tracks[0].path))
    retagged_copy(original, root / tracks[0].path, artist=tracks[0].artist, album=tracks[0].album,
                  title=tracks[0].title, tracknumber="1")  # the same names, other bytes: changed since the publish
    daemon = daemons([root], "fresh").start()
    daemon.wait_for_mount()
    log = daemon.log_text()
    assert "catalog of 12 files from the snapshot published at" in log  # 10 tracks and the covers
    assert "first mount of" not in log  # no scan before READY
    assert sorted(str(p.relative_to(daemon.mountpoint)) for p in tree_files(daemon.mountpoint)) == expected
    eventually(lambda: (daemon.status().get("published") or {}).get("revalidated"), 60, "the revalidation")
    record = daemon.status()["published"]
    assert record["reread"] == 1 and record["files"] == 12 and len(record["snapshot"]) == 64
    shown = cli("status", "--state-dir", str(daemon.state_dir))
    assert "revalidated, 1 files re-read" in shown.stdout
    at_origin = {hashlib.sha256(p.read_bytes()).digest() for p in root.rglob("*")
                 if p.is_file() and ".musicfs" not in p.parts}
    for rel in expected:  # every file served is one of the origin's files, whole
        with open(os.path.join(daemon.mountpoint, rel), "rb") as mounted:
            assert hashlib.sha256(mounted.read()).digest() in at_origin, rel
    assert ".musicfs" not in os.listdir(daemon.mountpoint)


def test_without_the_published_catalog_a_first_mount_scans(library, tmp_path, daemons):
    root, _ = library
    assert cli("publish", str(root), "--state-dir", str(tmp_path / "publisher")).returncode == 0
    daemon = daemons([root], "optout", extra_args=["--no-published-catalog"]).start()
    daemon.wait_for_mount()
    assert "first mount of" in daemon.log_text() and "from the snapshot" not in daemon.log_text()
    assert daemon.status().get("published") is None


def test_publish_errors_are_one_line_with_the_documented_exit_code(tmp_path):
    bad = cli("publish", "s3:/one-slash")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("musicfs: SOURCE:")
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = cli("publish", str(empty), "--state-dir", str(tmp_path / "s"))
    assert nothing.returncode == 1
    assert nothing.stderr.strip().splitlines()[-1] == f"musicfs: {empty}: no audio files found: nothing to publish"
    assert not (empty / ".musicfs").exists()
    keep = cli("publish", str(empty), "--keep", "-5")
    assert keep.returncode == 2 and "--keep" in keep.stderr
