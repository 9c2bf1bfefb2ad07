"""X.2 crash-point exploration: SIGKILL the real daemon at every write-path failpoint, restart it,
and demand the right bytes through the mount and a clean `musicfs fsck`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.commands.demo import JUNK_FILES
from musicfs.failpoints import declared
from musicfs.shared import points
from musicfs_test_utils.assertions import assert_mount_matches_origin, tree_files
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.fixtures import wait_settled

pytestmark = pytest.mark.l2

# Every write-path point with the action that reaches it.
WRITE_POINTS = {
    points.CAS_PUT_BEFORE_WRITE: "read",
    points.CAS_PUT_AFTER_WRITE_BEFORE_INDEX: "read",
    points.CAS_INDEX_WRITE: "read",
    points.MANIFEST_WRITE: "read",
    points.CAS_QUARANTINE: "corrupt",
    points.CAS_EVICT: "evict",
    points.DELTA_SYNC_AFTER_BATCH: "first-scan",
    points.SCAN_CHECKPOINT: "first-scan",
    points.INDEX_COMMIT: "first-scan",
    points.TREE_SWAP: "rescan",
}
# The first scan keeps the ranges it read for tags as blocks in the CAS (blocks.py): a crash at the CAS's
# write points is explored there too (the "read" and "evict" cases warm up first, so they crash under reads).
# Not eviction: the scan keeps blocks only with chunks larger than a block (1M by default), and a cache of the
# smallest size that allows (4 chunks) holds every block the scan of this library keeps; the eviction code a
# scan would reach is the one the "evict" case crashes in.
SCAN_CAS_POINTS = (points.CAS_PUT_BEFORE_WRITE, points.CAS_PUT_AFTER_WRITE_BEFORE_INDEX, points.CAS_INDEX_WRITE)
CASES = [pytest.param(p, a, id=p) for p, a in sorted(WRITE_POINTS.items())] + \
    [pytest.param(p, "first-scan", id=f"{p}@scan") for p in SCAN_CAS_POINTS]
# Points that write nothing: crashing there cannot leave a half-written state behind.
READ_ONLY_POINTS = {points.CAS_GET, points.CAS_PROBE, points.DB_OPEN_CORRUPT, points.FUSE_HANDLER, points.FUSE_READ,
                    points.HEALTH_CHECK_HANG, points.READER_MANIFEST_FETCH, points.WATCHDOG_LOOP_CHECK,
                    points.ORIGIN_READ_CHECKED, points.PIN_FETCH}
SMALL_CACHE = {"chunk_size": "64K", "cache_size": "300K"}  # smaller than the library: reads evict


def test_every_declared_point_is_explored_or_known_read_only():
    # tests/unit/test_failpoints.py declares `test-*` points of its own in the same process
    assert {n for n in declared() if not n.startswith("test-")} == set(WRITE_POINTS) | READ_ONLY_POINTS


def _good_files(root: Path) -> list[Path]:
    junk = {root / j for j in JUNK_FILES}
    return [p for p in tree_files(root) if p not in junk]


def _read_everything(mountpoint: str) -> None:
    """cat every file in a child process: the mount may die under it (ENOTCONN), never hang."""
    files = [str(p) for p in tree_files(mountpoint)]
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


def _corrupt_one_chunk(cache_dir: Path) -> None:
    chunk = next(p for p in sorted((cache_dir / "chunks").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


def _prepare(action: str, make, root: Path):
    """Run the daemon cleanly first where the point needs existing state."""
    if action in ("read", "evict"):  # the first scan stores blocks: scan first, so reads reach the point
        warm = make()
        warm.start()
        warm.wait_for_mount()
        assert warm.stop() == 0
    if action in ("corrupt", "rescan"):
        warm = make()
        warm.start()
        warm.wait_for_mount()
        _read_everything(warm.mountpoint)
        assert warm.stop() == 0
        if action == "corrupt":
            _corrupt_one_chunk(warm.cache_dir)


def _trigger(action: str, daemon, root: Path) -> None:
    if action == "first-scan":
        return  # the first mount's scan and index build reach the point by themselves
    daemon.wait_for_mount()
    if action == "rescan":
        donor = next(p for p in _good_files(root) if p.suffix == ".ogg")
        shutil.copy(donor, root / "added copy.ogg")
        daemon.signal(signal.SIGHUP)
    else:
        _read_everything(daemon.mountpoint)


@pytest.mark.resilience("X.2")
@pytest.mark.parametrize("point, action", CASES)
def test_crash_at_write_point_then_restart_serves_right_bytes_and_fsck_is_clean(point, action, small_library, daemons,
                                                                                  tmp_path):
    root = tmp_path / "library"
    shutil.copytree(small_library[0], root)
    if action == "first-scan":
        wait_settled(root)  # as an old library: the scan keeps the blocks it read (racy files' it never would)
    args = []
    if point == points.CAS_EVICT:
        args = ["--config", str(write_config(tmp_path / "small.toml", **SMALL_CACHE))]
    make = lambda **kw: daemons([root], name="d", extra_args=args, **kw)  # noqa: E731 - one state, many runs
    _prepare(action, make, root)

    crashing = make(env={"FAILPOINTS": f"{point}=crash"})
    crashing.start()
    _trigger(action, crashing, root)
    assert crashing.wait(60) == -signal.SIGKILL, crashing.log_text()

    restarted = make()
    restarted.start()
    restarted.wait_for_mount()
    if action == "rescan":
        restarted.signal(signal.SIGHUP)
        restarted.wait_for_log("1 added")
    assert_mount_matches_origin(restarted.mountpoint, _good_files(root))
    assert len(tree_files(restarted.mountpoint)) == len(_good_files(root))
    assert restarted.stop() == 0

    fsck = subprocess.run([sys.executable, "-m", "musicfs", "fsck", "--state-dir", str(restarted.state_dir),
                           "--cache-dir", str(restarted.cache_dir)], capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
