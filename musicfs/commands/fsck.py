"""`musicfs fsck [--repair]`: verify one library's cache, manifests, catalog and search index (row 6.2).

What is checked (without --repair nothing is written; SQLite files are opened read-only):
- catalog: SQLite integrity_check; manifest rows of files the catalog no longer has, rows keyed by an
  old identity, rows whose chunk number lies past the end of the file, rows whose cached chunk has the
  wrong size for its place in the file (with the chunk size the manifests were cut with); block rows
  (blocks.py: small verified ranges, CAS objects like chunks) of files gone or of an old version, past the
  end of their file, or whose cached object has another length;
- cache: the index's integrity_check; every chunk file hashed against its name; chunk files without an
  index row, rows without a file, rows with the wrong size, files that are not chunks, temp leftovers;
- search index: meta.json and every segment file's checksum, tantivy opens and reads it, and its
  documents are exactly the catalog's tracks (the same tree paths).
--repair fixes what it can — damaged files are moved aside with a timestamp (never deleted), the cache
index is rebuilt from the chunk files, bad chunks are quarantined, orphans verified and adopted, bad
manifest rows dropped, the search index rebuilt from the catalog; a damaged catalog is moved aside and
rebuilt by rescanning the origins at the next mount — then checks everything again and lists what is
still wrong. Exit status, as e2fsck: 0 clean, 1 problems found and all repaired, 4 problems left,
8 fsck could not run (no library, or --repair while the daemon uses it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

from ..cache import (
    CasStore,
    index_file,
    indexed_chunks,
    quarantine_stray,
    quarantine_usage,
    temp_leftovers,
)
from ..library import (
    CATALOG_NAME,
    FIRST_INO,
    Catalog,
    SearchIndex,
    build_tree,
    check_files,
    open_checked,
)
from ..shared import (
    CasIndexError,
    CatalogCorrupt,
    CatalogError,
    LibraryNotFound,
    MusicFSError,
    Progress,
    RunMarker,
    SearchIndexError,
    cache_dir_of,
    find_library,
    human_size,
)

EXIT_CLEAN, EXIT_REPAIRED, EXIT_LEFT, EXIT_ERROR = 0, 1, 4, 8
NO_QUOTA = 1 << 62


class FsckError(MusicFSError):
    """fsck cannot run (exit 8)."""


@dataclass
class Problem:
    area: str  # catalog | cache | index
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.area}: {self.detail}"


@dataclass
class Report:
    state_dir: str
    cache_dir: str
    problems: list[Problem] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    # what a repair needs to know
    catalog_damaged: bool = False
    cache_index_damaged: bool = False
    corrupt_chunks: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)  # paths under chunks/ that are not chunk files
    bad_manifest_rows: list[tuple] = field(default_factory=list)
    bad_block_rows: list[tuple] = field(default_factory=list)  # (file_id, ident, offset, ...)
    index_damaged: str = ""
    index_stale: bool = False

    def add(self, area: str, kind: str, detail: str) -> None:
        self.problems.append(Problem(area, kind, detail))

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}


# -- where the library lives ---------------------------------------------------------------------------
def resolve_dirs(state_dir: str | None, cache_dir: str | None) -> tuple[str, str]:
    """The state dir (default: the only library under $XDG_STATE_HOME/musicfs) and its cache dir (default:
    what the daemon recorded in daemon.json, else $XDG_CACHE_HOME/musicfs/<library id>)."""
    if not state_dir:
        try:
            state_dir = find_library()
        except LibraryNotFound as exc:
            raise FsckError(f"--state-dir: {exc}") from exc
    state_dir = os.path.abspath(state_dir)
    if not os.path.isdir(state_dir):
        raise FsckError(f"--state-dir: {state_dir} is not a folder")
    cache_dir = cache_dir or cache_dir_of(state_dir)
    return state_dir, os.path.abspath(cache_dir)


# -- checking -----------------------------------------------------------------------------------------------
class Fsck:
    def __init__(self, state_dir: str, cache_dir: str):
        self.state_dir = state_dir
        self.cache_dir = cache_dir

    @property
    def catalog_path(self) -> str:
        return os.path.join(self.state_dir, CATALOG_NAME)

    @property
    def index_path(self) -> str:
        return os.path.join(self.state_dir, "index")

    def check(self) -> Report:
        report = Report(self.state_dir, self.cache_dir)
        catalog = self._check_catalog(report)
        try:
            chunk_sizes = self._check_cache(report)
            if catalog is not None:
                self._check_manifests(report, catalog, chunk_sizes)
            self._check_index(report, catalog)
        finally:
            if catalog is not None:
                catalog.close()
        return report

    def _check_catalog(self, report: Report) -> Catalog | None:
        path = self.catalog_path
        if not os.path.exists(path):
            report.notes["catalog"] = "none yet (never scanned)"
            return None
        try:
            catalog = Catalog(path, readonly=True)
            problems = catalog.quick_check(full=True)
        except CatalogCorrupt as exc:
            problems, catalog = [str(exc)], None
        except CatalogError as exc:
            raise FsckError(f"cannot check the catalog: {exc}") from exc
        if problems:
            if catalog is not None:
                catalog.close()
            report.catalog_damaged = True
            report.add("catalog", "catalog-damaged", f"{path} is damaged: " + "; ".join(problems[:3]))
            return None
        try:
            files = catalog.count("track")
            rows = catalog.manifest_rows_with_sizes()
            orphans = catalog.orphan_manifest_rows()
            stale = catalog.stale_manifest_rows()
            blocks = catalog.block_rows_with_sizes()
            bad_blocks = catalog.bad_block_rows()
        except CatalogError as exc:
            catalog.close()
            report.catalog_damaged = True
            report.add("catalog", "catalog-damaged", f"{path} cannot be read: {exc}")
            return None
        report.notes["catalog"] = (f"{files} tracks, {len(rows)} manifest rows, {len(blocks)} block rows; "
                                   f"integrity_check ok")
        if bad_blocks:
            report.bad_block_rows += bad_blocks
            report.add("catalog", "block-stale", f"{len(bad_blocks)} block rows belong to files the catalog no longer "
                                                 f"has or to an old version of their file")
        if orphans:
            report.bad_manifest_rows += orphans
            report.add("catalog", "manifest-orphan", f"{len(orphans)} manifest rows belong to files the catalog "
                                                     f"no longer has")
        if stale:
            report.bad_manifest_rows += stale
            report.add("catalog", "manifest-stale", f"{len(stale)} manifest rows describe an old version of their file")
        return catalog

    def _check_cache(self, report: Report) -> dict[str, int]:
        """Verify every chunk file; returns hash -> size of the good ones."""
        root = self.cache_dir
        if not os.path.isdir(root):
            report.notes["cache"] = "none yet"
            return {}
        index = index_file(root)
        rows = self._read_cache_index(report, root)
        good = self._verify_chunk_files(report)
        if not os.path.exists(index) and good:
            report.cache_index_damaged = True
            report.add("cache", "cache-index-missing", f"{index} is missing ({len(good)} chunk files on disk)")
        for digest in report.corrupt_chunks:
            report.add("cache", "chunk-corrupt", f"chunk {digest[:16]}… fails verification (its bytes do not "
                                                 f"match its name)")
        for path in report.strays:
            report.add("cache", "chunk-stray", f"{path} is not a chunk file (bad name or folder)")
        if not report.cache_index_damaged:
            _compare_index_with_files(report, rows, good)
        leftovers = temp_leftovers(root)
        if leftovers:
            report.add("cache", "temp-leftover", f"{len(leftovers)} half-written temp files in "
                                                 f"{os.path.dirname(leftovers[0])}")
        report.notes["cache"] = _cache_note(root, good)
        return good

    def _read_cache_index(self, report: Report, root: str) -> dict[str, int]:
        """hash -> size as the cache index records it; {} (and a problem) when the index is damaged."""
        try:
            rows, problems = indexed_chunks(root)
        except CasIndexError as exc:
            raise FsckError(str(exc)) from exc
        if problems:
            report.cache_index_damaged = True
            report.add("cache", "cache-index-damaged", f"{index_file(root)} is damaged: " + "; ".join(problems[:3]))
        return rows

    def _verify_chunk_files(self, report: Report) -> dict[str, int]:
        """Hash every chunk file against its name (read-only, through the cache's own walk): hash -> size of
        the good ones; the rest go to the report's corrupt_chunks and strays. Progress goes to stderr."""
        good: dict[str, int] = {}
        checks = CasStore.verify_chunks(self.cache_dir)
        report.strays.extend(checks.strays)
        progress = Progress("verifying chunks", len(checks))
        for check in checks:
            if check.ok:
                good[check.digest] = check.size
            else:
                report.corrupt_chunks.append(check.digest)
            progress.advance()
        progress.finish()
        return good

    def _check_manifests(self, report: Report, catalog: Catalog, chunk_sizes: dict[str, int]) -> None:
        self._check_blocks(report, catalog, chunk_sizes)
        chunk_size = catalog.meta("chunk_size")
        if chunk_size is None:
            return
        cs = int(chunk_size)
        past, wrong = [], []
        for file_id, ident, chunk, digest, size in catalog.manifest_rows_with_sizes():
            start = chunk * cs
            if chunk < 0 or (start >= size and not (size == 0 and chunk == 0)):
                past.append((file_id, ident, chunk, digest))
            elif digest in chunk_sizes and chunk_sizes[digest] != min(cs, size - start):
                wrong.append((file_id, ident, chunk, digest))
        if past:
            report.bad_manifest_rows += past
            report.add("catalog", "manifest-past-end", f"{len(past)} manifest rows name chunks past the end of their file")
        if wrong:
            report.bad_manifest_rows += wrong
            report.add("catalog", "manifest-wrong-chunk", f"{len(wrong)} manifest rows point at a cached chunk of the "
                                                          f"wrong size for its place in the file")

    def _check_blocks(self, report: Report, catalog: Catalog, object_sizes: dict[str, int]) -> None:
        """Block rows past the end of their file, or whose cached object (verified with the chunks) has
        another length than the row says."""
        bad = [(file_id, ident, offset, length, digest)
               for file_id, ident, offset, length, digest, size in catalog.block_rows_with_sizes()
               if offset < 0 or length <= 0 or offset + length > size
               or (digest in object_sizes and object_sizes[digest] != length)]
        if bad:
            report.bad_block_rows += bad
            report.add("catalog", "block-wrong", f"{len(bad)} block rows lie past the end of their file or point at "
                                                 f"a cached object of the wrong size")

    def _check_index(self, report: Report, catalog: Catalog | None) -> None:
        path = self.index_path
        expected = None
        if catalog is not None:
            tree = build_tree(catalog.files(), catalog.inode_map(), _scratch_inodes(catalog))
            expected = {tree.path(n.ino) for n in tree.walk_files() if n.file and n.file.kind == "track"}
        if not os.path.exists(path):
            if expected:
                report.index_damaged = "missing"
                report.add("index", "index-missing", f"{path} is missing ({len(expected)} tracks to index)")
            else:
                report.notes["index"] = "none yet"
            return
        problems = check_files(path)
        if not problems:
            try:
                index = SearchIndex(path, create=False)
                count = index.probe()
                paths = index.paths()
            except SearchIndexError as exc:
                problems = [str(exc)]
        if problems:
            report.index_damaged = "; ".join(problems[:3])
            report.add("index", "index-damaged", f"{path} is damaged: {report.index_damaged}")
            return
        note = f"{count} documents, every segment checksum ok"
        if index.outdated:
            report.index_stale = True
            report.add("index", "index-outdated", f"{path} was built by an older musicfs (schema {index.version}): "
                                                  f"its words are not analysed as searches now are")
        if expected is not None:
            have = set(paths)
            missing, extra = expected - have, have - expected
            if missing or extra or len(paths) != len(have):
                report.index_stale = True
                report.add("index", "index-stale", f"the index disagrees with the catalog: {len(missing)} tracks "
                                                   f"missing, {len(extra)} documents of tracks it does not have, "
                                                   f"{len(paths) - len(have)} duplicates")
            else:
                note += ", matches the catalog"
        report.notes["index"] = note

    # -- repairing --------------------------------------------------------------------------------------
    def repair(self, report: Report) -> list[str]:
        """Fix what `report` found; returns what was done, in words."""
        done: list[str] = []
        kinds = report.kinds()
        if report.catalog_damaged:
            catalog, damage = open_checked(self.state_dir, full=True)
            if damage:
                done.append("catalog: the damaged catalog was moved aside (see the state folder); the next mount "
                            "rebuilds it by rescanning the origins")
        else:
            catalog = Catalog(self.catalog_path) if os.path.exists(self.catalog_path) else None
        try:
            if kinds & {"cache-index-damaged", "cache-index-missing", "chunk-corrupt", "chunk-stray", "chunk-unindexed",
                        "index-dangling", "index-wrong-size", "temp-leftover"}:
                done += self._repair_cache(report)
            if catalog is not None and report.bad_manifest_rows and not report.catalog_damaged:
                rows = list(dict.fromkeys(tuple(r[:4]) for r in report.bad_manifest_rows))
                catalog.delete_manifest_rows(rows)
                done.append(f"catalog: dropped {len(rows)} bad manifest rows (those chunks are fetched again)")
            if catalog is not None and report.bad_block_rows and not report.catalog_damaged:
                rows = list(dict.fromkeys(tuple(r[:3]) for r in report.bad_block_rows))
                catalog.delete_block_rows(rows)
                done.append(f"catalog: dropped {len(rows)} bad block rows (those ranges are fetched again)")
            if report.index_damaged or report.index_stale or report.catalog_damaged:
                done += self._repair_index(report, catalog)
        finally:
            if catalog is not None:
                catalog.close()
        return done

    def _repair_cache(self, report: Report) -> list[str]:
        done = []
        for path in report.strays:
            dest = quarantine_stray(self.cache_dir, path)
            done.append(f"cache: moved {path} (not a chunk file) to {dest}")
        # opening with full checks moves a damaged index aside and rebuilds it from the (verified) chunk
        # files, adopts verified orphans, drops rows without a file, fixes sizes, removes temp leftovers
        store = CasStore(self.cache_dir, NO_QUOTA, full_check=True)
        try:
            if not store.available:
                return done + [f"cache: could not open {self.cache_dir}: {store.open_error}"]
            if store.last_rebuild is not None:
                done.append(f"cache: index moved aside and rebuilt: {store.last_rebuild.summary()}")
            for digest in report.corrupt_chunks:
                if os.path.exists(store.chunk_path(digest)):
                    store.quarantine(digest)
                if not os.path.exists(store.chunk_path(digest)):
                    done.append(f"cache: chunk {digest[:16]}… failed verification; moved to quarantine "
                                f"(fetched again from the origin when next read)")
            if {"chunk-unindexed", "index-dangling", "index-wrong-size"} & report.kinds():
                done.append("cache: index reconciled with the chunk files (orphans verified and adopted, rows "
                            "without a file dropped)")
            if "temp-leftover" in report.kinds():
                done.append("cache: half-written temp files removed")
        finally:
            store.close()
        return done

    def _repair_index(self, report: Report, catalog: Catalog | None) -> list[str]:
        path = self.index_path
        if report.index_damaged and os.path.exists(path):
            index = SearchIndex.recreate(path, report.index_damaged)
            what = "moved aside and rebuilt from the catalog"
        else:
            index = SearchIndex(path)
            what = "rebuilt from the catalog"
        from ..library import index_docs

        files = catalog.files() if catalog is not None else []
        tree = build_tree(files, catalog.inode_map() if catalog else {},
                          (lambda keys: catalog.add_inodes(keys, FIRST_INO)) if catalog else _scratch_inodes(None))
        n = index.rebuild(index_docs(tree))
        return [f"index: {what} ({n} documents)"]


def _compare_index_with_files(report: Report, rows: dict[str, int], good: dict[str, int]) -> None:
    """A sound cache index against the chunk files: rows missing, rows without a file, wrong sizes."""
    on_disk = set(good) | set(report.corrupt_chunks)
    unindexed = sorted(set(good) - rows.keys())
    dangling = sorted(rows.keys() - on_disk)
    wrong = sorted(d for d in good.keys() & rows.keys() if rows[d] != good[d])
    if unindexed:
        report.add("cache", "chunk-unindexed", f"{len(unindexed)} good chunk files are not in the index")
    if dangling:
        report.add("cache", "index-dangling", f"{len(dangling)} index rows have no chunk file")
    if wrong:
        report.add("cache", "index-wrong-size", f"{len(wrong)} index rows record the wrong size")


def _cache_note(root: str, good: dict[str, int]) -> str:
    """The cache line of the report: what was verified, and what quarantine keeps."""
    kept, files = quarantine_usage(root)
    note = f"{len(good)} chunks ({human_size(sum(good.values()))}), every one verified against its hash"
    if files:
        note += f"; quarantine keeps {files} damaged files ({human_size(kept)}) for inspection"
    return note


def _scratch_inodes(catalog: Catalog | None):
    """An inode allocator that writes nothing (tree paths do not depend on the numbers)."""
    top = [max(catalog.inode_map().values(), default=FIRST_INO) + 1 if catalog is not None else FIRST_INO]

    def assign(keys: list[str]) -> dict[str, int]:
        out = {}
        for key in keys:
            out[key] = top[0]
            top[0] += 1
        return out

    return assign


# -- the command ----------------------------------------------------------------------------------------------
def run_fsck(state_dir: str | None, cache_dir: str | None, repair: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        state_dir, cache_dir = resolve_dirs(state_dir, cache_dir)
        owner = RunMarker(state_dir).live_owner()
        if owner is not None and repair:
            raise FsckError(f"the daemon (pid {owner}) is using this library: stop it before `musicfs fsck --repair`")
        fsck = Fsck(state_dir, cache_dir)
        print(f"musicfs fsck: state {state_dir}, cache {cache_dir}", file=out)
        if owner is not None:
            print(f"note: the daemon (pid {owner}) is running; chunks it is writing right now may show as problems",
                  file=out)
        report = fsck.check()
    except FsckError as exc:
        print(f"musicfs fsck: {exc}", file=out)
        return EXIT_ERROR
    for area in ("catalog", "cache", "index"):
        if area in report.notes:
            print(f"{area + ':':9}{report.notes[area]}", file=out)
    for problem in report.problems:
        print(f"PROBLEM  {problem}", file=out)
    if not report.problems:
        print("clean", file=out)
        return EXIT_CLEAN
    if not repair:
        print(f"{len(report.problems)} problems; `musicfs fsck --repair` fixes what it can", file=out)
        return EXIT_LEFT
    for line in fsck.repair(report):
        print(f"REPAIRED {line}", file=out)
    after = fsck.check()
    for problem in after.problems:
        print(f"LEFT     {problem} (could not repair)", file=out)
    if after.problems:
        print(f"{len(report.problems)} problems found; {len(after.problems)} could not be repaired", file=out)
        return EXIT_LEFT
    print(f"{len(report.problems)} problems found, all repaired", file=out)
    return EXIT_REPAIRED
