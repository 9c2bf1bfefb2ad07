"""Drive the real `musicfs mount` in a child process: start, wait for the mount, signal, kill, sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from musicfs.commands.status import query_daemon
from musicfs.daemon.mounts import is_stale, mount_entry, unmount

from .eventually import eventually
from .notify_socket import NotifySocket

__all__ = ["MusicfsDaemon", "is_mounted", "is_stale", "sweep_stale_mounts", "toml_value", "write_config"]


def toml_value(value) -> str:
    """One value as TOML: a dict as an inline table, anything else as JSON (strings, numbers and booleans
    read the same in TOML)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_config(path: Path, **values) -> Path:
    """A musicfs TOML config at `path` with one `key = value` line per keyword; returns `path` (for --config)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path


class MusicfsDaemon:
    """One `musicfs mount` child process with its own state, cache, log and notify socket."""

    def __init__(self, sources: list[str | os.PathLike], mountpoint: str | os.PathLike, workdir: str | os.PathLike,
                 *, extra_args: list[str] | None = None, env: dict[str, str] | None = None, notify: bool = True,
                 on_notify=None):
        self.on_notify = on_notify
        self.sources = [str(s) for s in sources]
        self.mountpoint = str(mountpoint)
        self.workdir = Path(workdir)
        self.state_dir = self.workdir / "state"
        self.cache_dir = self.workdir / "cache"
        self.log_path = self.workdir / "daemon.log"
        self.extra_args = extra_args or []
        self.env = env or {}
        self.use_notify = notify
        self.notify: NotifySocket | None = None
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "musicfs", "mount", *self.sources, self.mountpoint,
                "--state-dir", str(self.state_dir), "--cache-dir", str(self.cache_dir), *self.extra_args]

    def start(self) -> "MusicfsDaemon":
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        env.pop("NOTIFY_SOCKET", None)
        if self.use_notify:
            if self.notify is not None:
                self.notify.close()
            self.notify = NotifySocket(str(self.workdir), on_message=self.on_notify)
            env["NOTIFY_SOCKET"] = self.notify.path
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict:
        """The daemon's status document, from its status socket; fails the test if it does not answer."""
        doc = query_daemon(str(self.state_dir))
        if doc is None:
            raise AssertionError("the daemon does not answer on its status socket")
        return doc

    def wait_for_mount(self, timeout: float = 60.0) -> None:
        """Until READY=1 (or, without a notify socket, until the mount answers); fails fast if the child dies."""
        def ready():
            if not self.alive():
                raise RuntimeError(f"musicfs exited with {self.proc.returncode} before mounting:\n{self.log_text()}")
            if self.notify is not None:
                return bool(self.notify.find("READY", "1"))
            return is_mounted(self.mountpoint) and not is_stale(self.mountpoint)

        eventually(ready, timeout, f"mount of {self.mountpoint}")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        """Until the child's log contains `text` (e.g. 'failpoint X paused'); fails fast if it dies."""
        def seen():
            if text in self.log_text():
                return True
            if not self.alive():
                raise RuntimeError(f"musicfs exited with {self.proc.returncode}, never logged {text!r}:\n{self.log_text()}")
            return False

        eventually(seen, timeout, f"log line {text!r}")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL: leaves a stale mount behind, on purpose."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL and a lazy unmount if it does not go. Always leaves no mount."""
        code = None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                code = self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if is_mounted(self.mountpoint):
            unmount(self.mountpoint, lazy=True)
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        return code

    def __enter__(self) -> "MusicfsDaemon":
        self.start()
        self.wait_for_mount()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def is_mounted(path: str) -> bool:
    """From /proc/self/mountinfo: never touches (or hangs on) the mount itself."""
    return mount_entry(path) is not None


def sweep_stale_mounts(under: str = "/tmp") -> list[str]:
    """Lazily unmount every dead (ENOTCONN) musicfs mount below `under`, left by killed daemons.

    Live mounts are left alone: they belong to someone still running.
    """
    swept = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        left, _, right = line.partition(" - ")
        point = left.split()[4].replace("\\040", " ")
        if right.split()[0] == "fuse.musicfs" and point.startswith(under.rstrip("/") + "/"):
            if is_stale(point) and unmount(point, lazy=True):
                swept.append(point)
    return swept
