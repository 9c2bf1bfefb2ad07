"""Pins: folders and tracks of the mount kept whole in the cache, for offline listening.

A pin is a tree path (`Artist`, `Artist/Album`, `Artist/Album/01 - Title.flac`), stored in the catalog's
`pins` table so it survives restarts. It is resolved to the catalog's files at start and after every rescan
(a track added to a pinned album is pinned too; a file that changed at the origin is fetched again in its new
version). The worker (`PinSet.run`, a task of the daemon's supervisor) fetches the missing chunks through the
reader's public API, one chunk at a time (playback goes first), so every pinned byte is verified like any
chunk; each chunk a pinned file names in its manifest is pinned in the CAS, so eviction never takes it.
While every origin is down or the cache is bypassed (unstable/down: passthrough) the worker waits, and it
resumes by itself; a pin never makes the cache hold more than `SHARE` of its quota. A pinned folder that grows
at the origin past that share (tracks added to a pinned album) keeps what it held: the files that would not fit
are left out (not fetched, not kept), the pin's state says `over_quota`, and `musicfs status` warns, until
the quota or the pins change.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from typing import Callable

import trio

from ..shared import MusicFSError, OriginError, human_size, points
from .catalog import Catalog, FileRow, FileVersion
from .tree import ROOT_INO, Node, VirtualTree

log = logging.getLogger(__name__)

SHARE = 0.8  # pinned bytes may fill at most this share of the cache quota
RETRY = 2.0  # seconds between attempts while waiting (offline, cache bypassed, a fetch failed)
IDLE = 30.0  # with nothing to fetch, look again this often (a wake-up comes sooner on any change)
CATALOG_TIMEOUT = 10.0  # a locked catalog delays a pin request, never hangs it

QUEUED, FETCHING, COMPLETE, WAITING, OVER_QUOTA = "queued", "fetching", "complete", "waiting", "over_quota"


class PinError(MusicFSError):
    """A pin or unpin request that was refused; the message names the path (and the sizes)."""


@dataclass(frozen=True)
class PinInfo:
    """One pin, as `musicfs pins --json` lists it."""

    path: str
    tracks: int
    bytes: int
    cached_bytes: int
    state: str  # queued | fetching | complete | waiting | over_quota (files left out: SHARE of the quota is full)
    left_out: int = 0  # files of the pin that do not fit in SHARE of the quota: not fetched, not kept


@dataclass(frozen=True)
class PinsStatistics:
    """`PinSet.statistics()`: every pin and the worker's progress (document key `pins`)."""

    pins: tuple[PinInfo, ...] = ()
    files: int = 0  # distinct files pinned
    bytes: int = 0  # their total size
    cached_bytes: int = 0  # of which cached (each chunk pinned in the CAS)
    pinned_chunks: int = 0  # digests this pin set holds pinned in the CAS
    fetched_chunks: int = 0  # chunks the worker loaded since start
    failures: int = 0  # failed chunk loads since start
    worker: str = "idle"  # idle | fetching | waiting
    reason: str = ""  # why it waits
    last_error: str = ""


def normalise_path(path: str) -> str:
    """A tree path as pins store it: components NFC, no empty, '.' or trailing parts ('' is the whole mount)."""
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PinError(f"{path}: '..' is not allowed in a path inside the mount")
    return "/".join(unicodedata.normalize("NFC", p) for p in parts)


def find_node(tree: VirtualTree, path: str) -> Node | None:
    """The tree's node at `path` (a normalised tree path), or None."""
    node = tree.get(ROOT_INO)
    for part in path.split("/") if path else ():
        node = tree.lookup(node.ino, part.encode("utf-8", "surrogateescape"))  # a name that is not UTF-8: no node
        if node is None:
            return None
    return node


def files_under(tree: VirtualTree, node: Node) -> list[FileRow]:
    """The catalog rows of every file at or below `node` (tracks and covers), each once, by origin path."""
    if not node.is_dir:
        return [node.file] if node.file is not None else []
    found: dict[int, FileRow] = {}
    stack = [node]
    while stack:
        for ino in stack.pop().children.values():
            child = tree.get(ino)
            if child is None:
                continue
            if child.is_dir:
                stack.append(child)
            elif child.file is not None:
                found[child.file.id] = child.file
    return sorted(found.values(), key=lambda r: r.path)


def resolve(tree: VirtualTree, paths: list[str]) -> dict[str, list[FileRow]]:
    """pin path -> its files in `tree` ([] for a path the tree no longer has)."""
    out = {}
    for path in paths:
        node = find_node(tree, path)
        out[path] = files_under(tree, node) if node is not None else []
    return out




class _NotKept(MusicFSError):
    """A loaded chunk was not kept by the cache (bypassed, full) or not named in the manifest."""


class _Settling(MusicFSError):
    """The file's version is racy (origins/base.py, settled): what is read of it now would not be kept."""


class PinSet:
    """The pins of one library: persisted paths, their files and manifests, the CAS pins, the worker."""

    def __init__(self, catalog: Catalog, cache, *, chunk_size: int, quota: int, tree: Callable[[], VirtualTree],
                 reader=None, origins=None, share: float = SHARE, retry: float = RETRY):
        self.catalog = catalog
        self.cache = cache  # ChunkCache: has / store / pin / unpin, health.usable
        self.reader = reader  # FileReader: open / read / release (the worker loads chunks through it)
        self.origins = origins  # OriginRegistry: offline
        self.chunk_size = chunk_size
        self.quota = quota
        self.share = share
        self.retry = retry
        self._tree = tree
        self._paths: list[str] = []
        self._files: dict[str, list[FileRow]] = {}
        self._left_out: dict[str, list[FileRow]] = {}  # files of each pin that do not fit (_fit)
        self._manifests: dict[FileVersion, dict[int, str]] = {}
        self._pinned: set[str] = set()  # digests pinned in the CAS (once each)
        self._current: FileVersion | None = None  # the file the worker is loading
        self._fh: tuple[FileVersion, int] | None = None  # the worker's open reader handle
        self._worker = "idle"
        self._reason = ""
        self._last_error = ""
        self._fetched = 0
        self._failures = 0
        self._wake = trio.Event()

    # -- the set --------------------------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    async def _thread(self, fn, *args):
        with trio.fail_after(CATALOG_TIMEOUT):
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    async def load(self) -> None:
        """At start: the persisted pins, resolved against the tree, their chunks pinned in the CAS again."""
        self._paths = await self._thread(self.catalog.pins)
        await self.refresh()
        if self._paths:
            st = self.statistics()
            log.info("pins: %d (%d files, %s, %s cached)", len(self._paths), st.files, human_size(st.bytes),
                     human_size(st.cached_bytes))

    async def refresh(self, tree: VirtualTree | None = None) -> None:
        """Resolve every pin against `tree` (default: the one served now) and re-pin: after each rescan."""
        tree = self._tree() if tree is None else tree
        files = resolve(tree, self._paths)
        rows = {r.version: r for fs in files.values() for r in fs}
        manifests = await self._thread(self._read_manifests, list(rows.values()))
        self._apply(files, manifests)

    def _read_manifests(self, rows: list[FileRow]) -> dict[FileVersion, dict[int, str]]:
        return {r.version: self.catalog.manifest(r.version) for r in rows}

    def _apply(self, files: dict[str, list[FileRow]], manifests: dict[FileVersion, dict[int, str]]) -> None:
        """Swap in new files and manifests (those that fit in SHARE of the quota: `_fit`); pin the digests they
        name, unpin the ones no pin names any more."""
        before = {r.id for fs in self._left_out.values() for r in fs}
        self._files, self._left_out = self._fit(files)
        kept = {r.version for fs in self._files.values() for r in fs}
        self._manifests = {key: m for key, m in manifests.items() if key in kept}
        self._repin()
        self._wake.set()
        left = {r.id: r.size for fs in self._left_out.values() for r in fs}
        if left and set(left) != before:
            log.warning("pins: %d files (%s) of %s do not fit in %.0f%% of the cache quota %s: left out (not "
                        "fetched, not kept) until the quota or the pins change", len(left),
                        human_size(sum(left.values())), ", ".join(p or "/" for p, fs in self._left_out.items() if fs),
                        self.share * 100, human_size(self.quota))

    def _fit(self, files: dict[str, list[FileRow]]) -> tuple[dict[str, list[FileRow]], dict[str, list[FileRow]]]:
        """(files kept, files left out) per pin: pins in the order they were made, in each the files it held
        before first, then the others by path, while their total fits in SHARE of the quota."""
        limit, held = int(self.quota * self.share), {r.id for fs in self._files.values() for r in fs}
        kept: dict[str, list[FileRow]] = {}
        left: dict[str, list[FileRow]] = {}
        taken: set[int] = set()
        total = 0
        for path, rows in files.items():
            kept[path], left[path] = [], []
            for row in sorted(rows, key=lambda r: (r.id not in held, r.path)):
                if row.id in taken or total + row.size <= limit:
                    if row.id not in taken:
                        taken.add(row.id)
                        total += row.size
                    kept[path].append(row)
                else:
                    left[path].append(row)
        return kept, left

    def _repin(self) -> None:
        wanted = {d for m in self._manifests.values() for d in m.values()}
        for digest in wanted - self._pinned:
            self.cache.pins.hold(digest)
        for digest in self._pinned - wanted:
            self.cache.pins.release(digest)
        self._pinned = wanted

    def _size_of(self, files: dict[str, list[FileRow]]) -> int:
        return sum({r.id: r.size for fs in files.values() for r in fs}.values())

    async def add(self, paths: list[str]) -> list[str]:
        """Pin tree paths (already pinned ones are kept as they are). PinError, naming the path, when one is
        not in the mount or the pins would not fit in SHARE of the quota; then nothing is pinned."""
        tree = self._tree()
        wanted = list(dict.fromkeys(normalise_path(p) for p in paths))
        for path in wanted:
            if find_node(tree, path) is None:
                raise PinError(f"{path or '/'}: no such file or folder in the mount")
        new = [p for p in wanted if p not in self._paths]
        after = resolve(tree, self._paths + new)
        before, total, limit = self._size_of(self._files), self._size_of(after), int(self.quota * self.share)
        if new and total > limit:
            adds = self._size_of({p: after[p] for p in new})
            raise PinError(f"cannot pin {', '.join(p or '/' for p in new)} ({human_size(adds)}): with what is "
                           f"pinned already ({human_size(before)}) pins would hold {human_size(total)}, more than "
                           f"{self.share:.0%} of the cache quota {human_size(self.quota)} ({human_size(limit)})")
        if new:
            await self._thread(self.catalog.add_pins, new)
            self._paths += new
            log.info("pinned %s", ", ".join(p or "/" for p in new))
        await self.refresh(tree)
        return new

    async def remove(self, paths: list[str]) -> list[str]:
        """Unpin tree paths; PinError naming the ones that are not pinned (then nothing is unpinned)."""
        gone = list(dict.fromkeys(normalise_path(p) for p in paths))
        unknown = [p for p in gone if p not in self._paths]
        if unknown:
            raise PinError(f"{', '.join(p or '/' for p in unknown)}: not pinned (pins: "
                           f"{', '.join(p or '/' for p in self._paths) or 'none'})")
        await self._thread(self.catalog.remove_pins, gone)
        self._paths = [p for p in self._paths if p not in gone]
        log.info("unpinned %s", ", ".join(p or "/" for p in gone))
        await self.refresh()
        return gone

    # -- progress ---------------------------------------------------------------------------------
    def _chunk_len(self, row: FileRow, idx: int) -> int:
        return min(self.chunk_size, row.size - idx * self.chunk_size)

    def _missing(self, row: FileRow) -> list[int]:
        """Chunk numbers of `row` not (or no longer) in the cache."""
        manifest = self._manifests.get(row.version, {})
        count = -(-row.size // self.chunk_size)
        return [i for i in range(count) if not ((d := manifest.get(i)) and self.cache.has(d))]

    def _cached_bytes(self, row: FileRow) -> int:
        return row.size - sum(self._chunk_len(row, i) for i in self._missing(row))

    def _blocked(self) -> str:
        """Why the worker cannot load chunks now ('' when it can)."""
        if self.origins is not None and self.origins.offline:
            return "every origin is down (offline)"
        if not self.cache.health.usable:
            return f"the cache is {self.cache.health.state} (passthrough)"
        return ""

    def _pin_state(self, rows: list[FileRow], cached: int, total: int, left_out: bool = False) -> str:
        if left_out:
            return OVER_QUOTA
        if cached >= total:
            return COMPLETE
        if self._worker == "waiting":
            return WAITING
        if self._current is not None and any(r.version == self._current for r in rows):
            return FETCHING
        return QUEUED

    def listing(self) -> list[dict]:
        """What `musicfs pins --json` prints: one object per pin."""
        return [dict(vars(p)) for p in self.statistics().pins]

    def statistics(self) -> PinsStatistics:
        infos = []
        cached_of: dict[int, int] = {}
        sizes: dict[int, int] = {}
        for path in self._paths:
            rows = self._files.get(path, [])
            for r in rows:
                if r.id not in cached_of:
                    cached_of[r.id], sizes[r.id] = self._cached_bytes(r), r.size
            total = sum(r.size for r in rows)
            cached = sum(cached_of[r.id] for r in rows)
            left = self._left_out.get(path, [])
            infos.append(PinInfo(path or "/", sum(r.kind == "track" for r in rows + left),
                                 total + sum(r.size for r in left), cached,
                                 self._pin_state(rows, cached, total, bool(left)), len(left)))
        return PinsStatistics(pins=tuple(infos), files=len(sizes), bytes=sum(sizes.values()),
                              cached_bytes=sum(cached_of.values()), pinned_chunks=len(self._pinned),
                              fetched_chunks=self._fetched, failures=self._failures, worker=self._worker,
                              reason=self._reason, last_error=self._last_error)

    # -- the worker ----------------------------------------------------------------------------------
    def _next_file(self) -> tuple[FileRow, list[int]] | None:
        seen = set()
        for path in self._paths:
            for row in self._files.get(path, []):
                if row.id in seen:
                    continue
                seen.add(row.id)
                missing = self._missing(row)
                if missing:
                    return row, missing
        return None

    async def _idle(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = trio.Event()

    def _release(self) -> None:
        if self._fh is not None:
            self.reader.release(self._fh[1])
            self._fh = None

    async def run(self) -> None:
        """The pin task: load the missing chunks of pinned files, one at a time, until cancelled."""
        try:
            while True:
                work = self._next_file()
                if work is None:
                    self._release()
                    self._worker, self._reason, self._current = "idle", "", None
                    await self._idle(IDLE)
                    continue
                why = self._blocked()
                if why:
                    self._release()
                    if self._reason != why:
                        log.info("pins: waiting: %s", why)
                    self._worker, self._reason = "waiting", why
                    await self._idle(self.retry)
                    continue
                row, missing = work
                self._worker, self._reason, self._current = "fetching", "", row.version
                try:
                    await self._load_file(row, missing)
                except _Settling as exc:  # written moments ago: fetched once it settles, in a moment
                    self._worker, self._reason = "waiting", str(exc)
                    await self._idle(self.retry)
                except (MusicFSError, OriginError, trio.TooSlowError) as exc:
                    self._failures += 1
                    error = f"{row.path}: {exc or type(exc).__name__}"
                    if error != self._last_error:
                        log.warning("pins: cannot load a chunk of %s (%s); trying again in %gs", row.path,
                                    exc or type(exc).__name__, self.retry)
                    self._last_error = error
                    self._release()
                    self._worker, self._reason = "waiting", str(exc) or type(exc).__name__
                    await self._idle(self.retry)
        finally:
            self._release()
            self._worker, self._current = "idle", None

    async def _load_file(self, row: FileRow, missing: list[int]) -> None:
        key = row.version
        if self._fh is None or self._fh[0] != key:
            self._release()
            self._fh = (key, await self.reader.open(row))
        if not self.reader.settled(self._fh[1]):
            raise _Settling(f"{row.path} changed moments ago; it is fetched once that version settles")
        for idx in missing:
            if self._blocked() or self._manifests.get(key) is None:
                return  # offline, the cache bypassed, or the file unpinned / changed meanwhile
            await self._load_chunk(row, idx)

    async def _load_chunk(self, row: FileRow, idx: int) -> None:
        """Read one chunk through the reader (verified, cached, named in the manifest), then CAS-pin it."""
        key = row.version
        await points.hit_async(points.PIN_FETCH)
        data = await self.reader.read(self._fh[1], idx * self.chunk_size, self._chunk_len(row, idx))
        manifest = await self._thread(self.catalog.manifest, row.version)
        digest = manifest.get(idx)
        if digest is None:
            raise _NotKept("the chunk was not recorded in the catalog's manifest")
        if not self.cache.has(digest):
            # served from the reader's memory (verified) after the cache dropped it: store it again
            if await self.cache.store(data, f"a pinned chunk of {row.path}") != digest:
                raise _NotKept("the cache did not keep the chunk")
        if key in self._manifests:  # still pinned (an unpin or a rescan may have come meanwhile)
            self._manifests[key] = manifest
            for d in manifest.values():
                if d not in self._pinned:
                    self._pinned.add(d)
                    self.cache.pins.hold(d)
        self._fetched += 1

    # -- the control socket's requests (musicfs.daemon.control) ----------------------------------------------------
    async def handle(self, request: dict) -> dict:
        """Answer a `pin`, `unpin` or `pins` request: {"ok": true, "pins": [...]} or {"ok": false, "error"}."""
        op = request.get("op")
        try:
            if op in ("pin", "unpin"):
                paths = request.get("paths")
                if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
                    raise PinError(f"{op}: 'paths' must be a non-empty list of paths inside the mount")
                changed = await (self.add(paths) if op == "pin" else self.remove(paths))
                return {"ok": True, "changed": [p or "/" for p in changed], "pins": self.listing()}
            if op == "pins":
                return {"ok": True, "pins": self.listing()}
            raise PinError(f"unknown request {op!r}")
        except PinError as exc:
            return {"ok": False, "error": str(exc)}
        except (MusicFSError, trio.TooSlowError) as exc:  # a catalog that failed or was locked too long
            return {"ok": False, "error": f"{op}: {exc or 'the catalog did not answer in time'}"}
