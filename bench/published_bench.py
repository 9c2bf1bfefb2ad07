#!/usr/bin/env python3
"""A first mount of a big S3 library, with and without a published catalog (`musicfs publish`), in one run.

    .venv/bin/python bench/published_bench.py [--tracks 20000] [--rtt 20] [--runs 3] [--out docs/benchmarks.md]

The library: --tracks real audio files (short MP3 and Ogg tracks, each retagged: its own artist, album, title and
number) in a real S3 server (SeaweedFS, `weed mini`), reached through the chaos proxy with --rtt ms of round trip
added. The library is published once (`musicfs publish`, timed: it is a full first scan). Then, --runs times each,
a fresh `musicfs mount` (no state) is started and timed from its start to READY=1 on a notify socket this
benchmark owns: once with `--no-published-catalog` (it scans the whole library first) and once from the published
catalog (then its first rescan revalidates it, timed to the end too). The S3 requests each case cost the origin up
to READY (and the revalidation's) are counted by the server itself (its `SeaweedFS_s3_request_total` metrics).
Medians; the section between the published-catalog markers of --out is replaced.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from benchlib import Proxy, log, machine, write_section  # noqa: E402

from musicfs_test_utils.daemon import MusicfsDaemon  # noqa: E402
from musicfs_test_utils.eventually import eventually  # noqa: E402
from musicfs_test_utils.fixtures import make_library, retagged_copy  # noqa: E402
from musicfs_test_utils.servers import SeaweedServer  # noqa: E402

START, END = "<!-- published-catalog:start -->", "<!-- published-catalog:end -->"
BUCKET, PREFIX = "published", "lib"


def _retag(job: tuple[str, str, int]) -> None:
    base, dest, i = job
    artist, album, number = i // 200, i // 10, i % 10 + 1
    retagged_copy(base, dest, artist=f"Artist {artist:03d}", album=f"Album {album:05d}", title=f"Track {i}",
                  tracknumber=str(number))


def build_library(root: Path, tracks: int, work: Path) -> None:
    """`tracks` files, each a copy of a short real MP3 or Ogg track with tags of its own."""
    made = make_library(work / "bases", 24, hostile=False)
    bases = [str(work / "bases" / t.path) for t in made if t.format in ("mp3", "ogg") and t.tagged]
    jobs = []
    for i in range(tracks):
        base = bases[i % len(bases)]
        ext = os.path.splitext(base)[1]
        jobs.append((base, str(root / f"Artist {i // 200:03d}" / f"Album {i // 10:05d}" / f"{i % 10 + 1:02d} Track {i}{ext}"),
                     i))
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        for n, _ in enumerate(pool.map(_retag, jobs, chunksize=200), 1):
            if n % 5000 == 0:
                log(f"library: {n}/{tracks} files")


def upload(server: SeaweedServer, root: Path) -> int:
    client = server.client()
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]

    def put(path: Path) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{path.relative_to(root).as_posix()}", Body=path.read_bytes())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
    return sum(p.stat().st_size for p in files)


def child_env(server: SeaweedServer, proxy: Proxy) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "NOTIFY_SOCKET")}
    env.update(server.env())
    env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
    env["PYTHONPATH"] = str(REPO)
    return env


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def first_mount(server: SeaweedServer, proxy: Proxy, work: Path, name: str, published: bool, timeout: float) -> dict:
    """One fresh mount: seconds to READY and the S3 requests up to it; from a published catalog, also the
    revalidation's seconds and requests."""
    env = child_env(server, proxy)
    flags = [] if published else ["--no-published-catalog"]
    daemon = MusicfsDaemon([f"s3://{BUCKET}/{PREFIX}"], work / f"{name}-mnt", work / name, extra_args=flags, env=env)
    before = server.s3_requests()
    t0 = time.perf_counter()
    daemon.start()
    try:
        daemon.wait_for_mount(timeout)
        ready = time.perf_counter() - t0
        at_ready = server.s3_requests()
        result = {"ready": ready, "requests": delta(at_ready, before), "tracks": daemon.status()["tracks"]}
        if published:
            eventually(lambda: (daemon.status().get("published") or {}).get("revalidated"), timeout, "revalidation")
            result["revalidated"] = time.perf_counter() - t0
            result["revalidation_requests"] = delta(server.s3_requests(), at_ready)
            result["reread"] = daemon.status()["published"]["reread"]
        return result
    finally:
        daemon.stop(60)
        shutil.rmtree(work / name, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=20000)
    ap.add_argument("--rtt", type=float, default=20.0, help="round trip added by the chaos proxy, ms")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds a mount may take to be READY")
    ap.add_argument("--out", default="", help="a markdown report to write the section into")
    args = ap.parse_args()
    started, clock = datetime.datetime.now(datetime.UTC), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="musicfs-published-") as tmp:
        work = Path(tmp)
        root = work / "library"
        t0 = time.perf_counter()
        build_library(root, args.tracks, work)
        log(f"library of {args.tracks} tracks written in {time.perf_counter() - t0:.0f}s")
        server = SeaweedServer().start()
        try:
            server.make_bucket(BUCKET)
            size = upload(server, root)
            log(f"uploaded {size / 2**20:.0f} MiB")
            shutil.rmtree(root)
            proxy = Proxy(server.port, args.rtt)
            try:
                env = child_env(server, proxy)
                before = server.s3_requests()
                t0 = time.perf_counter()
                pub = subprocess.run([sys.executable, "-m", "musicfs", "publish", f"s3://{BUCKET}/{PREFIX}",
                                      "--state-dir", str(work / "publisher")], env=env, capture_output=True,
                                     text=True, timeout=args.timeout)
                publish_s = time.perf_counter() - t0
                if pub.returncode != 0:
                    raise SystemExit(f"musicfs publish failed ({pub.returncode}):\n{pub.stderr[-3000:]}")
                publish_requests = delta(server.s3_requests(), before)
                log(f"{pub.stdout.strip()} in {publish_s:.1f}s")
                runs: dict[str, list[dict]] = collections.defaultdict(list)
                for run in range(args.runs):
                    for case, from_published in (("scan", False), ("published", True)):
                        r = first_mount(server, proxy, work, f"{case}-{run}", from_published, args.timeout)
                        log(f"run {run + 1} {case}: READY in {r['ready']:.2f}s, {r['tracks']} tracks, "
                            f"requests {r['requests']}" + (f"; revalidated at {r['revalidated']:.1f}s, requests "
                                                          f"{r['revalidation_requests']}, {r['reread']} re-read"
                                                          if from_published else ""))
                        runs[case].append(r)
            finally:
                proxy.stop()
        finally:
            server.stop()
    section = report(args, runs, publish_s, publish_requests, pub.stdout.strip(), started,
                     time.perf_counter() - clock)
    print(section)
    if args.out:
        write_section(args.out, section, START, END)
    return 0


def median(values) -> float:
    return statistics.median(values)


def runs_text(rs: list[dict], digits: int) -> str:
    return ", ".join(f"{r['ready']:.{digits}f}" for r in rs)


def requests_text(requests: list[dict[str, int]]) -> str:
    kinds = sorted({k for r in requests for k in r})
    return ", ".join(f"{k} {median([r.get(k, 0) for r in requests]):.0f}" for k in kinds) or "none"


def report(args, runs, publish_s, publish_requests, publish_line, started, seconds) -> str:
    info = machine()
    scan, pub = runs["scan"], runs["published"]
    ready_scan, ready_pub = median([r["ready"] for r in scan]), median([r["ready"] for r in pub])
    total = lambda rs: median([sum(r["requests"].values()) for r in rs])  # noqa: E731
    lines = [
        START,
        "## First mount from a published catalog (issue 23)",
        "",
        f"`.venv/bin/python bench/published_bench.py --tracks {args.tracks} --rtt {args.rtt:g} --runs {args.runs}` "
        f"({started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.0f} min; {info['nproc']} CPUs, {info['cpu']}, {info['ram']}, "
        f"{info['kernel']}, Python {info['python']}). S3: SeaweedFS through the chaos proxy, +{args.rtt:g} ms round "
        f"trip; {args.tracks} real MP3/Ogg tracks, each with tags of its own. S3 requests counted by the server. "
        f"Medians of {args.runs} fresh first mounts (no state).",
        "",
        "| first mount | READY s (runs) | S3 requests to READY | x sooner |",
        "|---|---|---|---:|",
        f"| scan (`--no-published-catalog`) | {ready_scan:.2f} ({runs_text(scan, 1)}) | "
        f"{requests_text([r['requests'] for r in scan])} (all {total(scan):.0f}) | 1.0 |",
        f"| from the published catalog | {ready_pub:.2f} ({runs_text(pub, 2)}) | "
        f"{requests_text([r['requests'] for r in pub])} (all {total(pub):.0f}) | {ready_scan / ready_pub:.1f} |",
        "",
        f"From the published catalog, the first rescan revalidated it {median([r['revalidated'] for r in pub]):.1f} s "
        f"after the start (requests: {requests_text([r['revalidation_requests'] for r in pub])}; "
        f"{median([r['reread'] for r in pub]):.0f} files re-read). Scanning, the first mount read "
        f"{args.tracks / ready_scan:.0f} tracks/s (start-up and mount included). The publish itself (a first scan into a new "
        f"catalog, then the snapshot and the pointer written): {publish_s:.1f} s, requests "
        f"{requests_text([publish_requests])}; it printed: `{publish_line}`.",
        END,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
