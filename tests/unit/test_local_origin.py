"""LocalOrigin: walk, path safety (symlinks, '..', absolute), ranged reads, identity checks, errors."""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from musicfs.origins.base import NAME_ESCAPE, FileStat, escape_name, unescape_name
from musicfs.origins.local import LocalOrigin
from musicfs.shared.errors import (
    OriginFileChanged,
    OriginNotFound,
    OriginPermission,
    OriginTransient,
    PathEscape,
)
from musicfs_test_utils.assertions import assert_logs

CONTENT = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    """root/ with files, a nested folder, and an outside/ folder next to it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "Artist" / "Album").mkdir(parents=True)
    (root / "empty").mkdir()
    outside.mkdir()
    (root / "top.mp3").write_bytes(b"x" * 7)
    (root / "Artist" / "Album" / "01 Song.flac").write_bytes(CONTENT)
    (root / "Artist" / "Album" / "cover.jpg").write_bytes(b"\xff\xd8jpeg")
    (root / "Artist" / "zero.ogg").write_bytes(b"")
    (outside / "secret.flac").write_bytes(b"secret bytes")
    (outside / "sub").mkdir()
    (outside / "sub" / "deep.mp3").write_bytes(b"deep secret")
    return root, outside


def _walk(origin: LocalOrigin) -> dict[str, int]:
    return {st.path: st.size for st in origin.walk()}


def test_walk_lists_regular_files_with_sizes_and_mtimes(tree):
    root, _ = tree
    origin = LocalOrigin(root)
    found = list(origin.walk())
    expected = {
        p.relative_to(root).as_posix(): p.stat()
        for p in root.rglob("*")
        if p.is_file()
    }
    assert {st.path: st.size for st in found} == {k: v.st_size for k, v in expected.items()}
    assert {st.path: st.mtime_ns for st in found} == {k: v.st_mtime_ns for k, v in expected.items()}
    assert all(not st.path.startswith("/") and "\\" not in st.path for st in found)


def test_walk_never_follows_symlinks_out_of_the_root(tree):
    root, outside = tree
    os.symlink(outside / "secret.flac", root / "leak.flac")  # file symlink, absolute target
    os.symlink("../../outside/sub", root / "Artist" / "leakdir")  # dir symlink, relative target
    os.symlink(outside, root / "leakroot")
    os.symlink(root / "missing.flac", root / "dangling.flac")
    listed = _walk(LocalOrigin(root))
    assert not any("leak" in p or "dangling" in p for p in listed), listed
    assert "secret" not in " ".join(listed) and "deep" not in " ".join(listed)
    # and the files themselves cannot be read through the links either
    origin = LocalOrigin(root)
    for path in ("leak.flac", "Artist/leakdir/deep.mp3", "leakroot/secret.flac"):
        with pytest.raises(PathEscape):
            origin.read(path, 0, 100)
        with pytest.raises(PathEscape):
            origin.stat(path)


def test_walk_does_not_descend_into_symlinked_dirs_inside_the_root(tree):
    root, _ = tree
    os.symlink(root / "Artist", root / "loop")  # a loop back into the tree: must not be walked twice
    os.symlink(root, root / "Artist" / "self")
    listed = _walk(LocalOrigin(root))
    assert not any(p.startswith("loop/") or "/self/" in p for p in listed)
    assert "Artist/Album/01 Song.flac" in listed


def test_symlinked_file_inside_the_root_is_listed(tree):
    root, _ = tree
    os.symlink("Artist/Album/01 Song.flac", root / "alias.flac")
    origin = LocalOrigin(root)
    assert _walk(origin)["alias.flac"] == len(CONTENT)
    assert origin.read("alias.flac", 0, 16) == CONTENT[:16]


@pytest.mark.parametrize(
    "path",
    ["../outside/secret.flac", "Artist/../../outside/secret.flac", "..", "/etc/passwd", "top.mp3\0", "a/\0/b"],
)
def test_escaping_paths_are_refused(tree, path):
    origin = LocalOrigin(tree[0])
    with pytest.raises(PathEscape):
        origin.read(path, 0, 10)
    with pytest.raises(PathEscape):
        origin.stat(path)


def test_path_escape_is_a_permission_error(tree):
    with pytest.raises(OriginPermission):
        LocalOrigin(tree[0]).read("../outside/secret.flac", 0, 1)


def test_dotdot_that_stays_inside_is_fine(tree):
    origin = LocalOrigin(tree[0])
    assert origin.read("Artist/../top.mp3", 0, 100) == b"x" * 7


@pytest.mark.parametrize(
    "offset, length",
    [(0, 10), (0, len(CONTENT)), (1, 255), (300, 4096), (len(CONTENT) - 5, 100), (len(CONTENT), 10),
     (len(CONTENT) + 1000, 10), (17, 0)],
)
def test_read_at_offsets(tree, offset, length):
    origin = LocalOrigin(tree[0])
    assert origin.read("Artist/Album/01 Song.flac", offset, length) == CONTENT[offset : offset + length]


def test_read_empty_file(tree):
    assert LocalOrigin(tree[0]).read("Artist/zero.ogg", 0, 100) == b""


def test_read_with_matching_expect_succeeds(tree):
    origin = LocalOrigin(tree[0])
    st = origin.stat("Artist/Album/01 Song.flac")
    real = os.stat(tree[0] / "Artist/Album/01 Song.flac")
    assert st == FileStat("Artist/Album/01 Song.flac", len(CONTENT), st.mtime_ns, f"{real.st_ino:x}-{real.st_ctime_ns:x}")
    assert origin.read(st.path, 100, 50, expect=st) == CONTENT[100:150]


def test_read_with_expect_detects_a_new_mtime(tree):
    root, _ = tree
    origin = LocalOrigin(root)
    st = origin.stat("Artist/Album/01 Song.flac")
    os.utime(root / st.path, ns=(st.mtime_ns + 1_000_000_000, st.mtime_ns + 1_000_000_000))
    with pytest.raises(OriginFileChanged) as err:
        origin.read(st.path, 0, 10, expect=st)
    assert err.value.path == st.path
    assert origin.read(st.path, 0, 10) == CONTENT[:10]  # without expect it still reads


def test_read_with_expect_detects_a_size_change(tree):
    root, _ = tree
    origin = LocalOrigin(root)
    st = origin.stat("Artist/Album/01 Song.flac")
    with open(root / st.path, "ab") as fh:
        fh.write(b"more")
    os.utime(root / st.path, ns=(st.mtime_ns, st.mtime_ns))  # same mtime: only the size tells
    with pytest.raises(OriginFileChanged):
        origin.read(st.path, 0, 10, expect=st)


def test_read_with_expect_detects_an_etag_mismatch(tree):
    origin = LocalOrigin(tree[0])
    st = origin.stat("top.mp3")
    with pytest.raises(OriginFileChanged):
        origin.read("top.mp3", 0, 1, expect=FileStat(st.path, st.size, st.mtime_ns, etag="abc"))


def test_missing_file_is_not_found(tree):
    origin = LocalOrigin(tree[0])
    with pytest.raises(OriginNotFound):
        origin.read("nope.flac", 0, 10)
    with pytest.raises(OriginNotFound):
        origin.stat("Artist/nope/x.flac")
    with pytest.raises(OriginNotFound):
        origin.read("top.mp3/child", 0, 1)  # ENOTDIR


def test_missing_root_is_reported_by_probe_walk_and_read(tmp_path):
    # A missing root is not an error at construction (a mount may start offline and serve its cache),
    # but every operation on it says "not found".
    origin = LocalOrigin(tmp_path / "absent")
    with pytest.raises(OriginNotFound):
        origin.probe()
    with pytest.raises(OriginNotFound):
        list(origin.walk())
    with pytest.raises(OriginNotFound):
        origin.read("x.flac", 0, 1)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OriginNotFound):
        LocalOrigin(tmp_path / "file").probe()


def test_probe(tree, tmp_path):
    root, _ = tree
    origin = LocalOrigin(root)
    origin.probe()
    os.rename(root, tmp_path / "moved")
    with pytest.raises(OriginNotFound):
        origin.probe()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unreadable_file_is_a_permission_error(tree):
    root, _ = tree
    target = root / "Artist" / "Album" / "01 Song.flac"
    target.chmod(0)
    try:
        with pytest.raises(OriginPermission) as err:
            LocalOrigin(root).read("Artist/Album/01 Song.flac", 0, 10)
        assert err.value.kind == "permission"
    finally:
        target.chmod(0o644)


# -- names that are not UTF-8 --------------------------------------------------------------------
@given(st.binary(max_size=40))
def test_escaped_names_are_utf8_text_that_gives_back_the_real_bytes(raw):
    name = os.fsdecode(raw)
    text = escape_name(name)
    text.encode("utf-8")  # storable in SQLite TEXT: raises if not
    assert os.fsencode(unescape_name(text)) == raw


@given(st.text())
def test_escaping_leaves_every_valid_name_without_the_escape_unchanged(name):
    name = name.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace(NAME_ESCAPE, "")
    assert escape_name(name) == name and unescape_name(name) == name


def test_a_name_that_is_not_utf8_is_listed_escaped_and_read_by_its_real_bytes(tree):
    root, _ = tree
    raw_dir = os.path.join(os.fsencode(root), b"Caf\xe9")
    os.mkdir(raw_dir)
    with open(os.path.join(raw_dir, b"\xff\xfe.flac"), "wb") as fh:
        fh.write(CONTENT)
    origin = LocalOrigin(root)
    listed = _walk(origin)
    odd = [p for p in listed if p.startswith("Caf")]
    assert odd == [f"Caf{NAME_ESCAPE}E9/{NAME_ESCAPE}FF{NAME_ESCAPE}FE.flac"]
    assert listed[odd[0]] == len(CONTENT)
    stat = origin.stat(odd[0])
    assert stat.path == odd[0] and stat.size == len(CONTENT)
    assert origin.read(odd[0], 100, 50, stat) == CONTENT[100:150]


# -- what the walk cannot reach -------------------------------------------------------------------
def _deep_chain(base: Path, path_bytes: int, leaf: bytes = b"deep.flac") -> list[str]:
    """Folders of 200-byte names under `base`, made with dir_fd (no path is ever longer than one name),
    until the path passes `path_bytes`; a file in each. Returns the relative folder names."""
    names = []
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(os.fsencode(base)) + sum(len(n) + 1 for n in names) <= path_bytes:
            name = f"{len(names):03d}" + "d" * 197
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
            names.append(name)
            out = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, CONTENT[:100])
            os.close(out)
    finally:
        os.close(fd)
    return names


def test_folders_deeper_than_path_max_are_logged_and_the_rest_is_walked(tree):
    root, _ = tree
    limit = os.pathconf(root, "PC_PATH_MAX")  # counts the NUL: a path of `limit` bytes is refused
    names = _deep_chain(root, limit + 300)
    origin = LocalOrigin(root)
    with assert_logs("", level=logging.WARNING) as lines:
        listed = _walk(origin)
    assert all(re.search(r"musicfs.origins.local: scan: .*: skipping (folder|file) .*deeper than the system's "
                         r"path limit", line) for line in lines)

    base = len(os.fsencode(origin.root))
    folder = [base + sum(len(n) + 1 for n in names[:i + 1]) for i in range(len(names))]  # bytes of each path
    fits = lambda n: n < limit  # noqa: E731
    first_too_deep = next(i for i, n in enumerate(folder) if not fits(n))
    expect_files = {"/".join(names[:i + 1]) + "/deep.flac" for i in range(first_too_deep)
                    if fits(folder[i] + len("/deep.flac"))}
    assert len(expect_files) >= first_too_deep - 1 >= 10
    assert {p for p in listed if p.startswith("000")} == expect_files
    assert {"top.mp3", "Artist/Album/01 Song.flac", "Artist/zero.ogg"} <= set(listed)

    folders = [line for line in lines if "skipping folder" in line]
    assert len(folders) == 1 and f"(a path of {folder[first_too_deep]} bytes)" in folders[0]
    assert names[first_too_deep][-100:] in folders[0]
    # a file of the last folder that fits is named on its own line, when it does not fit
    assert len(lines) == 1 + (first_too_deep - len(expect_files))


def test_many_skipped_entries_are_named_up_to_a_limit_then_counted(tree):
    from musicfs.origins import local

    root, _ = tree
    for i in range(local.LOG_SKIPPED + 5):
        os.symlink(f"loop{i}", root / f"loop{i}")  # each points at itself: ELOOP on stat
    with assert_logs("^musicfs.origins.local: ", count=local.LOG_SKIPPED + 1) as lines:
        listed = _walk(LocalOrigin(root))
    assert "top.mp3" in listed
    assert all("skipping file loop" in line and "symbolic links" in line for line in lines[:-1])
    assert f"{local.LOG_SKIPPED + 5} files and folders skipped in all" in lines[-1]


def _failing_scandir(monkeypatch, folder: str, err: int) -> None:
    real = os.scandir

    def scandir(path):
        if str(path).endswith(os.sep + folder):
            raise OSError(err, os.strerror(err), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_folder_is_logged_and_the_rest_is_walked(tree, monkeypatch):
    root, _ = tree
    _failing_scandir(monkeypatch, "Album", errno.EACCES)  # chmod 0 stops no one when the tests run as root
    with assert_logs(r"skipping folder Artist/Album: Permission denied; the rest is scanned", count=1):
        listed = _walk(LocalOrigin(root))
    assert "top.mp3" in listed and "Artist/zero.ogg" in listed
    assert not any(p.startswith("Artist/Album/") for p in listed)


def test_a_folder_that_fails_with_an_io_error_still_fails_the_walk(tree, monkeypatch):
    """Skipping it would make every file in it look deleted to the scanner."""
    root, _ = tree
    _failing_scandir(monkeypatch, "Album", errno.EIO)
    with pytest.raises(OriginTransient):
        _walk(LocalOrigin(root))
