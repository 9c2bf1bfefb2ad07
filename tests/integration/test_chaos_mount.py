"""N.3 and N.7 on a real mount: `musicfs mount s3://... | sftp://...` in a child process, its origin behind
the chaos proxy. Reads happen in child processes (each drops the file's page cache first, so the daemon
really answers); status comes from the daemon's status socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from musicfs_test_utils.assertions import file_digest, tree_files
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.mount_io import mount_file_for, read_in_child, read_until_cached

pytestmark = [pytest.mark.l2, pytest.mark.l3]

KINDS = ["s3", "sftp"]
READ_TIMEOUT = 2.0


def start_remote_mount(kind: str, via_proxy, daemons, tmp_path: Path):
    proxy, url, options = via_proxy(kind, audio=True, connect_timeout=1, read_timeout=1)
    extra = []
    if kind == "sftp":  # the CLI flags, the way a user passes them
        extra = ["--sftp-identity", options.pop("identity_file"), "--sftp-known-hosts", options.pop("known_hosts")]
    config = write_config(tmp_path / f"{kind}.toml", read_timeout=READ_TIMEOUT, chunk_size="64K", health_interval=0.3,
                          health_timeout=1.0, origin_options=options)
    daemon = daemons([url], name=kind, extra_args=["--config", str(config), *extra])
    daemon.start()
    daemon.wait_for_mount(timeout=90)
    return proxy, daemon


def pick_files(small_library) -> tuple[Path, Path]:
    """(a small file to cache, the biggest file: several 64K chunks, never read before)."""
    good = sorted(small_library[2], key=lambda p: p.stat().st_size)
    audio = [p for p in good if p.suffix in (".flac", ".mp3", ".ogg")]
    return audio[0], audio[-1]


@pytest.mark.resilience("N.3")
@pytest.mark.parametrize("kind", KINDS)
def test_n3_blackholed_origin_on_a_mount_gives_eio_in_time_then_recovers(kind, via_proxy, daemons, small_library,
                                                                        tmp_path):
    proxy, daemon = start_remote_mount(kind, via_proxy, daemons, tmp_path)
    cached, uncached = pick_files(small_library)
    m_cached, m_uncached = mount_file_for(daemon.mountpoint, cached), mount_file_for(daemon.mountpoint, uncached)
    assert read_until_cached(daemon, m_cached) == file_digest(cached)  # cached (once its version settled)

    proxy.add_toxic("hole", "timeout", timeout_ms=0)
    outcome, code, seconds = read_in_child(m_uncached)
    assert (outcome, code) == ("ERR", "5"), f"expected EIO, got {outcome} {code}"
    # One FUSE read is bounded by read_timeout; the kernel may retry a failed readahead once.
    assert seconds < 2 * READ_TIMEOUT + 1.0, f"the reading process waited {seconds:.1f}s"
    eventually(lambda: daemon.status()["origins"][0]["state"] == "unhealthy", 15, "origin marked unhealthy")
    doc = daemon.status()
    assert doc["offline"] is True and doc["origins"][0]["last_error"]
    assert read_in_child(m_cached)[:2] == ("OK", file_digest(cached))  # cached bytes still served

    proxy.remove_toxic("hole")
    eventually(lambda: not daemon.status()["offline"], 15, "back online")
    assert daemon.status()["origins"][0]["state"] == "healthy"
    assert read_in_child(m_uncached)[:2] == ("OK", file_digest(uncached))
    assert daemon.stop() == 0


@pytest.mark.resilience("N.7")
@pytest.mark.parametrize("kind", KINDS)
def test_n7_proxy_down_then_up_on_a_mount_goes_offline_and_recovers(kind, via_proxy, daemons, small_library, tmp_path):
    proxy, daemon = start_remote_mount(kind, via_proxy, daemons, tmp_path)
    cached, uncached = pick_files(small_library)
    m_cached, m_uncached = mount_file_for(daemon.mountpoint, cached), mount_file_for(daemon.mountpoint, uncached)
    assert read_until_cached(daemon, m_cached) == file_digest(cached)  # cached (once its version settled)

    proxy.disable()
    eventually(lambda: daemon.status()["offline"], 15, "offline")
    assert all(o["state"] == "unhealthy" for o in daemon.status()["origins"])
    assert read_in_child(m_cached)[:2] == ("OK", file_digest(cached))
    outcome, code, seconds = read_in_child(m_uncached)
    assert (outcome, code) == ("ERR", "5")
    assert seconds < 1.0, f"offline reads must fail fast, took {seconds:.2f}s"

    proxy.enable()
    eventually(lambda: not daemon.status()["offline"], 15, "back online")
    assert read_in_child(m_uncached)[:2] == ("OK", file_digest(uncached))
    assert daemon.stop() == 0
    assert "OFFLINE" in daemon.log_text() or "every origin is down" in daemon.log_text()


@pytest.mark.resilience("X.3")
@pytest.mark.parametrize("kind", KINDS)
def test_a_remote_mount_starts_with_its_server_unreachable_and_serves_its_cache(kind, via_proxy, daemons,
                                                                               small_library, tmp_path):
    proxy, daemon = start_remote_mount(kind, via_proxy, daemons, tmp_path)
    cached, uncached = pick_files(small_library)
    m_cached, m_uncached = mount_file_for(daemon.mountpoint, cached), mount_file_for(daemon.mountpoint, uncached)
    listing = sorted(str(p.relative_to(daemon.mountpoint)) for p in tree_files(daemon.mountpoint))
    assert read_until_cached(daemon, m_cached) == file_digest(cached)  # cached (once its version settled)
    assert daemon.stop() == 0

    proxy.disable()  # the server is unreachable when the daemon starts again (same state and cache)
    daemon.start()
    daemon.wait_for_mount()
    eventually(lambda: daemon.status()["offline"], 15, "offline")
    assert sorted(str(p.relative_to(daemon.mountpoint)) for p in tree_files(daemon.mountpoint)) == listing
    assert read_in_child(m_cached)[:2] == ("OK", file_digest(cached))
    outcome, code, seconds = read_in_child(m_uncached)
    assert (outcome, code) == ("ERR", "5") and seconds < 1.0

    proxy.enable()
    eventually(lambda: not daemon.status()["offline"], 15, "back online")
    assert read_in_child(m_uncached)[:2] == ("OK", file_digest(uncached))
    assert daemon.stop() == 0
