"""L2, row 7.5: local clients cannot hurt the mount.

* 1,500 idle connections to the metrics port of a daemon held to 1,024 descriptors (soft and hard): uncached
  reads, `musicfs pins` and the origin's health are unaffected, the daemon's descriptors and threads stay
  bounded, and once the idle clients are gone a scrape answers again.
* The control socket answers a pin of a path that is not UTF-8 and a request nested 100,000 levels deep
  with an error each, and then serves `musicfs pins` as before.
* A metrics address other machines can reach is refused unless asked for in so many words.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from musicfs.shared.statefiles import SOCKET_NAME
from musicfs_test_utils.assertions import file_digest
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.mount_io import mount_files_by_size, read_in_child

pytestmark = pytest.mark.l2

IDLE = 1500
FD_LIMIT = 1024


def start(daemons, root: Path, tmp_path: Path, **config):
    path = write_config(tmp_path / "musicfs.toml", **{"chunk_size": "64K", "metrics": "127.0.0.1:0",
                                                       "health_interval": 0.3, **config})
    daemon = daemons([root], extra_args=["--config", str(path)])
    daemon.start()
    daemon.wait_for_mount()
    return daemon


def musicfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "musicfs", *args], capture_output=True, text=True, timeout=60)


def pins_answer(daemon) -> list:
    done = musicfs("pins", "--json", "--state-dir", str(daemon.state_dir))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def scrape(address: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=3) as answer:
            return answer.read()
    except OSError:
        return None


def idle_connections(address: str, n: int) -> list[socket.socket]:
    """n connections that never send a byte (non-blocking connects: those past the server's backlog stay half
    open, as a slow-loris client's would)."""
    host, port = address.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    out = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        out.append(s)
    return out


@pytest.mark.resilience("7.5")
def test_1500_idle_metrics_connections_under_1024_descriptors_leave_the_mount_and_pins_working(library_copy,
                                                                                              daemons, tmp_path):
    root, files = library_copy
    daemon = start(daemons, root, tmp_path)
    address = daemon.status()["metrics"]
    assert scrape(address) is not None
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    pairs = mount_files_by_size(daemon.mountpoint, files)
    process = psutil.Process(daemon.pid)

    clients = idle_connections(address, IDLE)
    try:
        for origin_file, mount_file in pairs.items():  # uncached reads reach the origin
            assert read_in_child(mount_file)[:2] == ("OK", file_digest(origin_file))
        assert pins_answer(daemon) == []
        doc = daemon.status()
        assert doc["origins"][0]["state"] == "healthy" and not doc["offline"]
        assert doc["tasks"]["status"]["failures"] == 0
        assert process.num_fds() < FD_LIMIT // 2, f"{process.num_fds()} descriptors open"
        assert process.num_threads() < 100, f"{process.num_threads()} threads"
    finally:
        for client in clients:
            client.close()
    eventually(lambda: scrape(address), 30, "a scrape answered once the idle clients are gone")
    assert daemon.stop() == 0


def control(daemon, payload: bytes) -> dict:
    """One raw request on the daemon's control socket, and its JSON answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(15)
        s.connect(str(daemon.state_dir / SOCKET_NAME))
        s.sendall(payload + b"\n")
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while part := s.recv(65536):
            answer += part
    return json.loads(answer)


@pytest.mark.resilience("7.5")
@pytest.mark.expected_log(r"status socket: a 'pin' request failed")
def test_hostile_control_requests_get_an_error_each_and_pins_still_works(small_library, daemons, tmp_path):
    daemon = start(daemons, small_library[0], tmp_path)
    not_utf8 = json.dumps({"op": "pin", "paths": ["Artist\udcff/Album"]}).encode()
    answer = control(daemon, not_utf8)
    assert answer["ok"] is False and answer["error"]
    answer = control(daemon, b"[" * 100_000)
    assert answer == {"ok": False, "error": "request nested deeper than 16 levels"}
    assert pins_answer(daemon) == []
    assert daemon.status()["tasks"]["status"]["failures"] == 0
    assert daemon.stop() == 0


@pytest.mark.resilience("7.5")
def test_a_metrics_address_other_machines_reach_needs_metrics_public(small_library, tmp_path):
    done = musicfs("mount", str(small_library[0]), str(tmp_path / "mnt"), "--state-dir", str(tmp_path / "s"),
                   "--metrics", "0.0.0.0:0")
    assert done.returncode == 2 and "--metrics" in done.stderr and "metrics_public" in done.stderr
    assert not (tmp_path / "s").exists()
