"""Scanner: walk the origin, re-read tags only of new or changed files, commit in checkpointed batches."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..origins import SETTLE_MARGIN, FileStat, Origin, OriginRegistry, settled
from ..shared import MusicFSError, OriginError, OriginTransient, Progress, points
from . import tags
from .catalog import Catalog, FileRow
from .published import is_reserved

log = logging.getLogger(__name__)

# What read_file_row makes of tags (tags.catalog_fields). A catalog scanned by an older rule set has every
# file's tags read again by the next scan, so what it already holds is normalised like new files. 3: M4A
# compilations by `cpil`, WAV and AIFF tags by their ID3 frames.
TAGS_VERSION = "3"

# Far below any real codec (even FLAC of pure silence needs ~200 B/s): less means a truncated file.
MIN_BYTES_PER_SECOND = 100


class ScanCancelled(MusicFSError):
    """The scan was asked to stop; committed batches stay."""


@dataclass
class ScanResult:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0  # listed audio that could not be read (or named)
    not_audio: int = 0  # listed files that are neither audio nor a cover image: never read
    hidden: int = 0  # listed files under a dot name (or AppleDouble `._*`), unless include_hidden
    seconds: float = 0.0

    @property
    def touched(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        ignored = "".join(f", {n} {what}" for n, what in ((self.not_audio, "not audio"), (self.hidden, "hidden"))
                          if n)
        return (f"{self.added} added, {self.changed} changed, {self.removed} removed, "
                f"{self.unchanged} unchanged, {self.skipped} unreadable{ignored} in {self.seconds:.1f}s")


# What the scan keeps of the ranges it fetched to read one file's tags (see `Scanner.on_fetched`).
KEEP_FETCHED = 1 << 20


def read_file_row(origin: Origin, registry: OriginRegistry, st: FileStat, kind: str,
                  fetched: list[tuple[int, bytes]] | None = None) -> FileRow | None:
    """Catalog row for one file; tags via lazy ranged reads. None when the file changed mid-read.
    `fetched`: given, it gets the (offset, bytes) of every range read (the first KEEP_FETCHED bytes of them)."""
    base = FileRow(path=st.path, kind=kind, size=st.size, mtime_ns=st.mtime_ns, etag=st.etag)
    if kind == "cover":
        return base
    # Every read passes the listing's identity as `expect`: a file changed since (or during) the scan's
    # reads raises OriginFileChanged and is not recorded, never with tags of two versions.
    def fetch(off: int, n: int) -> bytes:
        return registry.counted(origin, registry.call(origin, lambda o: o.read(st.path, off, n, st)))

    def fetch_ranges(ranges: list[tuple[int, int]]) -> list[bytes]:
        return registry.counted(origin, registry.call(origin, lambda o: o.read_ranges(st.path, ranges, st)))

    if fetched is not None:
        fetch, fetch_ranges = _recording(fetch, fetched), _recording_ranges(fetch_ranges, fetched)
    try:
        fileobj = tags.RangeFile(fetch, st.size, name=os.path.basename(st.path))
        fileobj.preload(fetch_ranges)  # one request: the head (and the tail when the format needs it)
        found = tags.parse(fileobj)
        why = "not a recognised audio file"
    except OriginError as exc:
        log.warning("scan: cannot read %s: %s", st.path, exc)
        return None
    except Exception as exc:  # mutagen raises many types on malformed files
        found, why = None, f"{type(exc).__name__}: {exc}"
    if found is not None and found.duration and st.size < found.duration * MIN_BYTES_PER_SECOND:
        found, why = None, f"truncated: {st.size} bytes for {found.duration:.0f}s of audio"
    if found is None:
        log.info("scan: skipping %s: %s", st.path, why)
        return FileRow(**{**base.__dict__, "kind": "junk"})
    return FileRow(**{**base.__dict__, **tags.catalog_fields(found)})


def _recording(fetch: Callable[[int, int], bytes], fetched: list[tuple[int, bytes]]) -> Callable[[int, int], bytes]:
    """`fetch`, appending what it returns (with its offset) to `fetched`, up to KEEP_FETCHED bytes."""
    def recorded(off: int, n: int) -> bytes:
        data = fetch(off, n)
        if sum(len(d) for _, d in fetched) + len(data) <= KEEP_FETCHED:
            fetched.append((off, data))
        return data

    return recorded


def _recording_ranges(fetch_ranges: Callable[[list[tuple[int, int]]], list[bytes]],
                      fetched: list[tuple[int, bytes]]) -> Callable[[list[tuple[int, int]]], list[bytes]]:
    """`fetch_ranges`, appending each range it returns (with its offset) to `fetched`, up to KEEP_FETCHED bytes."""
    def recorded(ranges: list[tuple[int, int]]) -> list[bytes]:
        datas = fetch_ranges(ranges)
        for (off, _), data in zip(ranges, datas):
            if sum(len(d) for _, d in fetched) + len(data) <= KEEP_FETCHED:
                fetched.append((off, data))
        return datas

    return recorded


def is_hidden(path: str, include_hidden: bool = False) -> bool:
    """Skipped at scan: AppleDouble files (`._*`, macOS metadata, never audio) and MusicFS's own folder at the
    origin (`.musicfs/`, published catalogs) always, and anything inside a folder or named with a leading dot
    unless include_hidden."""
    parts = path.split("/")
    if parts[-1].startswith("._") or is_reserved(path):
        return True
    return not include_hidden and any(part.startswith(".") for part in parts)


def _utf8_name(path: str) -> bool:
    """False for names with undecodable bytes (surrogate escapes from a non-UTF-8 file system)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Scanner:
    def __init__(self, catalog: Catalog, registry: OriginRegistry, *, batch: int = 200, workers: int | None = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False, include_hidden: bool = False,
                 on_fetched: Callable[[list[tuple[FileRow, list[tuple[int, bytes]]]]], None] | None = None,
                 settle: bool = False):
        """`on_fetched`: after each batch commits, called (in the scan's thread) with each committed row and the
        (offset, bytes) ranges read for its tags (the library keeps them as blocks, blocks.py). `settle`: return
        only once the versions listed are settled (a mount's first scan: the mount then caches what it reads)."""
        self.catalog, self.registry, self.batch, self.workers = catalog, registry, batch, workers
        self.on_progress, self.on_fetched, self.should_stop = on_progress, on_fetched, should_stop
        self.include_hidden, self.settle = include_hidden, settle

    def scan(self) -> ScanResult:
        """One full pass. Blocking: run it in a worker thread."""
        started = time.monotonic()
        # mutagen's format modules are imported while the listing waits on the network, not by the first parse of
        # every reading thread at once (they would queue on the import lock)
        parsers = threading.Thread(target=tags.load_parsers, name="scan-parsers", daemon=True)
        parsers.start()
        try:
            origin, listing, not_audio, hidden = self._list()
        finally:
            parsers.join()
        listing.sort(key=lambda st: st.path)
        walked = self.registry.wall_clock()  # every listed version existed by now (racy versions: its `seen`)
        # Origins escape names that are not UTF-8 (origins/base.py escape_name); one that does not
        # cannot have them stored (SQLite TEXT refuses lone surrogates): skipped with one line each.
        unnamed = [st for st in listing if not _utf8_name(st.path)]
        listing = [st for st in listing if _utf8_name(st.path)]
        known = self.catalog.identities()
        current = not known or self.catalog.scan_state().get("tags_version") == TAGS_VERSION
        if not known:  # a first scan reads every file anyway; one cut short resumes from its batches
            self.catalog.set_scan_state(tags_version=TAGS_VERSION)
        if not current:
            log.info("scan: the catalog's tags were read by an older version: reading every file's tags again")
        todo = [st for st in listing if not current or known.get(st.path) != st.identity]
        result = ScanResult(unchanged=len(listing) - len(todo), skipped=len(unnamed), not_audio=not_audio,
                            hidden=hidden)
        for st in unnamed:
            log.warning("scan: skipping %r: its name is not valid UTF-8", st.path)
        self.catalog.set_scan_state(in_progress="1", total=str(len(todo)))
        self._read_and_commit(origin, todo, known, result, walked)
        if self.settle:
            self._wait_until_settled(origin, todo, walked)  # what is left of it: the reads went on meanwhile
        result.removed = self._remove_gone(origin, known, listing)
        points.hit(points.SCAN_CHECKPOINT)
        self.catalog.set_scan_state(in_progress="0", last_path="", completed_at=str(time.time()), rekeying="0",
                                    tags_version=TAGS_VERSION)  # only now: a re-read cut short starts over
        if self.registry.identity_origin is not origin:
            self.registry.adopt_identities(origin)  # committed: the catalog holds this origin's identities
        result.seconds = time.monotonic() - started
        return result

    def _list(self) -> tuple[Origin, list[FileStat], int, int]:
        """The origin to scan and its audio files (unsorted), with the counts of files that are not audio and of
        hidden ones."""
        origin = self._pick_origin()
        listing, not_audio, hidden = [], 0, 0
        for st in origin.walk():
            if is_hidden(st.path, self.include_hidden):
                hidden += 1
            elif not tags.classify(st.path):
                not_audio += 1
            else:
                listing.append(st)
        return origin, listing, not_audio, hidden

    def _wait_until_settled(self, origin: Origin, todo: list[FileStat], walked: float) -> None:
        """Before the scan returns: wait what is left of a timestamp resolution and the margin since the listing
        (SFTP: 1.25 s), until the versions it read are no longer racy (origins/base.py, settled), unless the
        origin's own clock says they are already. The tag reads do not wait for it (only the blocks they read
        of versions settled by then are kept); the mount that follows a first scan reads settled versions, so it
        caches what it reads. A wait, not a poll: nothing but time settles a version."""
        now = self.registry.wall_clock()
        racy = [st for st in todo if not settled(origin, st.identity, walked, now)]
        if not racy:
            return
        until = time.monotonic() + max(0.0, walked + SETTLE_MARGIN - now
                                       + max(origin.timestamp_resolution(st.identity) for st in racy))
        while not self.should_stop() and time.monotonic() < until:
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))

    def _read_and_commit(self, origin: Origin, todo: list[FileStat], known: dict, result: ScanResult,
                         walked: float) -> None:
        """Read the tags of `todo` in parallel (as many files as the origin needs to hide its round trip,
        origin.scan_parallelism) and commit them in checkpointed batches, in order. The next batch's files are
        read while one batch waits for its last files and commits: no barrier between batches. `walked`: when
        the listing had seen every version (the catalog's `seen` of each, and the racy rule of its reads)."""
        progress = Progress("scanning", len(todo), on_update=self.on_progress)
        workers = self.workers or max(1, getattr(origin, "scan_parallelism", 4))
        batches = [todo[i : i + self.batch] for i in range(0, len(todo), self.batch)]
        def read(st: FileStat) -> tuple[FileRow | None, list | None]:
            if self.on_fetched is None:
                return read_file_row(origin, self.registry, st, tags.classify(st.path)), None
            started = self.registry.wall_clock()
            fetched: list[tuple[int, bytes]] = []  # what was read for its tags, kept as blocks after the commit
            row = read_file_row(origin, self.registry, st, tags.classify(st.path), fetched=fetched)
            # bytes of a racy version (origins/base.py, settled) are never kept
            keep = row is not None and self.registry.settled(row.identity, seen=walked, started=started)
            return row, (fetched if keep else None)

        with ThreadPoolExecutor(workers, thread_name_prefix="scan") as pool:
            current: list = []
            ahead: list = []
            try:
                ahead = [pool.submit(read, st) for st in batches[0]] if batches else []
                for n, batch in enumerate(batches):
                    if self.should_stop():
                        raise ScanCancelled(f"scan stopped after {n * self.batch} of {len(todo)} files; "
                                            "the next one resumes")
                    current = ahead
                    ahead = [pool.submit(read, st) for st in batches[n + 1]] if n + 1 < len(batches) else []
                    self._commit(batch, [f.result() for f in current], known, result, walked)
                    progress.advance(len(batch))
            finally:
                for f in current + ahead:
                    f.cancel()  # stopped or failed: files not started yet are not read
        progress.finish()

    def _remove_gone(self, origin: Origin, known: dict, listing: list[FileStat]) -> int:
        """Drop the catalog's files the listing no longer has; how many."""
        gone = sorted(set(known) - {st.path for st in listing})
        if gone and not listing:
            # An empty listing of a known library is far likelier an unmounted NAS than a wiped one.
            log.warning("scan: %s lists no files at all; keeping the %d known ones", origin.name, len(gone))
            gone = []
        if gone:
            self.catalog.delete_paths(gone)
        return len(gone)

    def _pick_origin(self) -> Origin:
        """The origin to walk: the one that scanned this library before, when it is still a source.

        Replicas are not byte-identical in size/mtime/etag, and a scan of another one would
        re-key (and so drop) every cached file: while that origin is down, rescans wait (reads go on,
        checking replicas by size and their own stat). A scan of another origin (none scanned before,
        or that one is no longer a source) re-keys the catalog: until it commits, no one origin's
        identities are sure, and reads check every origin as a replica.
        """
        before = self.catalog.scan_state().get("origin")
        named = {o.name: o for o in self.registry.origins}
        if before in named:  # that origin, whatever the others' priority: a replica that scanned first stays
            try:
                origin = self.registry.check(named[before])
            except OriginError as exc:
                raise OriginTransient(f"{before} scanned this library and is unavailable ({exc}); rescans wait "
                                      f"for it", origin=before) from exc
        else:
            origin = self.registry.first_healthy()
        if origin is not self.registry.identity_origin:
            self.registry.adopt_identities(None)
            self.catalog.set_scan_state(origin=origin.name, rekeying="1")
        else:
            self.catalog.set_scan_state(origin=origin.name)
        return origin

    def _commit(self, batch: list[FileStat], pairs: list[tuple[FileRow | None, list | None]], known: dict,
                result: ScanResult, walked: float) -> None:
        """Commit one batch's rows with its checkpoint; then hand what was read for their tags to on_fetched."""
        rows = [row for row, _ in pairs]
        good = [r for r in rows if r is not None]
        for row in good:
            if row.path in known:
                result.changed += 1  # even when it turned unreadable: the tree must drop it
            elif row.kind != "junk":
                result.added += 1
            if row.kind == "junk":
                result.skipped += 1
        self.catalog.upsert_files(good, checkpoint={"last_path": batch[-1].path}, seen=walked)
        if self.on_fetched is not None:
            self._keep_fetched([(r, f) for r, f in pairs if r is not None and r.kind == "track" and f])
        points.hit(points.DELTA_SYNC_AFTER_BATCH)

    def _keep_fetched(self, pairs: list[tuple[FileRow, list[tuple[int, bytes]]]]) -> None:
        """Hand the committed files' fetched ranges to `on_fetched`; keeping them is best effort, never the scan's
        failure."""
        if not pairs:
            return
        try:
            self.on_fetched(pairs)
        except Exception as exc:
            log.warning("scan: could not keep the ranges read for tags (%s); later reads fetch them again", exc)


def restore_identities(catalog: Catalog, registry: OriginRegistry) -> None:
    """At start: tell the registry whose identities the catalog holds (the origin whose scan committed).

    None while a scan of another origin was interrupted, or when that origin is no longer a source.
    """
    state = catalog.scan_state()
    if state.get("rekeying") == "1":
        registry.adopt_identities(None)
    elif state.get("origin"):
        registry.adopt_identities(registry.origin_named(state["origin"]))
