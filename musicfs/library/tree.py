"""VirtualTree: an immutable Artist/Album/NN - Title.ext snapshot of the catalog.

A new tree is built beside the old one and swapped in whole, so a reader never sees a half
tree. Inode numbers come from the catalog (keyed by origin path and content identity for files, by tree
path for folders), so an unchanged track keeps its inode across rescans and restarts, and a changed one
gets a new inode (see file_key).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import marshal
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..origins import unescape_name
from ..shared import nfc, normalise
from .catalog import ROW_FIELDS, VERSION_SEP, FileRow, rows_to_files

log = logging.getLogger(__name__)

ROOT_INO = 1
FIRST_INO = 2
NAME_MAX = 255


def clean_name(text: str) -> str:
    """A safe single path component: no '/', no NUL, no leading dot, valid UTF-8, never empty."""
    if text.isprintable() and text and "/" not in text and text[0] != "." and text[0] != " " and text[-1] != " ":
        # The common name, unchanged below: no control character, NUL, lone surrogate or escape (U+FDD0
        # is not printable, nor is any space but " ", so strip() has nothing to do either).
        return text
    text = unescape_name(text)  # an origin name that is not UTF-8 (escaped, see origins/base.py)
    try:  # undecodable bytes smuggled in as U+DC80..U+DCFF: back to bytes, then replaced if invalid
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # any other lone surrogate (e.g. U+D800) cannot be escaped back
        raw = text.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "replace")
    text = text.replace("/", "_").replace("\0", "_").strip()
    if text.startswith("."):
        text = "_" + text[1:]
    return text or "_"


def fit_name(stem: str, suffix: str = "") -> str:
    """stem + suffix cut (on a character boundary) to at most NAME_MAX bytes of UTF-8."""
    if len(stem) + len(suffix) <= NAME_MAX // 4:  # a UTF-8 character is at most 4 bytes: fits
        return stem + suffix
    room = NAME_MAX - len(suffix.encode())
    raw = stem.encode()
    if len(raw) > room:
        stem = raw[:room].decode("utf-8", "ignore").rstrip()
    return stem + suffix


@dataclass
class Node:
    ino: int
    name: bytes
    parent: int
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    file: FileRow | None = None
    children: dict[bytes, int] = field(default_factory=dict)


class VirtualTree:
    """Read-only view: ino -> Node; lookups and listings are pure memory."""

    def __init__(self, nodes: dict[int, Node], *, track_count: int | None = None):
        self.nodes = nodes
        self.listings = {ino: sorted(n.children.items()) for ino, n in nodes.items() if n.is_dir}
        self.total_size = sum(n.size for n in nodes.values() if not n.is_dir)
        self._track_count = track_count

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def lookup(self, parent: int, name: bytes) -> Node | None:
        node = self.nodes.get(parent)
        if node is None or not node.is_dir:
            return None
        ino = node.children.get(name)
        if ino is None and (composed := nfc(name)) is not None:  # typed decomposed (NFD): names are NFC
            ino = node.children.get(composed)
        return self.nodes.get(ino) if ino else None

    def path(self, ino: int) -> str:
        parts = []
        while ino != ROOT_INO:
            node = self.nodes[ino]
            parts.append(node.name.decode())
            ino = node.parent
        return "/".join(reversed(parts))

    def walk_files(self) -> Iterable[Node]:
        return (n for n in self.nodes.values() if not n.is_dir)

    @property
    def track_count(self) -> int:
        if self._track_count is None:
            self._track_count = sum(1 for n in self.walk_files() if n.file and n.file.kind == "track")
        return self._track_count


def _album_dirs(row: FileRow) -> tuple[str, str]:
    artist = row.albumartist or row.artist or "Unknown Artist"
    return _folder_name(artist), _folder_name(row.album or "Unknown Album")


@functools.lru_cache(maxsize=65536)
def _folder_name(text: str) -> str:
    """Artist and album names repeat across an album's tracks: each is cleaned once."""
    return fit_name(clean_name(text))


def _track_stem(row: FileRow, multi_disc: bool) -> str:
    base = os.path.basename(row.path)
    title = clean_name(row.title or normalise(os.path.splitext(base)[0]))  # tags are normalised at scan
    if row.track_no is None:
        return title
    if multi_disc:
        return f"{row.disc_no or 1}-{row.track_no:02d} - {title}"
    return f"{row.track_no:02d} - {title}"


def _unique(stem: str, ext: str, taken: set[str]) -> str:
    """First free name among stem.ext, stem (2).ext, stem (3).ext ..."""
    n = 1
    while True:
        name = fit_name(stem, (f" ({n})" if n > 1 else "") + ext)
        if name not in taken:
            taken.add(name)
            return name
        n += 1


def plan_paths(files: Iterable[FileRow]) -> list[tuple[tuple[str, str, str], FileRow]]:
    """Every track and cover with its (artist, album, name) place, names unique per folder."""
    rows = sorted((f for f in files if f.kind in ("track", "cover")), key=lambda f: f.path)
    albums: dict[tuple[str, str], list[FileRow]] = defaultdict(list)
    covers: dict[tuple[str, str], list[FileRow]] = defaultdict(list)  # album -> covers from its source folders
    album_of_dir: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        if row.kind == "track":
            key = _album_dirs(row)
            albums[key].append(row)
            album_of_dir[os.path.dirname(row.path)].add(key)
    for row in rows:
        if row.kind == "cover":
            for key in album_of_dir.get(os.path.dirname(row.path), ()):
                covers[key].append(row)
    placed = []
    for key, tracks in sorted(albums.items()):
        multi = any((r.disc_no or 1) > 1 for r in tracks)
        taken: set[str] = set()
        for row in tracks:
            ext = os.path.splitext(row.path)[1].lower()
            placed.append(((*key, _unique(_track_stem(row, multi), ext, taken)), row))
        for cover in covers[key]:
            stem, ext = os.path.splitext(clean_name(os.path.basename(cover.path)))
            placed.append(((*key, _unique(stem, ext.lower(), taken)), cover))
    return placed


def file_key(row: FileRow, artist: str, album: str) -> str:
    """Inode key: a track by its origin path; a cover per album, as one image can serve several.

    The key ends with the file's content identity, so a file that changes at the origin gets a new
    inode number: the kernel can never hold two versions of a file in one inode's page cache. The old
    inode is retired (answered until the kernel forgets it) and its handles keep reading the old version.
    """
    place = f"f:{row.path}" if row.kind == "track" else f"c:{row.path}#{artist}/{album}"
    return f"{place}{VERSION_SEP}{row.ident}"


@contextlib.contextmanager
def _no_gc():
    """Building a tree makes ~200k objects, none of them garbage: the cyclic collector's passes over
    them (generation 2 ones included) would only cost time (a third of a 100k-track build)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build_tree(files: Iterable[FileRow], inodes: dict[str, int], assign: Callable[[list[str]], dict[str, int]]) -> VirtualTree:
    """Build a tree; `assign` gives inode numbers to keys not yet in `inodes`."""
    with _no_gc():
        return _build_tree(files, inodes, assign)


def _build_tree(files: Iterable[FileRow], inodes: dict[str, int], assign: Callable[[list[str]], dict[str, int]]) -> VirtualTree:
    placed = plan_paths(files)
    keyed = [(f"d:{artist}", f"d:{artist}/{album}", file_key(row, artist, album)) for (artist, album, _), row in placed]
    missing = sorted({k for ks in keyed for k in ks if k not in inodes})
    inodes = {**inodes, **assign(missing)} if missing else inodes
    nodes = {ROOT_INO: Node(ROOT_INO, b"", ROOT_INO, True)}
    tracks = 0

    def folder(parent: int, key: str, name: str, mtime_ns: int) -> int:
        ino = inodes[key]
        node = nodes.get(ino)
        if node is None:
            node = nodes[ino] = Node(ino, name.encode(), parent, True)
            nodes[parent].children[node.name] = ino
        if mtime_ns > node.mtime_ns:
            node.mtime_ns = mtime_ns
        return ino

    for ((artist, album, name), row), (artist_key, album_key, key) in zip(placed, keyed):
        a = folder(ROOT_INO, artist_key, artist, row.mtime_ns)
        b = folder(a, album_key, album, row.mtime_ns)
        ino = inodes[key]
        raw = name.encode()
        nodes[ino] = Node(ino, raw, b, False, row.size, row.mtime_ns, row)
        nodes[b].children[raw] = ino
        tracks += row.kind == "track"
    nodes[ROOT_INO].mtime_ns = max((n.mtime_ns for n in nodes.values()), default=0)
    return VirtualTree(nodes, track_count=tracks)


# -- the persisted snapshot ----------------------------------------------------------------------------
# Building the tree of 100k tracks costs seconds (rows -> names -> inode keys); loading what the last build
# made costs a fraction of that. `<state>/tree.snapshot` holds that tree, keyed by the catalog's
# generation (catalog.py: a random token rewritten by triggers on every write to files or inodes) and by
# the rules that build trees (this file, text.py, the FileRow fields): a snapshot whose key differs is
# never used. Its payload is checksummed; a damaged one is ignored (one log line) and rebuilt.

SNAPSHOT_NAME = "tree.snapshot"
_MAGIC = b"MUSICFS-TREE-1\n"


@functools.lru_cache(maxsize=1)
def _rules() -> bytes:
    """What a snapshot's tree depends on besides the catalog: the code that builds trees."""
    h = hashlib.sha256(repr(ROW_FIELDS).encode())
    for path in (__file__, sys.modules[normalise.__module__].__file__):  # this module's and the text rules'
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest().encode()


def _header(generation: str) -> bytes:
    return _MAGIC + _rules() + b"\n" + generation.encode() + b"\n"


def snapshot_bytes(tree: VirtualTree, generation: str) -> bytes:
    dirs, files = [], []
    for n in tree.nodes.values():
        if n.is_dir:
            dirs.append((n.ino, n.name, n.parent, n.mtime_ns))
        else:
            row = n.file.__dict__
            files.append((n.ino, n.name, n.parent, tuple(row[k] for k in ROW_FIELDS)))
    payload = marshal.dumps((dirs, files))
    return _header(generation) + hashlib.sha256(payload).digest() + payload


def save_snapshot(path: str, tree: VirtualTree, generation: str) -> None:
    """Write atomically (temp file, fsync, rename); a failure only costs the next start its speed."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(snapshot_bytes(tree, generation))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.info("tree snapshot %s not written (%s): the next start builds the tree from the catalog", path, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_snapshot(path: str, generation: str, freeze: bool = False) -> VirtualTree | None:
    """The tree saved for this catalog generation, or None (missing, stale or damaged: said in the log)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("tree snapshot %s cannot be read (%s): building the tree from the catalog", path, exc)
        return None
    header = _header(generation)
    if not data.startswith(_MAGIC):
        why = "not a tree snapshot"
    elif not data.startswith(header):
        log.info("tree snapshot %s is of another catalog generation or tree version: building the tree from "
                 "the catalog", path)
        return None
    else:
        digest, payload = data[len(header):len(header) + 32], data[len(header) + 32:]
        if hashlib.sha256(payload).digest() != digest:
            why = "checksum mismatch"
        else:
            try:
                return _tree_from(payload, freeze)
            except (ValueError, EOFError, TypeError, KeyError, IndexError) as exc:
                why = f"unreadable: {exc}"
    log.warning("tree snapshot %s is damaged (%s): ignored; building the tree from the catalog", path, why)
    return None


class _SnapshotNode(Node):
    """A file node loaded from a snapshot: its FileRow is made from the stored tuple when first asked for
    (a read opening the file, the search index), not for 100k files before the mount answers."""

    @property
    def file(self) -> FileRow:
        row = self.__dict__.get("_file")
        if row is None:
            row = self.__dict__["_file"] = rows_to_files((self.__dict__["_row"],))[0]
        return row


def _tree_from(payload: bytes, freeze: bool = False) -> VirtualTree:
    new = object.__new__
    with _no_gc():
        dirs, files = marshal.loads(payload)
        nodes: dict[int, Node] = {}
        for ino, name, parent, mtime_ns in dirs:
            node = new(Node)
            node.__dict__ = {"ino": ino, "name": name, "parent": parent, "is_dir": True, "size": 0,
                             "mtime_ns": mtime_ns, "file": None, "children": {}}
            nodes[ino] = node
        tracks = 0
        kind, size, mtime = ROW_FIELDS.index("kind"), ROW_FIELDS.index("size"), ROW_FIELDS.index("mtime_ns")
        for ino, name, parent, row in files:
            node = new(_SnapshotNode)
            node.__dict__ = {"ino": ino, "name": name, "parent": parent, "is_dir": False, "size": row[size],
                             "mtime_ns": row[mtime], "_row": row, "children": {}}
            nodes[ino] = node
            nodes[parent].children[name] = ino
            tracks += row[kind] == "track"
        for ino, name, parent, _ in dirs:
            if ino != ROOT_INO:
                nodes[parent].children[name] = ino
        if ROOT_INO not in nodes:
            raise ValueError("no root folder")
        tree = VirtualTree(nodes, track_count=tracks)
        if freeze:
            # The tree lives as long as the mount (or until a rescan swaps it; freed by reference counts,
            # it has no cycles): out of the cyclic collector's way, instead of one pass over its 300k
            # objects at once and more later. At start only: what else is frozen is the start-up's objects.
            gc.freeze()
        return tree
