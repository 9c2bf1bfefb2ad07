"""Issue 13, metrics: the collector turns fake statistics records into Prometheus families; the read latency
histogram; the records handed over from the trio loop; the server's lifetime; the `metrics` key and flag."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from musicfs.cache.chunk_cache import CacheStatistics
from musicfs.daemon.fuse_ops import OperationsStatistics
from musicfs.daemon.metrics import (
    MetricsRecords,
    MetricsServer,
    MetricsUnavailable,
    MusicFSCollector,
    on_loop,
)
from musicfs.library.pins import PinInfo, PinsStatistics
from musicfs.origins.base import SessionStatistics
from musicfs.origins.health_records import OriginStatistics
from musicfs.read.readahead import ReadAheadStatistics
from musicfs.read.reader import ReaderStatistics
from musicfs.shared.config import load
from musicfs.shared.errors import BadArgument, ConfigError
from musicfs.shared.latency import LatencyHistogram

SECRET_SOURCE = "s3://AKIAKEY:s3cr3t/x+y@bucket/music"


def _records(readahead: ReadAheadStatistics | None = None) -> MetricsRecords:
    hist = LatencyHistogram(bounds=(0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 2.0):
        hist.observe(seconds)
    return MetricsRecords(
        origins=(
            OriginStatistics(name="/srv/music", state="healthy", active=True, requests=7,
                             results={"ok": 6, "timeout": 1}, bytes_fetched=6 << 20, retries=2, failovers=1),
            OriginStatistics(name=SECRET_SOURCE, state="unhealthy", results={"odd": 3}),
            OriginStatistics(name="sftp://me@nas/music", state="healthy",
                             sessions=SessionStatistics(sessions=2, starting=0, started=5, replaced=1,
                                                        requests_waiting=9)),
        ),
        cache=CacheStatistics(state="unstable", reason="EIO", since_s=1.0, used_bytes=3 << 20,
                              quota_bytes=10 << 30, chunks=3, pinned=2, protected=1, quarantine_bytes=0,
                              quarantine_files=0, probes=4, failed_probes=1, transitions=1, bad_chunks=1,
                              passthrough_reads=5, uncached_reads=0),
        reader=ReaderStatistics(memory_hits=11, cache_hits=4, origin_fetches=6, memory_bytes=1 << 20),
        fuse=OperationsStatistics(requests=40, errors=2, errors_by_handler={"read": 2}, open_files=1, open_dirs=0,
                                  known_inodes=5, retired_inodes=0, read_seconds=hist.statistics()),
        readahead=readahead)


def _scrape(collector: MusicFSCollector) -> dict[tuple[str, tuple], float]:
    """Render through a real registry and parse the text back: (sample name, sorted labels) -> value."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_collector_exports_the_records_with_redacted_origin_labels():
    samples = _scrape(MusicFSCollector(lambda: _records()))
    o = (("origin", "/srv/music"),)
    assert samples[("musicfs_up", ())] == 1
    assert samples[("musicfs_origin_bytes_total", o)] == 6 << 20
    assert samples[("musicfs_origin_requests_total", (("origin", "/srv/music"), ("result", "ok")))] == 6
    assert samples[("musicfs_origin_requests_total", (("origin", "/srv/music"), ("result", "timeout")))] == 1
    assert samples[("musicfs_origin_requests_total", (("origin", "/srv/music"), ("result", "fatal")))] == 0
    assert samples[("musicfs_origin_up", o)] == 1
    assert samples[("musicfs_origin_active", o)] == 1
    assert samples[("musicfs_origin_retries_total", o)] == 2
    assert samples[("musicfs_origin_failovers_total", o)] == 1
    redacted = (("origin", "s3://***@bucket/music"),)
    assert samples[("musicfs_origin_up", redacted)] == 0
    assert samples[("musicfs_origin_state", redacted + (("state", "unhealthy"),))] == 1
    assert samples[("musicfs_origin_state", redacted + (("state", "healthy"),))] == 0
    assert samples[("musicfs_origin_requests_total", redacted + (("result", "odd"),))] == 3  # an unknown result
    assert not any("s3cr3t" in v or "AKIAKEY" in v for _, labels in samples for _, v in labels)
    nas = (("origin", "sftp://me@nas/music"),)  # an origin that keeps connections of its own: its ssh sessions
    assert samples[("musicfs_origin_sessions", nas)] == 2
    assert samples[("musicfs_origin_sessions_started_total", nas)] == 5
    assert samples[("musicfs_origin_sessions_replaced_total", nas)] == 1
    assert samples[("musicfs_origin_requests_waiting", nas)] == 9
    assert ("musicfs_origin_sessions", o) not in samples  # a folder keeps none

    assert samples[("musicfs_cache_hits_total", (("tier", "memory"),))] == 11
    assert samples[("musicfs_cache_hits_total", (("tier", "disk"),))] == 4
    assert samples[("musicfs_cache_misses_total", ())] == 6
    assert samples[("musicfs_cache_bytes", ())] == 3 << 20
    assert samples[("musicfs_cache_quota_bytes", ())] == 10 << 30
    assert samples[("musicfs_cache_pinned_chunks", ())] == 2
    assert samples[("musicfs_cache_protected_chunks", ())] == 1
    assert [s for s in ("normal", "unstable", "down") if samples[("musicfs_cache_state", (("state", s),))]] == ["unstable"]
    assert samples[("musicfs_cache_passthrough_reads_total", ())] == 5
    assert samples[("musicfs_fuse_requests_total", ())] == 40
    assert samples[("musicfs_fuse_errors_total", (("handler", "read"),))] == 2


def test_the_read_histogram_is_cumulative_with_its_sum_and_count():
    samples = _scrape(MusicFSCollector(lambda: _records()))
    buckets = {dict(labels)["le"]: v for (name, labels), v in samples.items() if name == "musicfs_read_seconds_bucket"}
    # 0.005 and 0.01 (a value on a bound is in it) <= 0.01; 0.05 <= 0.1; 2.0 only in +Inf
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 3, "+Inf": 4}
    assert samples[("musicfs_read_seconds_count", ())] == 4
    assert samples[("musicfs_read_seconds_sum", ())] == pytest.approx(2.065)


def test_readahead_series_are_absent_without_a_source_and_exported_with_one():
    without = _scrape(MusicFSCollector(lambda: _records()))
    assert not [name for name, _ in without if name.startswith("musicfs_readahead")]
    ra = ReadAheadStatistics(budget_bytes=32 << 20, inflight_bytes=3 << 20, queued=1, streams=2, started=9,
                             dropped=2, failed=1, next_track=1)
    samples = _scrape(MusicFSCollector(lambda: _records(ra)))
    assert samples[("musicfs_readahead_bytes", ())] == 3 << 20
    assert samples[("musicfs_readahead_budget_bytes", ())] == 32 << 20
    assert samples[("musicfs_readahead_streams", ())] == 2
    assert samples[("musicfs_readahead_jobs_total", (("event", "started"),))] == 9
    assert samples[("musicfs_readahead_jobs_total", (("event", "dropped"),))] == 2


def test_pin_progress_is_exported_when_pins_exist():
    from dataclasses import replace

    assert not [n for n, _ in _scrape(MusicFSCollector(lambda: _records())) if n.startswith("musicfs_pin")]
    pins = PinsStatistics(pins=(PinInfo(path="A/B", tracks=3, bytes=30 << 20, cached_bytes=10 << 20,
                                        state="fetching"),), files=3, bytes=30 << 20, cached_bytes=10 << 20,
                          fetched_chunks=10, failures=1)
    samples = _scrape(MusicFSCollector(lambda: replace(_records(), pins=pins)))
    assert samples[("musicfs_pin_bytes", (("state", "wanted"),))] == 30 << 20
    assert samples[("musicfs_pin_bytes", (("state", "cached"),))] == 10 << 20
    assert samples[("musicfs_pinned_files", ())] == 3 and samples[("musicfs_pins", ())] == 1
    assert samples[("musicfs_pin_fetched_chunks_total", ())] == 10
    assert samples[("musicfs_pin_failures_total", ())] == 1


def test_without_records_only_musicfs_up_0():
    for collector in (MusicFSCollector(), MusicFSCollector(lambda: None)):
        samples = _scrape(collector)
        assert samples == {("musicfs_up", ()): 0}
    attached = MusicFSCollector()
    attached.attach(lambda: MetricsRecords())
    assert _scrape(attached)[("musicfs_up", ())] == 1
    attached.detach()
    assert _scrape(attached) == {("musicfs_up", ()): 0}


@pytest.mark.expected_log(r"metrics: could not read the statistics: boom")
def test_a_failing_source_is_a_logged_scrape_with_up_0_not_a_traceback():
    def boom():
        raise RuntimeError("boom")

    assert _scrape(MusicFSCollector(boom)) == {("musicfs_up", ()): 0}


async def test_on_loop_takes_the_records_on_the_trio_loop_from_another_thread():
    import threading

    loop_thread = threading.get_ident()
    seen = []

    def records():
        seen.append(threading.get_ident())
        return MetricsRecords()

    source = on_loop(trio.lowlevel.current_trio_token(), records)
    got = await trio.to_thread.run_sync(source)
    assert got == MetricsRecords() and seen == [loop_thread]


def test_on_loop_after_the_loop_ended_gives_none():
    async def token():
        return trio.lowlevel.current_trio_token()

    source = on_loop(trio.run(token), MetricsRecords)
    assert source() is None


# -- the server -----------------------------------------------------------------------------------------------
def test_the_server_serves_metrics_with_process_metrics_and_stops():
    server = MetricsServer("127.0.0.1:0")
    server.start()
    try:
        server.collector.attach(lambda: _records())
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert "musicfs_origin_bytes_total{origin=\"/srv/music\"} 6.291456e+06" in text
        assert "process_resident_memory_bytes" in text and "python_info" in text
    finally:
        server.stop()
    with pytest.raises(OSError):  # nobody listens any more
        socket.create_connection(("127.0.0.1", int(server.address.rsplit(":", 1)[1])), timeout=2).close()


def test_a_taken_port_is_a_clear_error_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(f"127.0.0.1:{port}")
        with pytest.raises(MetricsUnavailable, match=rf"metrics: cannot listen on 127\.0\.0\.1:{port}: "
                                                     r"Address already in use"):
            server.start()
        server.stop()  # nothing started: nothing to stop, no error


# -- config --------------------------------------------------------------------------------------------------
def test_metrics_is_off_by_default_and_takes_host_port(tmp_path):
    assert load(None, {}).metrics == ""
    assert load(None, {"metrics": "127.0.0.1:9567"}).metrics == "127.0.0.1:9567"
    conf = tmp_path / "c.toml"
    conf.write_text('metrics = "[::1]:9567"\n')
    assert load(str(conf), {}).metrics == "[::1]:9567"


@pytest.mark.parametrize("value", ["9567", "localhost:http", "127.0.0.1:70000", ":9567", "::1:9567"])
def test_a_bad_metrics_address_names_the_flag_or_the_key(tmp_path, value):
    with pytest.raises(BadArgument, match=r"^--metrics: "):
        load(None, {"metrics": value})
    conf = tmp_path / "c.toml"
    conf.write_text(f'metrics = "{value}"\n')
    with pytest.raises(ConfigError, match=r"^metrics: ") as caught:
        load(str(conf), {})
    assert not isinstance(caught.value, BadArgument)
    conf.write_text("metrics = 9567\n")
    with pytest.raises(ConfigError, match=r"^metrics: must be a string HOST:PORT"):
        load(str(conf), {})


def test_page_push_series_are_absent_while_pushing_is_off_and_exported_with_it():
    from dataclasses import replace

    from musicfs.read import PagePushStatistics

    assert not [n for n, _ in _scrape(MusicFSCollector(lambda: _records())) if n.startswith("musicfs_page")]
    pages = PagePushStatistics(pushed_bytes=5 << 20, pushes=5, queued_bytes=1 << 20, dropped_full=2, dropped_stale=1,
                               failed=3, failed_by_errno={"ENOENT": 2, "ENOMEM": 1}, retired=4)
    samples = _scrape(MusicFSCollector(lambda: replace(_records(), pages=pages)))
    assert samples[("musicfs_page_pushes_total", (("result", "pushed"),))] == 5
    assert samples[("musicfs_page_pushes_total", (("result", "dropped_full"),))] == 2
    assert samples[("musicfs_page_pushes_total", (("result", "failed"),))] == 3
    assert samples[("musicfs_page_push_failures_total", (("errno", "ENOENT"),))] == 2
    assert samples[("musicfs_page_pushed_bytes_total", ())] == 5 << 20
    assert samples[("musicfs_page_push_queued_bytes", ())] == 1 << 20
    assert samples[("musicfs_page_retired_inodes_total", ())] == 4
