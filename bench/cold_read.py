#!/usr/bin/env python3
"""One figure, quickly, for trying a change: the cold sequential read of one big FLAC through fresh `musicfs mount`s
of one origin (a local folder, SeaweedFS, moto or OpenSSH's sshd, the remote ones behind the project's chaos proxy
with an added round trip), medians of --repeat. MusicFS alone: the side-by-side figures (rclone, the plain client)
are bench/run_bench.py's and bench/remote_bench.py's.

    .venv/bin/python bench/cold_read.py --origin seaweedfs --rtt 20 --repeat 5 [--big-mb 40] [--warm]
                                        [--set 'readahead="64M"' --set 'chunk_size="2M"' ...]

Each repetition: a fresh state and cache dir, mount (not timed), page cache dropped, open + read to the end in
1 MiB reads (SHA-256 checked against the source); with --warm the page cache is dropped once more and the file read
again on the same mount (the chunk cache on disk). Printed per repetition: MB/s, the daemon's CPU seconds (user +
system) during the read and how busy the machine's two CPUs were; then the median.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Proxy, drop_caches, log  # noqa: E402
from run_bench import Mount  # noqa: E402

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[int, int]:
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def timed_read(path: str, pid: int) -> tuple[float, float, float, str]:
    """(MB/s, daemon CPU seconds, CPUs busy, sha256) of one read of `path` to its end."""
    digest = hashlib.sha256()
    busy0, cpu0 = machine_busy(), cpu_seconds(pid)
    started = time.perf_counter()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    seconds = time.perf_counter() - started
    busy1 = machine_busy()
    cpus = os.cpu_count() or 1
    return (size / seconds / 1e6, cpu_seconds(pid) - cpu0,
            (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * cpus, digest.hexdigest())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--origin", choices=["local", "seaweedfs", "moto", "sftp"], default="local")
    p.add_argument("--rtt", type=float, default=0.0, help="added round trip in ms (remote origins; default 0)")
    p.add_argument("--big-mb", type=int, default=40, help="size of the FLAC in MB (default 40)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warm", action="store_true", help="also read again from the chunk cache (page cache dropped)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a line of the mount's config file, in TOML (strings quoted: readahead=\"64M\")")
    args = p.parse_args()

    from musicfs.commands.demo import BIG_FILE_PATH, make_library

    work = tempfile.mkdtemp(prefix="musicfs-cold-read-")
    servers: list = []
    try:
        lib = os.path.join(work, "lib")
        make_library(lib, 2, big_file_mb=args.big_mb, hostile=False)
        source_file = os.path.join(lib, BIG_FILE_PATH)
        size = os.path.getsize(source_file)
        want = hashlib.sha256(Path(source_file).read_bytes()).hexdigest()
        env, flags, source = {}, [], lib
        if args.origin in ("seaweedfs", "moto"):
            import boto3

            from musicfs_test_utils.servers import MotoServer, SeaweedServer

            server = (SeaweedServer() if args.origin == "seaweedfs" else MotoServer(mode="process")).start()
            servers.append(server)
            s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{server.port}", aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
            s3.create_bucket(Bucket="bench")
            for path in glob.glob(os.path.join(lib, "**", "*"), recursive=True):
                if os.path.isfile(path):
                    s3.upload_file(path, "bench", "lib/" + os.path.relpath(path, lib))
            proxy = Proxy(server.port, args.rtt)
            servers.append(proxy)
            env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
            source = "s3://bench/lib"
        elif args.origin == "sftp":
            from musicfs_test_utils.servers import SshServer

            server = SshServer().start()
            servers.append(server)
            proxy = Proxy(server.port, args.rtt)
            servers.append(proxy)
            known_hosts = os.path.join(work, "known_hosts")
            Path(known_hosts).write_text(f"[127.0.0.1]:{proxy.port} {server.host_public_key}\n")
            source = f"sftp://{server.user}@127.0.0.1:{proxy.port}{lib}"
            flags = ["--sftp-identity", server.identity_file, "--sftp-known-hosts", known_hosts]
        config = os.path.join(work, "musicfs.toml")
        Path(config).write_text("".join(f"{item}\n" for item in args.set))  # TOML lines as given
        rates, warm_rates = [], []
        for rep in range(args.repeat):
            run = os.path.join(work, f"run{rep}")
            mountpoint = os.path.join(run, "mnt")
            argv = ["env", *[f"{k}={v}" for k, v in env.items()], sys.executable, "-m", "musicfs", "mount", source,
                    mountpoint, "--state-dir", os.path.join(run, "state"), "--cache-dir", os.path.join(run, "cache"),
                    "--config", config, *flags]
            with Mount("musicfs", f"cold read #{rep + 1}", argv, mountpoint, os.path.join(run, "daemon.log")) as m:
                target = next(p for p in glob.glob(os.path.join(mountpoint, "**", "*.flac"), recursive=True)
                              if os.path.getsize(p) == size)
                drop_caches()
                rate, cpu, busy, got = timed_read(target, m.proc.pid)
                if got != want:
                    raise SystemExit(f"cold read #{rep + 1}: the bytes differ from the source")
                rates.append(rate)
                line = f"cold {rate:.0f} MB/s, daemon CPU {cpu:.2f} s, CPUs busy {busy:.2f}"
                if args.warm:
                    drop_caches()
                    rate, cpu, busy, got = timed_read(target, m.proc.pid)
                    if got != want:
                        raise SystemExit(f"warm read #{rep + 1}: the bytes differ from the source")
                    warm_rates.append(rate)
                    line += f"; warm {rate:.0f} MB/s, daemon CPU {cpu:.2f} s, CPUs busy {busy:.2f}"
                log(f"#{rep + 1}: {line}")
        summary = f"median of {args.repeat}: cold {statistics.median(rates):.0f} MB/s"
        if warm_rates:
            summary += f", warm {statistics.median(warm_rates):.0f} MB/s"
        print(f"{args.origin}, {args.rtt:g} ms, {size / 1e6:.1f} MB: {summary}")
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
