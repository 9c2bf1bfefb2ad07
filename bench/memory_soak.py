#!/usr/bin/env python3
"""Row 6.10: memory comes back. 32 concurrent readers of 48 MB files through a real mount, then idle: the
daemon's RSS at its peak and every second after the readers end, for 15 s (median of --repeat runs).

    python bench/memory_soak.py [--origin local|s3] [--readers 32] [--file-mb 48] [--repeat 3]

`--origin s3` serves the files from moto's S3 server on loopback (boto3's threads and buffers are what grew the
RSS first); `local` from a folder. Each run: a fresh state and cache, the readers in threads of this process
reading past the page cache, RSS sampled with psutil every 0.1 s. The report goes to docs/benchmarks.md
(section "memory") with the command and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import log, machine, run_lines, write_section  # noqa: E402

from musicfs_test_utils.daemon import MusicfsDaemon, write_config  # noqa: E402

MB = 1 << 20
IDLE_SECONDS = 15


def make_files(root: Path, n: int, size_mb: int) -> list[Path]:
    """n real FLAC files of about `size_mb` MB in one album, track i titled "T" and i x's."""
    from musicfs.commands.demo import BIG_FILE_PATH
    from musicfs_test_utils.fixtures import make_library, retagged_copy

    make_library(root / "seed", 1, big_file_mb=size_mb, hostile=False)
    big = root / "seed" / BIG_FILE_PATH
    files = [retagged_copy(big, root / "library" / f"{i:02d}.flac", artist="Soak", album="Memory",
                           title="T" + "x" * i, tracknumber=str(i + 1)) for i in range(n)]
    shutil.rmtree(root / "seed")
    return files


def read_through(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        total = 0
        while data := os.read(fd, 1 << 20):
            total += len(data)
        return total
    finally:
        os.close(fd)


def one_run(work: Path, sources: list[str], files: list[Path], readers: int, env: dict) -> dict:
    config = write_config(work / "musicfs.toml", cache_size="4G", read_timeout=120)
    daemon = MusicfsDaemon(sources, work / "mnt", work / "d", extra_args=["--config", str(config)], env=env)
    daemon.start()
    try:
        daemon.wait_for_mount(timeout=600)
        proc = psutil.Process(daemon.pid)
        start_rss = proc.memory_info().rss
        pairs = {f: Path(daemon.mountpoint) / "Soak" / "Memory" / f"{i + 1:02d} - T{'x' * i}.flac"
                 for i, f in enumerate(files)}  # the tree's names for make_files' tags
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), proc.memory_info().rss))
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        jobs = [pairs[files[i % len(files)]] for i in range(readers)]
        with ThreadPoolExecutor(readers) as pool:
            sizes = list(pool.map(read_through, jobs))
        ended = time.monotonic()
        assert sizes == [p.stat().st_size for p in jobs], "every reader got the whole file"
        time.sleep(IDLE_SECONDS)  # a benchmark watches the idle daemon: the wait is the measurement
        stop.set()
        sampler.join()
        peak = max(rss for _, rss in samples)
        after = {s: next((rss for t, rss in samples if t >= ended + s), 0) for s in (1, 5, 10)}  # RSS then
        return {"start": start_rss, "peak": peak, "after": after, "seconds": ended - samples[0][0],
                "threads": proc.num_threads()}
    finally:
        daemon.stop(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--origin", choices=("local", "s3"), default="local")
    ap.add_argument("--readers", type=int, default=32)
    ap.add_argument("--file-mb", type=int, default=48)
    ap.add_argument("--files", type=int, default=16, help="distinct files (readers share them round-robin)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-report", action="store_true", help="print only; do not write docs/benchmarks.md")
    args = ap.parse_args()
    started, load0, t0 = datetime.datetime.now(datetime.timezone.utc), os.getloadavg()[0], time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="musicfs-memsoak-"))
    runs = []
    try:
        files = make_files(base, args.files, args.file_mb)
        env: dict = {}
        sources = [str(base / "library")]
        server = None
        if args.origin == "s3":
            from musicfs_test_utils.servers import MotoServer

            server = MotoServer(mode="process").start()
            server.make_bucket("music")
            server.upload_dir(base / "library", "music", prefix="lib")
            env, sources = server.env(), ["s3://music/lib"]
        try:
            for n in range(args.repeat):
                log(f"run {n + 1}/{args.repeat}: {args.readers} readers of {args.files} x {args.file_mb} MB "
                    f"({args.origin})")
                work = base / f"run{n}"
                runs.append(one_run(work, sources, files, args.readers, env))
                shutil.rmtree(work, ignore_errors=True)
                log(f"  {runs[-1]}")
        finally:
            if server is not None:
                server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def med(get) -> str:
        return f"{statistics.median(get(r) for r in runs) / MB:.0f} MiB"

    lines = [f"{args.readers} concurrent readers of {args.files} files of {args.file_mb} MB ({args.origin} origin), "
             f"then {IDLE_SECONDS} s idle; daemon RSS, median of {len(runs)} runs:", "",
             "| at mount | peak | 1 s after | 5 s after | 10 s after | threads after |", "|---|---|---|---|---|---|",
             f"| {med(lambda r: r['start'])} | {med(lambda r: r['peak'])} | {med(lambda r: r['after'][1])} | "
             f"{med(lambda r: r['after'][5])} | {med(lambda r: r['after'][10])} | "
             f"{statistics.median(r['threads'] for r in runs):.0f} |"]
    print("\n".join(lines))
    if not args.no_report:
        info = machine()
        start, end = f"<!-- memory:{args.origin}:start -->", f"<!-- memory:{args.origin}:end -->"
        report = [start, "", f"## Memory after concurrent readers ({args.origin} origin)", "",
                  *run_lines(sys.argv, started, time.monotonic() - t0, load0, os.getloadavg()[0], info), "",
                  *lines, "", end]
        write_section(str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"), "\n".join(report) + "\n",
                      start, end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
