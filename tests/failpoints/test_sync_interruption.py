"""Row 2.5 (L1): a scan interrupted between batches resumes from its checkpoint; no track lost, none duplicated.

Run with `pytest --failpoints -p no:xdist`. The library is real audio (make_library), scanned by a
Scanner with small batches so a scan has several committed batches before the point fires.
The L2 half (a real daemon killed mid-scan) is in tests/resilience/test_crash_points.py.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from musicfs import failpoints
from musicfs.failpoints import FailPointPanic
from musicfs.library import tags
from musicfs.library.catalog import Catalog
from musicfs.library.scanner import Scanner
from musicfs.origins.local import LocalOrigin
from musicfs.origins.registry import OriginRegistry
from musicfs.shared import points
from musicfs_test_utils.faulty_origin import FaultyOrigin
from musicfs_test_utils.fixtures import make_library

AFTER_BATCH = points.DELTA_SYNC_AFTER_BATCH
CHECKPOINT = points.SCAN_CHECKPOINT
BATCH = 8
TRACKS = 40


def recording(root: Path) -> FaultyOrigin:
    """A healthy FaultyOrigin over the library's folder: it records the paths read (a scan's tag reads)."""
    return FaultyOrigin(LocalOrigin(root))


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sync-origin") / "library"
    make_library(root, TRACKS)
    return root


def listing(root: Path) -> list[str]:
    """What the scanner will consider, in its (sorted) order."""
    return sorted(st.path for st in LocalOrigin(root).walk() if tags.classify(st.path))


def scanner(catalog: Catalog, origin: FaultyOrigin) -> Scanner:
    return Scanner(catalog, OriginRegistry([origin], backoff=0.0), batch=BATCH, workers=4)


def rows_by_path(catalog: Catalog) -> dict[str, tuple]:
    """path -> every column but the row id; fails on a duplicated path."""
    rows = catalog.files()
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths)), "a file is in the catalog twice"
    return {r.path: tuple(v for k, v in r.__dict__.items() if k != "id") for r in rows}


def clean_scan(root: Path, where: Path) -> dict[str, tuple]:
    catalog = Catalog(str(where))
    try:
        scanner(catalog, recording(root)).scan()
        return rows_by_path(catalog)
    finally:
        catalog.close()


@pytest.fixture(scope="module")
def reference(library, tmp_path_factory) -> dict[str, tuple]:
    return clean_scan(library, tmp_path_factory.mktemp("reference") / "catalog.db")


def tag_read(path: str) -> bool:
    """Covers are catalogued from their stat alone; every 'track' (junk included) has its tags read."""
    return tags.classify(path) == "track"


@pytest.mark.resilience("2.5")
@pytest.mark.parametrize("actions, committed_batches", [("panic", 1), ("2*off->panic", 3), ("4*off->panic", 5)])
def test_scan_interrupted_after_a_batch_resumes_from_its_checkpoint(library, reference, tmp_path, actions,
                                                                    committed_batches):
    todo = listing(library)
    assert len(todo) > committed_batches * BATCH, "the library must outlast the interruption"
    committed = todo[: committed_batches * BATCH]
    origin = recording(library)
    catalog = Catalog(str(tmp_path / "catalog.db"))
    try:
        # 1. the scan is interrupted right after batch `committed_batches` committed
        failpoints.cfg(AFTER_BATCH, actions)
        with pytest.raises(FailPointPanic):
            scanner(catalog, origin).scan()
        failpoints.remove(AFTER_BATCH)
        assert sorted(rows_by_path(catalog)) == committed  # exactly the committed batches, nothing half
        state = catalog.scan_state()
        assert state["last_path"] == committed[-1]
        assert state["in_progress"] == "1" and "completed_at" not in state
        # It stopped where it says: every committed file was read, and beyond them at most the next batch,
        # whose tag reads start while a batch commits (scans overlap round trips); none of it was kept.
        next_batch = todo[len(committed):len(committed) + BATCH]
        assert {p for p in committed if tag_read(p)} <= origin.paths_of("read")
        assert origin.paths_of("read") <= {p for p in committed + next_batch if tag_read(p)}

        # 2. the next scan resumes: only files not committed before are read again
        origin.reset()
        result = scanner(catalog, origin).scan()
        remaining = todo[len(committed):]
        assert origin.paths_of("read") == {p for p in remaining if tag_read(p)}
        assert not origin.paths_of("read") & set(committed)
        assert result.unchanged == len(committed)
        assert result.added + result.skipped == len(remaining)
        assert result.changed == 0 and result.removed == 0

        # 3. ... and ends exactly where a clean scan ends: same files, same tags, none twice, none lost
        assert rows_by_path(catalog) == reference
        state = catalog.scan_state()
        assert state["in_progress"] == "0" and state["last_path"] == "" and "completed_at" in state
    finally:
        catalog.close()


def test_committed_batches_are_visible_while_the_scan_is_held(library, reference, tmp_path):
    """Paused right after batch 2: another connection sees exactly two batches and the checkpoint."""
    todo = listing(library)
    origin = recording(library)
    path = tmp_path / "catalog.db"
    catalog = Catalog(str(path))
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = scanner(catalog, origin).scan()
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome["error"] = exc

    failpoints.cfg(AFTER_BATCH, "1*off->pause")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert failpoints.wait_paused(AFTER_BATCH, 1, timeout=30), "the scan never reached batch 2"
        observer = Catalog(str(path))
        try:
            assert sorted(r.path for r in observer.files()) == todo[: 2 * BATCH]
            assert observer.scan_state()["last_path"] == todo[2 * BATCH - 1]
        finally:
            observer.close()
        assert thread.is_alive() and not outcome
    finally:
        failpoints.remove(AFTER_BATCH)
        thread.join(timeout=60)
    try:
        assert not thread.is_alive() and "error" not in outcome, outcome
        assert outcome["result"].added + outcome["result"].skipped == len(todo)
        assert rows_by_path(catalog) == reference
    finally:
        catalog.close()


def test_scan_interrupted_before_its_final_checkpoint(library, tmp_path):
    """Everything committed, files deleted, checkpoint not written: the rescan reads nothing and finishes it."""
    root = tmp_path / "library"
    shutil.copytree(library, root)
    origin = recording(root)
    catalog = Catalog(str(tmp_path / "catalog.db"))
    try:
        scanner(catalog, origin).scan()
        first_completed = catalog.scan_state()["completed_at"]
        tracks = [p for p in listing(root) if tag_read(p)]
        gone, touched = tracks[0], tracks[5]
        os.unlink(root / gone)
        st = os.stat(root / touched)
        os.utime(root / touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new identity

        origin.reset()
        failpoints.cfg(CHECKPOINT, "panic")
        with pytest.raises(FailPointPanic):
            scanner(catalog, origin).scan()
        failpoints.remove(CHECKPOINT)
        assert origin.paths_of("read") == {touched}
        files = {r.path: r for r in catalog.files()}
        assert gone not in files  # deletions landed before the checkpoint
        assert files[touched].mtime_ns == st.st_mtime_ns + 10**9
        state = catalog.scan_state()
        assert state["in_progress"] == "1" and state["completed_at"] == first_completed

        origin.reset()
        result = scanner(catalog, origin).scan()
        assert origin.paths_of("read") == set()  # nothing left to re-read
        assert not result.touched and result.unchanged == len(listing(root))
        state = catalog.scan_state()
        assert state["in_progress"] == "0" and float(state["completed_at"]) > float(first_completed)
        assert rows_by_path(catalog) == clean_scan(root, tmp_path / "clean.db")
    finally:
        catalog.close()


def test_first_scan_interrupted_before_its_checkpoint_is_not_complete(library, tmp_path):
    origin = recording(library)
    catalog = Catalog(str(tmp_path / "catalog.db"))
    try:
        failpoints.cfg(CHECKPOINT, "panic")
        with pytest.raises(FailPointPanic):
            scanner(catalog, origin).scan()
        failpoints.remove(CHECKPOINT)
        assert "completed_at" not in catalog.scan_state()  # a daemon would scan again before mounting
        assert sorted(rows_by_path(catalog)) == listing(library)
        origin.reset()
        result = scanner(catalog, origin).scan()
        assert origin.paths_of("read") == set() and result.unchanged == len(listing(library))
        assert "completed_at" in catalog.scan_state()
    finally:
        catalog.close()
