"""Opening the catalog: a damaged write-ahead log is said, not silently dropped; a read-only state folder is
named as such (issue 9)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.library.catalog import Catalog
from musicfs.library.catalog_files import CATALOG_NAME, open_checked
from musicfs.shared.damage import wal_before_open
from musicfs.shared.errors import CatalogError
from musicfs_test_utils import disks
from musicfs_test_utils.assertions import assert_logs

PAGE = 4096
DAMAGED = r"musicfs.library.catalog: catalog .*catalog\.db: its write-ahead log .*catalog\.db-wal was damaged"


def catalog_with_wal(tmp_path: Path, rows: int = 6, restart_after: int | None = None) -> Path:
    """A catalog whose last `rows` committed rows live only in its WAL, as a killed daemon leaves it: the
    files are copied while the writer still has them open (a clean close would checkpoint them away)."""
    work = tmp_path / "writer"
    work.mkdir()
    cat = Catalog(str(work / CATALOG_NAME))
    cat._db.execute("PRAGMA wal_autocheckpoint=0")
    cat._run("CREATE TABLE IF NOT EXISTS probe(n INTEGER, pad TEXT)")
    cat._run("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema is in the main file, the WAL starts empty
    for n in range(rows):
        if restart_after is not None and n == restart_after:
            cat._run("PRAGMA wal_checkpoint(RESTART)")  # the next write starts the log over: old frames follow
        cat._run("INSERT INTO probe VALUES(?, ?)", (n, "x" * 3000))
    state = tmp_path / "state"
    state.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(work / (CATALOG_NAME + suffix), state / (CATALOG_NAME + suffix))
    cat.close()
    return state / CATALOG_NAME


def rows_in(path: Path) -> int:
    cat = Catalog(str(path))
    try:
        return cat._run("SELECT count(*) FROM probe")[0][0]
    finally:
        cat.close()


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_a_sound_wal_is_replayed_without_a_word(tmp_path):
    path = catalog_with_wal(tmp_path)
    with assert_logs("", count=0):
        frames, problem = wal_before_open(str(path))
        assert frames >= 6 and problem == ""  # one commit frame per insert at least
        assert rows_in(path) == 6


def test_old_frames_after_a_restarted_log_are_not_damage(tmp_path):
    path = catalog_with_wal(tmp_path, rows=8, restart_after=5)  # 3 new frames, then 3+ of the old generation
    with assert_logs("", count=0):
        frames, problem = wal_before_open(str(path))
        assert problem == "" and 0 < frames < (os.path.getsize(str(path) + "-wal") - 32) // (24 + PAGE)
        assert rows_in(path) == 8


def test_a_wal_with_a_damaged_header_is_logged_naming_it(tmp_path):
    path = catalog_with_wal(tmp_path)
    flip(Path(str(path) + "-wal"), 17)  # inside the salt: the header checksum no longer matches
    with assert_logs(DAMAGED + r" \(bad header checksum: SQLite ignored the whole log\)", count=1) as lines:
        assert rows_in(path) == 0  # SQLite drops the log: that cannot be undone, but it is said
    assert f"{path}-wal" in lines[0] and "rescan" in lines[0]


def test_a_wal_with_a_damaged_frame_is_logged_naming_it(tmp_path):
    path = catalog_with_wal(tmp_path)
    frames, _ = wal_before_open(str(path))
    flip(Path(str(path) + "-wal"), 32 + 2 * (24 + PAGE) + 24 + 100)  # the third frame's page
    with assert_logs(DAMAGED + r" \(a damaged frame: SQLite kept \d+ of its \d+ committed frames\)", count=1) as lines:
        assert rows_in(path) < 6
    assert f"of its {frames} committed frames" in lines[0]


def test_a_wal_of_garbage_is_logged(tmp_path):
    path = catalog_with_wal(tmp_path)
    Path(str(path) + "-wal").write_bytes(os.urandom(3 * (24 + PAGE)))
    with assert_logs(DAMAGED + r" \(bad magic number", count=1):
        assert rows_in(path) == 0


def test_an_empty_or_missing_wal_says_nothing(tmp_path):
    path = tmp_path / CATALOG_NAME
    with assert_logs("", count=0):
        assert wal_before_open(str(path)) == (0, "")
        Path(str(path) + "-wal").write_bytes(b"")
        Catalog(str(path)).close()


# -- a state folder that cannot be written --------------------------------------------------------------
@contextlib.contextmanager
def read_only_folder(path: Path):
    """`path` read-only for this process: a read-only bind mount as root, mode 0555 otherwise."""
    if os.geteuid() == 0:
        if not disks.can_mount():
            pytest.skip("root without mount(8): cannot make a folder read-only for root")
        with disks.read_only(path):
            yield "read-only"
    else:
        path.chmod(0o555)
        try:
            yield "not writable by this user"
        finally:
            path.chmod(0o755)


@pytest.mark.parametrize("existing", [True, False], ids=["catalog-there", "no-catalog-yet"])
def test_a_read_only_state_folder_is_named_as_such(tmp_path, existing):
    state = tmp_path / "state"
    state.mkdir()
    if existing:
        Catalog(str(state / CATALOG_NAME)).close()
    with read_only_folder(state) as words:
        with pytest.raises(CatalogError) as err:
            open_checked(str(state))
    assert str(err.value).startswith(f"the state folder {state} is {words}")
    assert str(state / CATALOG_NAME) in str(err.value)


def test_musicfs_scan_into_a_read_only_state_folder_exits_1_saying_so(tmp_path, small_library):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "FAILPOINTS")}
    with read_only_folder(state) as words:
        result = subprocess.run([sys.executable, "-m", "musicfs", "scan", str(small_library[0]), "--state-dir",
                                 str(state)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1, result.stderr
    assert f"musicfs: the state folder {state} is {words}" in result.stderr
    assert "Traceback" not in result.stderr and "unable to open database file" not in result.stderr.split("(SQLite")[0]
