"""Single-stream throughput of the origin API alone (no FUSE, no cache): S3 on moto, SFTP on sshd, each
behind the chaos proxy with an added latency. A benchmark, not a test.

    PYTHONPATH=. python bench/origin_stream.py --kind sftp --latency-ms 20 --mib 16 --runs 3

Modes: `serial` reads 1 MiB chunks one after the other with `origin.read` (what the reader does without
read-ahead; it is all the API had before issue 11), `stream` reads them through `origin.open_stream`
with `--window` chunks in flight on threads (what a read-ahead window does). Prints the median MB/s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from musicfs.origins.base import Origin
from musicfs_test_utils.chaos_proxy import ProxyThread
from musicfs_test_utils.servers import MotoServer, SshServer

CHUNK = 1 << 20


def serial(origin, path, expect, size, window):
    return b"".join(origin.read(path, off, CHUNK, expect) for off in range(0, size, CHUNK))


def stream(origin, path, expect, size, window):
    with origin.open_stream(path, expect) as s, ThreadPoolExecutor(window) as pool:
        return b"".join(pool.map(lambda off: s.read(off, CHUNK), range(0, size, CHUNK)))


def measure(origin, path, data, runs, window, modes):
    expect = origin.stat(path)
    out = {}
    for name in modes:
        fn = {"serial": serial, "stream": stream}[name]
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            got = fn(origin, path, expect, len(data), window)
            times.append(time.perf_counter() - t0)
            assert got == data, f"{name}: wrong bytes"
        out[name] = len(data) / statistics.median(times) / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=("s3", "sftp"), required=True)
    ap.add_argument("--latency-ms", type=int, default=0)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=int, default=8)
    args = ap.parse_args()
    data = random.Random(0).randbytes(args.mib << 20)
    modes = ["serial"] + (["stream"] if hasattr(Origin, "open_stream") else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lib"
        root.mkdir()
        (root / "big.flac").write_bytes(data)
        if args.kind == "s3":
            from musicfs.origins.s3 import S3Origin

            with MotoServer(mode="process") as moto:
                moto.make_bucket("bench")
                moto.upload_dir(root, "bench", prefix="lib")
                with ProxyThread(moto.host, moto.port) as proxy:
                    if args.latency_ms:
                        proxy.add_toxic("lag", "latency", latency_ms=args.latency_ms)
                    origin = S3Origin.from_url("s3://bench/lib", moto.origin_options(
                        endpoint_url=f"http://{proxy.host}:{proxy.port}"))
                    res = measure(origin, "big.flac", data, args.runs, args.window, modes)
                    origin.close()
        else:
            from musicfs.origins.sftp import SftpOrigin

            with SshServer() as ssh:
                with ProxyThread(ssh.host, ssh.port) as proxy:
                    if args.latency_ms:
                        proxy.add_toxic("lag", "latency", latency_ms=args.latency_ms)
                    known = Path(ssh.dir) / "known_hosts.proxy"
                    known.write_text(f"[{proxy.host}]:{proxy.port} {ssh.host_public_key}\n")
                    url = f"sftp://{quote(ssh.user)}@{proxy.host}:{proxy.port}{quote(str(root))}"
                    origin = SftpOrigin.from_url(url, ssh.origin_options(known_hosts=str(known)))
                    res = measure(origin, "big.flac", data, args.runs, args.window, modes)
                    origin.close()
    print(f"{args.kind} +{args.latency_ms}ms {args.mib} MiB, median of {args.runs}: "
          + ", ".join(f"{k} {v:.1f} MB/s" for k, v in res.items()))


if __name__ == "__main__":
    main()
