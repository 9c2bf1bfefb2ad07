"""sd_notify sender and watchdog without a daemon (rows 2.10, 3.1, L1 parts)."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from musicfs.daemon import watchdog as wd
from musicfs.daemon.notify import Notifier, watchdog_interval
from musicfs_test_utils.assertions import assert_logs
from musicfs_test_utils.notify_socket import NotifySocket


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.send(READY=1) is False


def test_messages_reach_the_socket(tmp_path):
    with NotifySocket(str(tmp_path)) as sock:
        n = Notifier(sock.path)
        n.ready("12 tracks")
        n.extend_timeout(60, "scanning")
        n.stopping()
        assert sock.wait_for("READY", "1").fields["STATUS"] == "12 tracks"
        assert sock.wait_for("EXTEND_TIMEOUT_USEC").fields["EXTEND_TIMEOUT_USEC"] == "60000000"
        assert sock.wait_for("STOPPING", "1")


def test_a_dead_notify_socket_is_logged_once_and_never_raises(tmp_path):
    n = Notifier(str(tmp_path / "missing.sock"))
    with assert_logs(r"sd_notify to '.*missing\.sock' failed", count=1):
        assert n.send(READY=1) is False and n.send(STATUS="x") is False


def test_status_text_goes_out_as_utf8(tmp_path):
    with NotifySocket(str(tmp_path)) as sock:
        Notifier(sock.path).status("scanning: Björk – Homogenic")
        assert sock.wait_for("STATUS").fields["STATUS"] == "scanning: Björk – Homogenic"


@pytest.mark.expected_log(r"sd_notify to .* failed")
def test_a_socket_that_comes_back_gets_the_next_message(tmp_path):
    with NotifySocket(str(tmp_path)) as sock:
        path = sock.path
    n = Notifier(path)
    assert n.send(STATUS="nobody listens") is False
    with NotifySocket(str(tmp_path)) as sock:
        n.address = sock.path  # a fresh receiver (its own folder); the failed send left no stale socket behind
        assert n.send(STATUS="back") is True
        assert sock.wait_for("STATUS", "back")
    n.close()


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None  # meant for pid 1
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0


class Recorder:
    def __init__(self):
        self.sent = []

    def send(self, **fields):
        self.sent.append(fields)


@pytest.mark.resilience("3.1")
@pytest.mark.expected_log(r"watchdog: the mount did not answer")
async def test_no_ping_while_the_fuse_path_hangs(monkeypatch):
    release = threading.Event()
    hang = {"on": False}

    def answers(mountpoint, serial):
        if hang["on"]:
            release.wait(5)
            return False
        return True

    monkeypatch.setattr(wd, "fuse_answers", answers)
    rec = Recorder()
    with trio.move_on_after(0.55):
        await wd.watchdog(rec, "/nowhere", 0.1)
    healthy = len(rec.sent)
    assert healthy >= 3 and all(m == {"WATCHDOG": 1} for m in rec.sent)
    hang["on"] = True
    with trio.move_on_after(0.55):
        await wd.watchdog(rec, "/nowhere", 0.1)
    release.set()
    assert len(rec.sent) == healthy  # not one ping while FUSE did not answer
