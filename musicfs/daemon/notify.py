"""sd_notify: READY / STATUS / WATCHDOG / STOPPING / EXTEND_TIMEOUT_USEC; silent without NOTIFY_SOCKET.

The datagrams go out through `sdnotify.SystemdNotifier`. What it lacks stays here: an explicit address
(tests own their socket), reconnecting after a failed send, one warning instead of silence or a raise,
a lock for the watchdog thread, and `watchdog_interval` (WATCHDOG_USEC / WATCHDOG_PID).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import sdnotify

log = logging.getLogger(__name__)


class _Sender(sdnotify.SystemdNotifier):
    """sdnotify's notifier on a given address, raising its errors (debug=True) so the caller can log them.

    sdnotify's own constructor reads NOTIFY_SOCKET and swallows a failed connect; ours connects to the
    address it is given and lets the OSError through."""

    def __init__(self, address: str):
        self.debug = True
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self.socket.connect(address)
        except OSError:
            self.socket.close()
            raise


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address
        self._sender: _Sender | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: object) -> bool:
        """Send KEY=value lines; True when delivered. Errors are logged once, never raised."""
        if not self.address:
            return False
        # systemd reads UTF-8; sdnotify encodes latin-1, so hand it the UTF-8 bytes one char per byte
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode().decode("latin-1")
        with self._lock:
            try:
                if self._sender is None:
                    self._sender = _Sender(self.address)
                self._sender.notify(payload)
                return True
            except OSError as exc:
                self._drop()  # the next message connects again (the receiver may be back)
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s", self.address.lstrip("\0"), exc)
                    self._warned = True
                return False

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def extend_timeout(self, seconds: float, status: str) -> None:
        self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1e6), STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping")

    def _drop(self) -> None:
        if self._sender is not None:
            self._sender.socket.close()
            self._sender = None

    def close(self) -> None:
        with self._lock:
            self._drop()


def watchdog_interval(env: dict | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2e6
