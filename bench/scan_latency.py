"""First-scan tracks/s over S3 (moto) behind the chaos proxy with added latency. A benchmark, not a test.

    PYTHONPATH=. python bench/scan_latency.py --tracks 300 --latency-ms 20 --workers 4 0

`--workers 0` is the origin's own scan_parallelism (S3: 32); 4 was the scanner's fixed default before.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from musicfs.origins.registry import OriginRegistry
from musicfs.origins.s3 import S3Origin
from musicfs.sync import Scanner
from musicfs_test_utils.chaos_proxy import ProxyThread
from musicfs_test_utils.fixtures import make_library, open_catalog
from musicfs_test_utils.servers import MotoServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracks", type=int, default=300)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("workers", type=int, nargs="+")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lib"
        make_library(root, args.tracks)
        with MotoServer(mode="process") as moto, ProxyThread(moto.host, moto.port) as proxy:
            moto.make_bucket("scan")
            moto.upload_dir(root, "scan", prefix="lib")
            if args.latency_ms:
                proxy.add_toxic("lag", "latency", latency_ms=args.latency_ms)
            options = moto.origin_options(endpoint_url=f"http://{proxy.host}:{proxy.port}")
            for workers in args.workers:
                rates = []
                for run in range(args.runs):
                    state = Path(tmp) / f"state-{workers}-{run}"
                    cat = open_catalog(str(state))
                    origin = S3Origin.from_url("s3://scan/lib", options)
                    t0 = time.perf_counter()
                    result = Scanner(cat, OriginRegistry([origin]), workers=workers or None).scan()
                    rates.append((result.added + result.skipped) / (time.perf_counter() - t0))
                    origin.close()
                    cat.close()
                    shutil.rmtree(state)
                rates.sort()
                print(f"S3 +{args.latency_ms}ms, {args.tracks} tracks, workers {workers or 'origin default'}: "
                      f"median {rates[len(rates) // 2]:.0f} files/s (runs: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
