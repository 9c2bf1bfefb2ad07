#!/usr/bin/env python3
"""The read path, measured: READ requests that reach the daemon for a cold sequential read of a big file with
and without pushing verified chunks into the page cache, and requests per second served from memory beside a
trivial pyfuse3 filesystem, in one run.

    .venv/bin/python bench/read_path.py [--big-mb 100] [--repeat 3]

Writes the `read-path` section of docs/benchmarks.md. Needs root for dropping the page cache.

* Cold read: a fresh MusicFS mount (empty cache) of `musicfs demo --big-file-mb N`, the page cache dropped,
  the big file read start to end in 1 MiB reads; `musicfs status` counts the READ requests the daemon served.
  Warm read: the daemon restarted on that cache, the page cache dropped, the same read. Once with
  `page_push = false`, once with `true` (the default); SHA-256 checked against the source.
* Requests per second from memory: O_DIRECT reads of 128 KiB (each one a FUSE READ) over the last 32 MiB of the
  big file right after that read (the daemon's chunk LRU holds them), for `--seconds`; the same loop against a
  minimal pyfuse3 filesystem serving a file from a bytes object (`--trivial-fs`, started here).
"""

from __future__ import annotations

import argparse
import datetime
import errno
import hashlib
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import (  # noqa: E402
    REPO,
    BenchError,
    drop_caches,
    log,
    machine,
    ratio,
    run_lines,
    write_section,
)
from musicfs_test_utils.daemon import MusicfsDaemon, write_config  # noqa: E402

START, END = "<!-- read-path:start -->", "<!-- read-path:end -->"
MB = 1_000_000
REQ = 128 << 10
TAIL = 32 << 20


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_through(path: str) -> tuple[float, str]:
    """Seconds to read `path` start to end in 1 MiB reads, and its SHA-256."""
    h = hashlib.sha256()
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return time.perf_counter() - t, h.hexdigest()


def direct_requests(path: str, start: int, length: int, seconds: float) -> float:
    """O_DIRECT reads of REQ bytes cycling over [start, start+length): reads per second."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, REQ)  # page-aligned
    try:
        offsets = list(range(start, start + length, REQ))
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for off in offsets:
                if os.preadv(fd, [buf], off) <= 0:
                    raise BenchError(f"{path}: short O_DIRECT read at {off}")
                n += 1
        return n / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        buf.close()


# -- the trivial filesystem ------------------------------------------------------------------------

def trivial_fs(mountpoint: str, size: int) -> int:
    """A minimal pyfuse3 filesystem: one file `f` of `size` bytes served from memory, nothing else."""
    import pyfuse3
    import trio

    data = bytes(range(256)) * (size // 256)

    class Ops(pyfuse3.Operations):
        def _attr(self, ino):
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.st_mode = (0o40555 if ino == pyfuse3.ROOT_INODE else 0o100444)
            a.st_size = len(data) if ino != pyfuse3.ROOT_INODE else 0
            a.entry_timeout = a.attr_timeout = 300
            return a

        async def getattr(self, inode, ctx=None):
            return self._attr(inode)

        async def lookup(self, parent, name, ctx=None):
            if name != b"f":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(2)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start, token):
            if start == 0:
                pyfuse3.readdir_reply(token, b"f", self._attr(2), 1)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            return memoryview(data)[off:off + size]

    pyfuse3.init(Ops(), mountpoint, {"fsname=trivial", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


class Trivial:
    def __init__(self, mountpoint: str, size: int):
        self.mountpoint, self.size = mountpoint, size
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        os.makedirs(self.mountpoint, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, __file__, "--trivial-fs", self.mountpoint, str(self.size)])
        path = os.path.join(self.mountpoint, "f")
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BenchError("the trivial pyfuse3 filesystem did not mount")
            time.sleep(0.05)
        return path

    def __exit__(self, *exc) -> None:
        subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- MusicFS ---------------------------------------------------------------------------------------

def _read_big(daemon: MusicfsDaemon, source: Path, big_rel: str, tag: str) -> tuple[str, dict]:
    """(the big file's mount path, figures of one read of it start to end, page cache dropped first)."""
    listing = [(p, p.stat().st_size) for p in Path(daemon.mountpoint).rglob("*") if p.is_file()]
    big = str(max(listing, key=lambda t: t[1])[0])
    before = daemon.status()["fuse"]["reads"]
    drop_caches(level=3)
    secs, digest = read_through(big)
    if digest != sha256(str(source / big_rel)):
        raise BenchError(f"MusicFS ({tag}): the big file's bytes differ from the source's")
    status = daemon.status()
    return big, {"mbps": os.path.getsize(big) / MB / secs, "requests": status["fuse"]["reads"] - before,
                 "pages": status["reader"].get("pages") or {}, "rss": status["process"].get("rss_bytes") or 0}


def musicfs_run(source: Path, big_rel: str, work: Path, push: bool, tag: str, seconds: float) -> dict:
    """Cold (a fresh mount, empty cache), then warm (a restart on that cache): figures of both reads."""
    cfg = write_config(work / f"{tag}.toml", page_push=push)
    daemon = MusicfsDaemon([source], work / f"mnt-{tag}", work / tag, extra_args=["--config", str(cfg)])
    with daemon:
        big, cold = _read_big(daemon, source, big_rel, f"{tag} cold")
        cold["size"] = os.path.getsize(big)
        cold["rps"] = direct_requests(big, cold["size"] - TAIL, TAIL, seconds) if push else None
    with daemon:  # the same state and cache folders: the chunks come from the cache on disk
        _, warm = _read_big(daemon, source, big_rel, f"{tag} warm")
    return {**cold, "warm": warm}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--big-mb", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="length of each requests-per-second loop")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--trivial-fs", nargs=2, metavar=("MOUNTPOINT", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trivial_fs:
        return trivial_fs(args.trivial_fs[0], int(args.trivial_fs[1]))
    argv = [".venv/bin/python", "bench/read_path.py"] + sys.argv[1:]
    started, t0, load0 = datetime.datetime.now().astimezone(), time.perf_counter(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="musicfs-readpath-"))
    try:
        source = work / "library"
        exe = str(REPO / ".venv" / "bin" / "musicfs")
        subprocess.run([exe, "demo", str(source), "--tracks", "3", "--big-file-mb", str(args.big_mb)], check=True,
                       capture_output=True, timeout=600)
        big_rel = str(max(((p, p.stat().st_size) for p in source.rglob("*") if p.is_file()),
                          key=lambda t: t[1])[0].relative_to(source))
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        trivial: list[float] = []
        for rep in range(args.repeat):
            for push in (False, True):
                tag = f"{'on' if push else 'off'}-{rep}"
                r = musicfs_run(source, big_rel, work, push, tag, args.seconds)
                runs["on" if push else "off"].append(r)
                log(f"#{rep + 1} page_push={push}: cold {r['mbps']:.0f} MB/s, {r['requests']} READ requests; warm "
                    f"{r['warm']['mbps']:.0f} MB/s, {r['warm']['requests']} READ requests"
                    + (f"; {r['rps']:.0f} requests/s from memory" if r["rps"] else ""))
            with Trivial(str(work / "mnt-trivial"), 64 << 20) as path:
                trivial.append(direct_requests(path, 0, TAIL, args.seconds))
            log(f"#{rep + 1} trivial pyfuse3: {trivial[-1]:.0f} requests/s")
        section = report(args, argv, started, time.perf_counter() - t0, load0, runs, trivial)
        write_section(args.out, section, START, END)
        log(f"wrote the read-path section of {args.out}")
        return 0
    except BenchError as exc:
        print(f"read_path: STOPPED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, argv, started, seconds, load0, runs, trivial) -> str:
    med = statistics.median
    off, on = runs["off"], runs["on"]
    size = on[0]["size"]
    lines = [START, "## Read path: READ requests and requests per second", ""]
    lines += run_lines(argv, started, seconds, load0, os.getloadavg()[0], machine())
    lines += ["", f"Medians of {args.repeat}. The big file: {size / MB:.1f} MB, read cold (fresh mount, empty cache, "
              "page cache dropped) start to end in 1 MiB reads; bytes checked by SHA-256.", "",
              "| Figure | page_push = false | page_push = true | ratio |", "|---|---:|---:|---:|",
              f"| READ requests reaching the daemon | {med(r['requests'] for r in off):.0f} | "
              f"{med(r['requests'] for r in on):.0f} | "
              f"{ratio(med(r['requests'] for r in on), med(r['requests'] for r in off))} |",
              f"| cold read, MB/s | {med(r['mbps'] for r in off):.0f} | {med(r['mbps'] for r in on):.0f} | "
              f"{ratio(med(r['mbps'] for r in on), med(r['mbps'] for r in off))} |",
              f"| READ requests, warm (restart on the cache, page cache dropped) | "
              f"{med(r['warm']['requests'] for r in off):.0f} | {med(r['warm']['requests'] for r in on):.0f} | "
              f"{ratio(med(r['warm']['requests'] for r in on), med(r['warm']['requests'] for r in off))} |",
              f"| warm read, MB/s | {med(r['warm']['mbps'] for r in off):.0f} | "
              f"{med(r['warm']['mbps'] for r in on):.0f} | "
              f"{ratio(med(r['warm']['mbps'] for r in on), med(r['warm']['mbps'] for r in off))} |",
              f"| daemon RSS after the warm read, MiB | {med(r['warm']['rss'] for r in off) / 2**20:.0f} | "
              f"{med(r['warm']['rss'] for r in on) / 2**20:.0f} | |",
              "", "| Requests per second, O_DIRECT 128 KiB reads | MusicFS (chunk LRU) | trivial pyfuse3 | ratio |",
              "|---|---:|---:|---:|",
              f"| median | {med(r['rps'] for r in on):.0f} | {med(trivial):.0f} | "
              f"{ratio(med(r['rps'] for r in on), med(trivial))} |", "",
              f"Pushed per run (median): {med(r['pages'].get('pushes', 0) for r in on):.0f} chunks, "
              f"{med(r['pages'].get('pushed_bytes', 0) for r in on) / MB:.1f} MB; dropped as the queue was full "
              f"{med(r['pages'].get('dropped_full', 0) for r in on):.0f}; refused by the kernel "
              f"{med(r['pages'].get('failed', 0) for r in on):.0f}.", END, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
