"""L2 (issue 13, metrics): the real daemon serves /metrics from its statistics records; a cold read shows in the
origin bytes and the read latency histogram; a taken metrics port refuses the start before anything is mounted."""

from __future__ import annotations

import os
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from musicfs.commands.demo import BIG_FILE_PATH
from musicfs_test_utils.daemon import is_mounted
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import make_library

pytestmark = pytest.mark.l2


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_cold_read_grows_origin_bytes_and_the_read_histogram(tmp_path, daemons):
    root = tmp_path / "library"
    make_library(root, 2, big_file_mb=2, hostile=False)  # a track larger than what the scan reads of it
    files = [root / BIG_FILE_PATH]
    daemon = daemons([root], extra_args=["--metrics", "127.0.0.1:0"])
    daemon.start()
    daemon.wait_for_mount()
    address = daemon.status()["metrics"]  # port 0: the daemon says which one it got
    assert address.startswith("127.0.0.1:") and not address.endswith(":0"), address
    origin = (("origin", str(root)),)

    before = scrape(address)
    assert before[("musicfs_origin_bytes_total", origin)] > 0  # the first scan's tag reads count too
    assert before[("musicfs_up", ())] == 1
    assert before[("musicfs_cache_state", (("state", "normal"),))] == 1
    assert before[("musicfs_cache_quota_bytes", ())] == 10 << 30
    assert ("process_resident_memory_bytes", ()) in before  # the default process metrics

    track = max((p for p in files if p.suffix in (".flac", ".mp3", ".ogg")), key=lambda p: p.stat().st_size)
    size = track.stat().st_size
    in_mount = next(os.path.join(d, n) for d, _, names in os.walk(daemon.mountpoint) for n in names
                    if os.path.getsize(os.path.join(d, n)) == size and n.endswith(track.suffix))
    with open(in_mount, "rb") as fh:  # never read before: what the scan did not read comes from the origin
        assert len(fh.read()) == size

    after = scrape(address)
    grown = after[("musicfs_origin_bytes_total", origin)] - before[("musicfs_origin_bytes_total", origin)]
    assert grown >= size - (1 << 20)  # at most what the scan kept of it (sync.KEEP_FETCHED) was cached before
    assert after[("musicfs_origin_bytes_total", origin)] >= size  # every byte came from the origin once
    assert after[("musicfs_origin_requests_total", origin + (("result", "ok"),))] > \
        before[("musicfs_origin_requests_total", origin + (("result", "ok"),))]
    assert after[("musicfs_origin_up", origin)] == 1
    assert after[("musicfs_cache_misses_total", ())] > before[("musicfs_cache_misses_total", ())]
    reads = after[("musicfs_read_seconds_count", ())] - before[("musicfs_read_seconds_count", ())]
    assert reads >= 1
    assert after[("musicfs_read_seconds_bucket", (("le", "+Inf"),))] == after[("musicfs_read_seconds_count", ())]
    assert after[("musicfs_read_seconds_sum", ())] > before[("musicfs_read_seconds_sum", ())]
    # what was fetched is cached: a reader may have had a chunk's bytes while it was still being stored
    eventually(lambda: scrape(address)[("musicfs_cache_bytes", ())] >= size, 30, "the fetched chunks cached")
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()


def test_a_taken_metrics_port_refuses_the_start_naming_the_address(small_library, daemons):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = daemons([small_library[0]], extra_args=["--metrics", f"127.0.0.1:{port}"])
        daemon.start()
        code = daemon.wait(60)
    log = daemon.log_text()
    assert code == 1, log
    assert f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in log, log
    assert "Traceback" not in log
    assert not is_mounted(daemon.mountpoint) and not os.path.exists(daemon.mountpoint)  # before mounting


def test_a_bad_metrics_flag_is_a_usage_error(small_library, daemons):
    daemon = daemons([small_library[0]], extra_args=["--metrics", "9567"])
    daemon.start()
    code = daemon.wait(60)
    log = daemon.log_text()
    assert code == 2, log
    assert "--metrics: must be HOST:PORT" in log and "Traceback" not in log
