"""Row 5.3: file descriptors exhausted. EMFILE becomes EIO for that request with one clear log line, the
cache is not blamed, and everything works again once descriptors are free.

The process runs out of descriptors for real: a child process lowers its RLIMIT_NOFILE soft limit and
opens /dev/null until EMFILE, then reads through MusicOperations (the FUSE handlers) over a real catalog,
CAS and local origin. A child, so the test process's own limit is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(r"""
    import errno, json, logging, os, resource, sys, time
    import pyfuse3, trio
    from musicfs.cache.cas import CasStore
    from musicfs.library.catalog import Catalog, FileRow
    from musicfs.daemon.fuse_ops import MusicOperations
    from musicfs.origins.local import LocalOrigin
    from musicfs.origins.registry import OriginRegistry
    from musicfs.cache.chunk_cache import ChunkCache
    from musicfs.read import build_reader
    from musicfs_test_utils.fixtures import setup_test_tree

    base = sys.argv[1]
    CHUNK = 16 * 1024
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    logging.getLogger().addHandler(Keep(level=logging.WARNING))
    data = {"cached.flac": bytes(range(256)) * 200, "fresh.flac": bytes(reversed(range(256))) * 150}
    os.makedirs(f"{base}/origin")
    for name, content in data.items():
        with open(f"{base}/origin/{name}", "wb") as fh:
            fh.write(content)
    catalog = Catalog(f"{base}/catalog.db")
    origin = LocalOrigin(f"{base}/origin")
    catalog.upsert_files([FileRow(path=st.path, kind="track", size=st.size, mtime_ns=st.mtime_ns, etag=st.etag,
                                  title=st.path) for st in origin.walk()])
    # as in tests/conftest.py: the files were just written; judged as if written an hour ago (racy versions)
    OriginRegistry.wall_clock = staticmethod(lambda: time.time() + 3600)
    cas = CasStore(f"{base}/cache", 1 << 30)
    rows = {r.path: r for r in catalog.files()}
    tree = setup_test_tree(list(rows.values()))
    ino = {n.file.path: n.ino for n in tree.walk_files()}

    def ops():  # memory_cache=0: every read reaches the disk cache or the origin
        reader = build_reader(catalog, ChunkCache(cas), OriginRegistry([origin], backoff=0.0), chunk_size=CHUNK, memory_cache=0,
                            read_timeout=10.0)
        return MusicOperations(tree, reader)

    async def read(o, name):
        try:
            info = await o.open(ino[name], os.O_RDONLY, None)
            try:
                got = await o.read(info.fh, 0, len(data[name]))
            finally:
                await o.release(info.fh)
            return "ok" if got == data[name] else "WRONG BYTES"
        except pyfuse3.FUSEError as exc:
            return errno.errorcode[exc.errno]

    async def main():
        o = ops()
        out = {"warm": await read(o, "cached.flac")}
        o = ops()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            out["hog_error"] = errno.errorcode[exc.errno]
        del records[:]
        out["exhausted"] = {name: await read(o, name) for name in data}
        out["exhausted_log"] = list(records)
        out["cache_state_while_exhausted"] = o.reader.cache.statistics().state
        for fd in hog:
            os.close(fd)
        del records[:]
        out["recovered"] = {name: await read(o, name) for name in data}
        out["recovered_log"] = list(records)
        manifest = catalog.manifest(rows["fresh.flac"].version)
        out["fresh_cached_after"] = bool(manifest) and all(cas.has(d) for d in manifest.values())
        out["cache_state_after"] = o.reader.cache.statistics().state
        print(json.dumps(out))

    trio.run(main)
""")


@pytest.mark.resilience("5.3")
def test_emfile_is_eio_for_that_request_one_log_line_and_full_recovery(tmp_path):
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["warm"] == "ok" and out["hog_error"] == "EMFILE"

    # while no descriptor is left: each read fails with EIO (never a crash, never wrong bytes) ...
    assert out["exhausted"] == {"cached.flac": "EIO", "fresh.flac": "EIO"}
    # ... with exactly one clear log line per failed request
    log = out["exhausted_log"]
    assert len(log) == 2, log
    assert all(line.startswith("ERROR musicfs.daemon.fuse_ops: fuse read:") for line in log), log
    assert "too many open files (EMFILE)" in log[0]  # the cache could not open the chunk file
    assert "Too many open files" in log[1]  # the origin could not open the source file
    assert out["cache_state_while_exhausted"] == "normal"  # running out of fds is not a broken cache disk

    # once descriptors are free again everything works, with nothing left to clean up
    assert out["recovered"] == {"cached.flac": "ok", "fresh.flac": "ok"}
    assert out["recovered_log"] == []
    assert out["fresh_cached_after"] and out["cache_state_after"] == "normal"
