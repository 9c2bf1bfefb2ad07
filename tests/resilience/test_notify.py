"""L2: sd_notify on a socket the test owns — READY after the mount answers, STATUS, watchdog (2.10, 3.1)."""

from __future__ import annotations

import os
import signal

import pytest

from musicfs_test_utils.daemon import is_mounted

pytestmark = pytest.mark.l2


@pytest.mark.resilience("2.10")
def test_ready_comes_only_after_the_mount_answers(small_library, daemons):
    seen = {}

    def at_ready(message):
        if message.fields.get("READY") == "1":
            # Checked in the receiving thread the moment READY lands.
            seen["mounted"] = is_mounted(daemon.mountpoint)
            seen["listing"] = os.listdir(daemon.mountpoint)

    daemon = daemons([small_library[0]], on_notify=at_ready)
    daemon.start()
    daemon.wait_for_mount()
    ready = daemon.notify.wait_for("READY", "1")
    assert seen["mounted"] and seen["listing"]
    assert "tracks" in ready.fields["STATUS"] and "cache" in ready.fields["STATUS"]
    extend = daemon.notify.find("EXTEND_TIMEOUT_USEC")
    assert extend and extend[0].at <= ready.at  # the first scan asked systemd for time before READY
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert daemon.notify.find("STOPPING", "1")


@pytest.mark.resilience("2.10")
def test_without_notify_socket_the_daemon_is_silent_and_serves(small_library, daemons):
    daemon = daemons([small_library[0]], notify=False)
    daemon.start()
    daemon.wait_for_mount()
    assert os.listdir(daemon.mountpoint)
    assert daemon.stop() == 0
    assert "sd_notify" not in daemon.log_text()


@pytest.mark.resilience("3.1")
def test_watchdog_pings_at_half_the_interval_and_stops_when_the_loop_wedges(small_library, daemons):
    interval = 0.2  # WATCHDOG_USEC/2
    daemon = daemons([small_library[0]], env={"WATCHDOG_USEC": str(int(interval * 2e6)),
                                              "FAILPOINTS": "watchdog-loop-check=5*off->sleep(4000)"})
    daemon.start()
    daemon.wait_for_mount()
    pings = [daemon.notify.wait_for("WATCHDOG", "1", count=n, timeout=10).at for n in range(1, 6)]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(interval * 0.5 <= g <= interval * 5 for g in gaps), gaps
    # The sixth check wedges the whole trio loop for 4 s: no ping may arrive meanwhile.
    sixth = daemon.notify.wait_for("WATCHDOG", "1", count=6, timeout=15).at
    assert sixth - pings[-1] >= 3.5
