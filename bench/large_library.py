#!/usr/bin/env python3
"""Large-library benchmark (row 5.5): 100k tracks, listing and lookup through MusicFS, rclone and
the source folder itself, in one run on one file set.

    .venv/bin/python bench/large_library.py [--tracks 100000] [--ready-runs 3] [--cache-chunks 100000]
                                            [--out docs/benchmarks.md]

Time to READY: from starting `python -m musicfs mount` to READY=1 on a notify socket the benchmark owns
(the real daemon: imports, library checks, tree, mount, a real listing), the median of --ready-runs starts
after one start that may build the tree snapshot; once with an empty cache and once with --cache-chunks
chunks cached and in their files' manifests (start-up must stay flat in cache size).

The source holds tiny stand-in files (the figures are about metadata, not bytes); MusicFS gets a
catalog of their real sizes and mtimes, as a finished first scan would leave it, so its start-up
is the everyday one: mount from the catalog, rescan in the background. The results replace the
section between the large-library markers in the report; bench/run_bench.py keeps that section.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from benchlib import ratio, write_section  # noqa: E402

from musicfs_test_utils.daemon import MusicfsDaemon  # noqa: E402
from musicfs_test_utils.large import large_config, seed_library, synthetic_rows  # noqa: E402

START, END = "<!-- large-library:start -->", "<!-- large-library:end -->"


def wait_mounted(path: str, proc: subprocess.Popen, deadline: float = 300.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        if os.path.ismount(path):
            try:
                os.listdir(path)
                return time.perf_counter() - started
            except OSError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"{path} not mounted within {deadline}s")


def timed(fn, runs: int = 3) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def measure(root: str, paths: list[str]) -> dict:
    ls = lambda: subprocess.run(["ls", "-lR", root], stdout=subprocess.DEVNULL, check=True)  # noqa: E731
    first_ls = timed(ls, 1)
    return {
        "ls_first": first_ls,
        "ls_median": timed(ls),
        "listdir_root": timed(lambda: os.listdir(root)),
        "stat_1000": timed(lambda: [os.stat(os.path.join(root, p)) for p in paths]),
    }


def run_mount(argv: list[str], mnt: str, paths: list[str]) -> dict:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = wait_mounted(mnt, proc)
        figures = measure(mnt, paths)
        figures["mount"] = ready
        figures["rss_mib"] = psutil.Process(proc.pid).memory_info().rss / 2**20
        return figures
    finally:
        subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def time_to_ready(source: Path, workdir: Path, runs: int) -> list[float]:
    """Seconds from process start to READY=1, one warm-up start first (it may save the tree snapshot)."""
    mnt = workdir / "mnt-ready"
    mnt.mkdir(exist_ok=True)
    samples = []
    for i in range(runs + 1):
        daemon = MusicfsDaemon([source], mnt, workdir)
        started = time.monotonic()
        daemon.start()
        try:
            ready = daemon.notify.wait_for("READY", "1", timeout=300)
        finally:
            daemon.stop()
        if i:
            samples.append(ready.at - started)
    return samples


def fill_cache(workdir: Path, chunks: int, chunk_size: int = 4096) -> None:
    """`chunks` chunk files with their index rows and manifest rows, as reads would leave them (written
    directly: the benchmark is about opening a full cache, not filling one)."""
    import hashlib
    import sqlite3

    from musicfs.cache.cas import CasStore
    from musicfs.library.catalog import Catalog

    root = workdir / "cache"
    CasStore(str(root), 1 << 40).close()
    rows, manifest = [], []
    catalog = Catalog(str(workdir / "state" / "catalog.db"))
    files = catalog.files()
    for i in range(chunks):
        data = i.to_bytes(8, "big") * (chunk_size // 8)
        digest = hashlib.sha256(data).hexdigest()
        folder = root / "chunks" / digest[:2]
        folder.mkdir(exist_ok=True)
        (folder / digest).write_bytes(data)
        rows.append((digest, len(data), time.time()))
        f = files[i % len(files)]
        manifest.append((f.id, f.ident, i // len(files), digest))
    db = sqlite3.connect(str(root / "index.db"))
    db.executemany("INSERT OR REPLACE INTO chunks VALUES(?, ?, ?)", rows)
    db.commit()
    db.close()
    catalog._db.executemany("INSERT OR REPLACE INTO manifests VALUES(?, ?, ?, ?)", manifest)
    catalog.close()


def ready_section(args, empty: list[float], full: list[float] | None) -> list[str]:
    fmt = lambda xs: f"{statistics.median(xs):.2f} s (runs: {', '.join(f'{x:.2f}' for x in xs)})"  # noqa: E731
    out = ["", f"Time to READY=1 (process start to the notify message, real daemon, median of {args.ready_runs} "
           "after one warm-up start; shared 2-core machine, noisy):", "",
           f"- {args.tracks:,} tracks, empty cache: {fmt(empty)}"]
    if full is not None:
        out.append(f"- {args.tracks:,} tracks, {args.cache_chunks:,} chunks cached: {fmt(full)}")
    return out


def report(args, figures: dict, seconds: float) -> str:
    rows = [("mount until it answers", "mount", "s"), ("`ls -lR`, first", "ls_first", "s"),
            ("`ls -lR`, median of 3 more", "ls_median", "s"), ("list the root folder", "listdir_root", "s"),
            ("1000 random `stat`s after the listings", "stat_1000", "s"), ("daemon RSS after listing", "rss_mib", "MiB")]
    out = [START, "", f"## Large library ({args.tracks:,} tracks)", "",
           f"- Command: `.venv/bin/python bench/large_library.py --tracks {args.tracks}`",
           f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC (run took {seconds:.0f} s)",
           "- Files: tiny stand-ins in `Artist/Album/NN Track.mp3` folders (10 albums of 10 tracks per artist); MusicFS "
           "mounts from a catalog holding their real identities, as after a first scan; rclone and the source folder "
           "list the same files. Page cache not dropped: these are metadata paths.", "",
           "| Metric | Unit | direct | MusicFS | rclone | MusicFS / direct | MusicFS / rclone |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for label, key, unit in rows:
        d, m, r = (figures[c].get(key) for c in ("direct", "musicfs", "rclone"))
        cell = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731
        out.append(f"| {label} | {unit} | {cell(d)} | {cell(m)} | {cell(r)} | {ratio(m, d)} | {ratio(m, r)} |")
    if "ready_empty" in figures:
        out += ready_section(args, figures["ready_empty"], figures.get("ready_full"))
    out += ["", END]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--ready-runs", type=int, default=3)
    parser.add_argument("--cache-chunks", type=int, default=100_000, help="0: no full-cache READY runs")
    parser.add_argument("--ready-only", action="store_true", help="only the time to READY (no listings, no rclone)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="musicfs-large-"))
    try:
        source = work / "source"
        rows = synthetic_rows(args.tracks, root=source)
        seed_library(large_config(source, work / "musicfs"), rows)
        figures = {"ready_empty": time_to_ready(source, work / "musicfs", args.ready_runs)}
        if args.cache_chunks:
            fill_cache(work / "musicfs", args.cache_chunks)
            figures["ready_full"] = time_to_ready(source, work / "musicfs", args.ready_runs)
        if args.ready_only:
            print("\n".join(ready_section(args, figures["ready_empty"], figures.get("ready_full"))))
            return 0
        rng = random.Random(1)
        picks = rng.sample(range(len(rows)), 1000)
        tree_paths = [f"{r.artist}/{r.album}/{r.track_no:02d} - {r.title}.mp3" for r in (rows[i] for i in picks)]
        origin_paths = [rows[i].path for i in picks]
        figures["direct"] = measure(str(source), origin_paths)
        mnt = str(work / "mnt")
        os.makedirs(mnt)
        musicfs = [str(REPO / ".venv/bin/musicfs"), "mount", str(source), mnt, "--state-dir", str(work / "musicfs/state"),
                   "--cache-dir", str(work / "musicfs/cache")]
        figures["musicfs"] = run_mount(musicfs, mnt, tree_paths)
        rclone = ["rclone", "mount", str(source), mnt, "--vfs-cache-mode", "full", "--cache-dir", str(work / "rclone")]
        figures["rclone"] = run_mount(rclone, mnt, origin_paths) if shutil.which("rclone") else {}
        write_section(args.out, report(args, figures, time.perf_counter() - started), START, END)
        print(report(args, figures, time.perf_counter() - started))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
