"""A NOTIFY_SOCKET the test owns: records every sd_notify message the daemon sends."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class NotifyMessage:
    at: float  # time.monotonic() when received
    fields: dict[str, str]


SUN_PATH_MAX = 107  # bytes of a Unix socket path (sun_path, without its NUL)


class NotifySocket:
    """Context manager; `path` goes into the child's NOTIFY_SOCKET."""

    def __init__(self, directory: str | None = None, on_message=None):
        self.on_message = on_message  # called in the receiving thread, at once: for "state at READY" checks
        if directory is not None and len(os.path.join(directory, "notify-xxxxxxxx", "notify.sock")) > SUN_PATH_MAX:
            directory = None  # a deep test folder: a socket path must fit sun_path, so the system's temp folder
        self._dir = tempfile.mkdtemp(prefix="notify-", dir=directory)
        self.path = os.path.join(self._dir, "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self.messages: list[NotifyMessage] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="notify-socket", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            message = NotifyMessage(time.monotonic(), fields)
            if self.on_message is not None:
                self.on_message(message)
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def find(self, key: str, value: str | None = None) -> list[NotifyMessage]:
        with self._cond:
            return [m for m in self.messages if key in m.fields and (value is None or m.fields[key] == value)]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0, count: int = 1) -> NotifyMessage:
        """The count-th message carrying key (=value); TimeoutError when it does not come."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.find(key, value)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {key}{'=' + value if value else ''} (x{count}) within {timeout}s; "
                                       f"got {[m.fields for m in self.messages]}")
                self._cond.wait(left)
            return self.find(key, value)[count - 1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        for name in os.listdir(self._dir):
            os.unlink(os.path.join(self._dir, name))
        os.rmdir(self._dir)

    def __enter__(self) -> "NotifySocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
