"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest

from musicfs.commands.demo import JUNK_FILES
from musicfs_test_utils.assertions import tree_files
from musicfs_test_utils.daemon import MusicfsDaemon
from musicfs_test_utils.fixtures import make_library


@pytest.fixture(scope="session")
def small_library(tmp_path_factory):
    """A 12-track library of real audio shared read-only by tests: (root, tracks, good files)."""
    root = tmp_path_factory.mktemp("small") / "library"
    tracks = make_library(root, 12)
    junk = {root / j for j in JUNK_FILES}
    return root, tracks, [p for p in tree_files(root) if p not in junk]


@pytest.fixture
def daemons(tmp_path):
    """Make MusicfsDaemon children that are always stopped (and unmounted) at teardown."""
    made: list[MusicfsDaemon] = []

    def make(sources, name: str = "d", **kwargs) -> MusicfsDaemon:
        daemon = MusicfsDaemon([str(s) for s in sources], tmp_path / f"{name}-mnt", tmp_path / name, **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


@pytest.fixture
def library_copy(small_library, tmp_path):
    """A private copy of the small library a test may change: (root, good files)."""
    import shutil

    root = tmp_path / "library"
    shutil.copytree(small_library[0], root)
    return root, [root / p.relative_to(small_library[0]) for p in small_library[2]]


@pytest.fixture(scope="session", autouse=True)
def _files_written_long_ago():
    """In-process tests read files they have just written; racy versions (origins/base.py, settled) would keep
    those out of the cache for a moment. Their registries' wall clock runs an hour ahead, as if the library
    had been written an hour before the test: what they check is unchanged. Tests of racy versions themselves
    (marked `real_clock`) and the daemons of L2 tests (other processes) run on the real clock."""
    import time

    from musicfs.origins.registry import OriginRegistry

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OriginRegistry, "wall_clock", staticmethod(lambda: time.time() + 3600))
        yield


@pytest.fixture(autouse=True)
def _real_clock(request, monkeypatch):
    """`real_clock` tests judge racy versions by the real wall clock."""
    if request.node.get_closest_marker("real_clock") is not None:
        import time

        from musicfs.origins.registry import OriginRegistry

        monkeypatch.setattr(OriginRegistry, "wall_clock", staticmethod(time.time))


@pytest.fixture(autouse=True)
def _umask_restored():
    """`musicfs scan` and `fsck --repair` run in-process set umask 0o077 (private state): not for later tests."""
    import os

    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
