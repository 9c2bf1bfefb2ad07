"""A watcher process beside a daemon that pushes pages: if the daemon is killed while a page store waits on its own
mount (it cannot finish dying, and the mount hangs), the watcher aborts the mount's FUSE connection at once.

Run as `python -m musicfs.daemon.guard PID MOUNTPOINT` by the daemon after it mounted; it ends when the daemon does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .mounts import abort_connection, dying

#: How often the watcher looks at the daemon: a reader stuck on the hung mount waits at most this long.
INTERVAL = 0.2


def watch(pid: int, mountpoint: str, interval: float = INTERVAL) -> bool:
    """Until `pid` is gone: abort the mount's connection when it is dying (then return True); False once it ended
    the normal way."""
    while os.path.exists(f"/proc/{pid}"):
        if dying(pid):
            return abort_connection(mountpoint)
        time.sleep(interval)
    return False


def start(mountpoint: str) -> subprocess.Popen:
    """The watcher of this process and its mount, in a session of its own (a Ctrl-C to the daemon is not its)."""
    return subprocess.Popen([sys.executable, "-m", "musicfs.daemon.guard", str(os.getpid()), mountpoint],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)


def stop(guard: subprocess.Popen | None) -> None:
    """End the watcher at a clean stop and reap it."""
    if guard is None or guard.poll() is not None:
        return
    guard.terminate()
    try:
        guard.wait(5)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait(5)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
