"""Private state (issue 9): the catalog and the cached tracks are the user's alone.

`damage.private_state` sets umask 0o077 (folders 0700, files 0600 from then on) and takes group/other
permissions away from what an older version left open, with one log line. The daemon, `musicfs scan` and
`musicfs fsck --repair` call it before they create anything. (tests/conftest.py gives every test its umask back.)
"""

from __future__ import annotations

import os
import stat

from musicfs.cache.cas import CasStore
from musicfs.commands import cli
from musicfs.library.catalog_files import open_checked
from musicfs.library.search import SearchIndex
from musicfs.shared.damage import PRIVATE_UMASK, private_state
from musicfs_test_utils.assertions import assert_logs


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def open_to_others(*folders) -> list[str]:
    """Every file or folder under `folders` (included) that group or other may use."""
    found = []
    for top in folders:
        for root, _, names in os.walk(top):
            found += [p for p in [root, *(os.path.join(root, n) for n in names)]
                      if not stat.S_ISLNK(os.lstat(p).st_mode) and mode(p) & 0o077]
    return found


def test_open_state_and_cache_are_tightened_with_one_log_line(tmp_path):
    state, cache, outside = tmp_path / "state", tmp_path / "cache", tmp_path / "outside.txt"
    (state / "index").mkdir(parents=True)
    (cache / "ab").mkdir(parents=True)
    for f, m in ((state / "catalog.db", 0o644), (state / "index" / "meta.json", 0o664), (cache / "ab" / "abcd", 0o604),
                 (cache / "index.db", 0o600)):
        f.write_bytes(b"x")
        f.chmod(m)
    for d in (state, state / "index", cache, cache / "ab"):
        d.chmod(0o755)
    (cache / "ab").chmod(0o700)
    outside.write_bytes(b"y")
    outside.chmod(0o644)
    (state / "link").symlink_to(outside)  # symlinks are neither followed nor changed

    with assert_logs(r"musicfs.shared.damage: private state .*state, .*cache: 3 folders and 3 files were open to "
                     "other users", count=1) as lines:
        line = private_state(str(state), str(cache))

    assert open_to_others(state, cache) == []
    assert mode(state) == mode(cache) == 0o700 and mode(state / "index" / "meta.json") == 0o600
    assert mode(cache / "ab" / "abcd") == 0o600 and mode(outside) == 0o644
    assert lines == [f"musicfs.shared.damage: {line}"] and str(state) in line and str(cache) in line
    assert os.umask(0o022) == PRIVATE_UMASK
    with assert_logs("", count=0):
        assert private_state(str(state), str(cache)) is None  # once only


def test_private_state_of_missing_folders_says_nothing(tmp_path):
    with assert_logs("", count=0):
        assert private_state(str(tmp_path / "no-state"), str(tmp_path / "no-cache")) is None
    assert not (tmp_path / "no-state").exists()


def test_what_the_library_creates_afterwards_is_private(tmp_path):
    os.umask(0o022)  # what the daemon inherits from a usual shell
    state, cache = tmp_path / "lib" / "state", tmp_path / "lib" / "cache"
    assert private_state(str(state), str(cache)) is None
    catalog, damage = open_checked(str(state))
    catalog.close()
    index = SearchIndex(str(state / "index"))
    assert index.rebuild([]) == 0
    cas = CasStore(str(cache), 1 << 30)
    cas.put(b"a chunk of a track")
    cas.close()
    assert damage == "" and (state / "catalog.db").exists() and list((state / "index").iterdir())
    assert open_to_others(state, cache) == []
    assert mode(state) == mode(cache) == 0o700 and mode(state / "catalog.db") == 0o600


def test_musicfs_scan_creates_private_state(tmp_path, small_library):
    os.umask(0o022)
    state = tmp_path / "xdg" / "musicfs" / "lib"
    assert cli.main(["scan", str(small_library[0]), "--state-dir", str(state)]) == 0
    assert (state / "catalog.db").exists() and open_to_others(tmp_path / "xdg") == []
