"""First-scan tracks/s over S3 (moto server) and SFTP (OpenSSH sshd) behind the chaos proxy with added round-trip
latency. A benchmark, not a test.

    PYTHONPATH=. python bench/scan_latency.py --tracks 300 --latencies 0,20 --origins s3,sftp --runs 3

The proxy runs in a child process (bench/benchlib.py's proxy child: it shares no GIL with the scanner measured
here), moto in its own process. Each line gives the median of --runs fresh first scans, the origin calls per
file (a counting wrapper around the origin: walk/stat/read/read_ranges and the ranges they asked for), bytes
through the proxy per file, and CPU seconds of the scanning process, the server (moto; sshd and its sftp
sessions) and the proxy over the runs, so it says whether round trips or some process's CPU bound the scan.
`--plain` also times what a tag scanner needs with the plain client and no tags parsed: the listing plus one
--head-kb KiB ranged read per file, as many in flight as the scan uses (S3: boto3 list_objects_v2 + ranged
get_object; SFTP: paramiko listdir_attr + open/readv/close over the origin's pool size of channels).
`--profile FILE` writes a cProfile of the last run's scan (read it with `python -m pstats FILE`).
`--workers N` overrides the origin's scan_parallelism.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import cProfile
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from musicfs.library.scanner import Scanner  # noqa: E402
from musicfs.origins.registry import OriginRegistry  # noqa: E402
from musicfs_test_utils.fixtures import make_library, open_catalog  # noqa: E402
from musicfs_test_utils.servers import MotoServer, SshServer  # noqa: E402


class Counting:
    """An origin wrapper that counts calls (and ranges asked) per kind."""

    def __init__(self, origin):
        self._origin = origin
        self.calls: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._origin, name)

    def _count(self, what, n=1):
        with self._lock:
            self.calls[what] += n

    def walk(self):
        self._count("walk")
        return self._origin.walk()

    def stat(self, path):
        self._count("stat")
        return self._origin.stat(path)

    def read(self, path, offset, length, expect=None):
        self._count("read")
        return self._origin.read(path, offset, length, expect)

    def read_ranges(self, path, ranges, expect=None):
        self._count("read_ranges")
        self._count("ranges", len(ranges))
        return self._origin.read_ranges(path, ranges, expect)


def cpu_seconds(pids) -> float:
    """user+system CPU of these processes (and their children that were reaped) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def plain_s3(moto, proxy_port: int, count: int, head: int, workers: int) -> float:
    import boto3
    import botocore.config

    t0 = time.perf_counter()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy_port}", region_name="us-east-1",
                          aws_access_key_id=moto.origin_options()["access_key_id"], aws_secret_access_key=moto.origin_options()["secret_access_key"],
                          config=botocore.config.Config(max_pool_connections=workers))
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="scan", Prefix="lib/")
            for o in page.get("Contents", ())]

    def get(key):
        return client.get_object(Bucket="scan", Key=key, Range=f"bytes=0-{head - 1}")["Body"].read()

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        got = list(pool.map(get, keys))
    dt = time.perf_counter() - t0
    assert len(got) == count, (len(got), count)
    return count / dt


def plain_sftp(ssh, proxy_port: int, root: str, count: int, head: int, channels: int, workers: int) -> float:
    import stat as st

    import paramiko

    t0 = time.perf_counter()
    c = paramiko.SSHClient()
    c.load_host_keys(ssh.known_hosts)
    c.connect("127.0.0.1", port=proxy_port, username=ssh.user, key_filename=ssh.identity_file,
              allow_agent=False, look_for_keys=False)
    try:
        main = c.open_sftp()
        files, todo = [], [root]
        while todo:
            d = todo.pop()
            for a in main.listdir_attr(d):
                (todo if st.S_ISDIR(a.st_mode) else files).append(d + "/" + a.filename)
        pool = [c.open_sftp() for _ in range(channels)]
        free = list(pool)
        lock = threading.Semaphore(channels)
        guard = threading.Lock()

        def get(path):
            with lock:
                with guard:
                    chan = free.pop()
                try:
                    with chan.open(path, "rb") as f:
                        return b"".join(f.readv([(0, head)]))
                finally:
                    with guard:
                        free.append(chan)

        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            got = list(ex.map(get, files))
    finally:
        c.close()
    dt = time.perf_counter() - t0
    assert len(got) == count, (len(got), count)
    return count / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracks", type=int, default=300)
    ap.add_argument("--latencies", default="0,20", help="round trips to add, ms, comma separated")
    ap.add_argument("--latency-ms", type=int, help="one latency (older spelling of --latencies)")
    ap.add_argument("--origins", default="s3,sftp")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="0: the origin's scan_parallelism")
    ap.add_argument("--plain", action="store_true", help="also time the plain client's listing + head reads")
    ap.add_argument("--head-kb", type=int, default=128)
    ap.add_argument("--profile", help="cProfile of the last scan to this file (suffixed -ORIGIN-LATENCY)")
    args = ap.parse_args()
    latencies = [args.latency_ms] if args.latency_ms is not None else [int(x) for x in args.latencies.split(",")]
    origins = args.origins.split(",")
    from benchlib import Proxy

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lib"
        make_library(root, args.tracks, hostile=False)
        nfiles = sum(len(f) for _, _, f in os.walk(root))
        servers = {}
        try:
            if "s3" in origins:
                moto = servers["s3"] = MotoServer(mode="process").start()
                moto.make_bucket("scan")
                moto.upload_dir(root, "scan", prefix="lib")
            if "sftp" in origins:
                servers["sftp"] = SshServer().start()
            for origin_kind in origins:
                server = servers[origin_kind]
                for latency in latencies:
                    proxy = Proxy(server.port, latency)
                    if origin_kind == "sftp":  # the proxy's address is another host to known_hosts
                        with open(server.known_hosts, "a") as fh:
                            fh.write(f"[127.0.0.1]:{proxy.port} {server.host_public_key}\n")
                    try:
                        run_case(args, origin_kind, server, proxy, latency, root, nfiles, tmp)
                    finally:
                        proxy.stop()
        finally:
            for s in servers.values():
                s.stop()


def make_origin(kind, server, proxy_port, root):
    if kind == "s3":
        from musicfs.origins.s3 import S3Origin

        return S3Origin.from_url("s3://scan/lib", server.origin_options(endpoint_url=f"http://127.0.0.1:{proxy_port}"))
    from musicfs.origins.sftp import SftpOrigin

    return SftpOrigin.from_url(f"sftp://{server.user}@127.0.0.1:{proxy_port}{root}", server.origin_options())


def run_case(args, kind, server, proxy, latency, root, nfiles, tmp) -> None:
    server_pids = lambda: [server.pid, *descendants(server.pid)] if server.pid else []  # noqa: E731
    rates, calls, cpu = [], collections.Counter(), collections.Counter()
    for run in range(args.runs):
        state = Path(tmp) / f"state-{kind}-{latency}-{run}"
        cat = open_catalog(str(state))
        origin = Counting(make_origin(kind, server, proxy.port, root))
        prof = cProfile.Profile() if args.profile and run == args.runs - 1 else None
        spids = server_pids()
        before = (self_cpu(), cpu_seconds(spids), cpu_seconds([proxy.proc.pid]))
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        result = Scanner(cat, OriginRegistry([origin]), workers=args.workers or None).scan()
        if prof:
            prof.disable()
            prof.dump_stats(f"{args.profile}-{kind}-{latency}")
        dt = time.perf_counter() - t0
        spids = list(dict.fromkeys(spids + server_pids()))
        after = (self_cpu(), cpu_seconds(spids), cpu_seconds([proxy.proc.pid]))
        cpu["scanner"] += after[0] - before[0]
        cpu["server"] += after[1] - before[1]
        cpu["proxy"] += after[2] - before[2]
        cpu["wall"] += dt
        done = result.added + result.skipped
        assert done == nfiles, (result.summary(), nfiles)
        rates.append(done / dt)
        calls.update(origin.calls)
        origin.close()
        cat.close()
        shutil.rmtree(state)
    per_file = {k: round(v / args.runs / nfiles, 2) for k, v in sorted(calls.items()) if k != "walk"}
    workers = args.workers or make_origin(kind, server, proxy.port, root).scan_parallelism
    line = (f"{kind} +{latency}ms, {nfiles} files, {workers} workers: median {statistics.median(rates):.0f} files/s "
            f"(runs: {', '.join(f'{r:.0f}' for r in sorted(rates))}); origin calls per file {per_file}; "
            f"CPU s per wall s: scanner {cpu['scanner'] / cpu['wall']:.2f}, server {cpu['server'] / cpu['wall']:.2f}, "
            f"proxy {cpu['proxy'] / cpu['wall']:.2f}")
    if args.plain:
        plain = []
        for _ in range(args.runs):
            if kind == "s3":
                plain.append(plain_s3(server, proxy.port, nfiles, args.head_kb << 10, workers))
            else:
                pool = make_origin(kind, server, proxy.port, root).pool_size
                plain.append(plain_sftp(server, proxy.port, str(root), nfiles, args.head_kb << 10, pool, workers))
        line += f"; plain client list + {args.head_kb} KiB head: median {statistics.median(plain):.0f} files/s"
    print(line, flush=True)


if __name__ == "__main__":
    main()
