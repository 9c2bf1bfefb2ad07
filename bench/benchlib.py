#!/usr/bin/env python3
"""Helpers shared by the bench scripts (run_bench, remote_bench, media_scan, large_library, scan_latency).

Errors and logging (BenchError, log, note/NOTES), the page-cache drop, a phase watchdog, the chaos proxy in
a child process (Proxy / proxy_child), machine facts for a report (out, machine), formatting (ratio) and
writing one marked section of docs/benchmarks.md (write_section).

(Internal: `benchlib.py --proxy-child UPSTREAM_PORT [RTT_MS [SEED]]` is the proxy child process that Proxy
starts; remote_bench.py and media_scan.py accept the same `--proxy-child` arguments and route them here.)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROXY_START_TIMEOUT = 20.0
PROXY_SEED = 11


class BenchError(Exception):
    """The benchmark cannot go on (a contestant failed, hung or returned wrong bytes)."""


# ---------------------------------------------------------------------------------------------
# logging and run notes

def log(msg: str) -> None:
    try:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr gone (a closed pipe): cleanup must go on regardless
        pass


NOTES: list[str] = []  # anything odd observed during the run; a script puts them into its report


def note(msg: str) -> None:
    log("NOTE: " + msg)
    if msg not in NOTES:
        NOTES.append(msg)


# ---------------------------------------------------------------------------------------------
# page cache

_drop_failed = False


def drop_caches(paths=(), level: int = 1, failure_note: str | None = None) -> bool:
    """sync; echo LEVEL > /proc/sys/vm/drop_caches (1: page cache only). Returns whether that worked.

    When it fails: posix_fadvise(DONTNEED) on each of `paths` instead, and on the first failure of the run
    `failure_note` (formatted with err=the OS error text), if given, becomes a note()."""
    global _drop_failed
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write(f"{level}\n")
        return True
    except OSError as exc:
        if failure_note and not _drop_failed:
            note(failure_note.format(err=exc.strerror))
        _drop_failed = True
    for p in paths:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return False


def drop_failed() -> bool:
    """Whether any drop_caches() of this run failed."""
    return _drop_failed


# ---------------------------------------------------------------------------------------------
# phase watchdog

class Watchdog:
    """Bound a phase in time: when it overruns, call on_fire (kill the daemon: blocked reads on
    its mount then fail) and turn whatever happens next into a BenchError."""

    def __init__(self, what: str, seconds: float, on_fire=None):
        self.what, self.seconds, self.on_fire = what, seconds, on_fire
        self.fired = False

    def _fire(self):
        self.fired = True
        log(f"WATCHDOG: {self.what} still running after {self.seconds:.0f}s")
        if self.on_fire:
            self.on_fire()

    def __enter__(self):
        self.timer = threading.Timer(self.seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, et, ev, tb):
        self.timer.cancel()
        if self.fired:
            raise BenchError(f"{self.what} hung: no result after {self.seconds:.0f}s "
                             f"(the daemon was killed to get unstuck; then: {ev!r})")
        return False


# ---------------------------------------------------------------------------------------------
# chaos proxy in a child process (shares no GIL with the harness)

def proxy_child(upstream_port: int, rtt_ms: float = 0.0, seed: int = PROXY_SEED) -> int:
    """Serve a chaos proxy to 127.0.0.1:upstream_port with rtt_ms of added round trip (half each way).

    Prints the listening port on stdout, then answers every `stats` line on stdin with a JSON line of the
    proxy's counters, until stdin closes (the parent died or is done) or SIGTERM."""
    from musicfs_test_utils.chaos_proxy import ProxyThread

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with ProxyThread("127.0.0.1", upstream_port, seed=seed) as proxy:
        if rtt_ms > 0:
            proxy.add_toxic("lat-down", "latency", direction="downstream", latency_ms=rtt_ms / 2)
            proxy.add_toxic("lat-up", "latency", direction="upstream", latency_ms=rtt_ms / 2)
        print(proxy.port, flush=True)
        try:
            for line in sys.stdin:
                if line.strip() == "stats":
                    print(json.dumps(proxy.stats()), flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def proxy_child_main(argv: list[str]) -> int:
    """`--proxy-child` arguments (after the flag): UPSTREAM_PORT [RTT_MS [SEED]]."""
    if not 1 <= len(argv) <= 3:
        print("usage: --proxy-child UPSTREAM_PORT [RTT_MS [SEED]]", file=sys.stderr)
        return 2
    return proxy_child(int(argv[0]), *([float(argv[1])] if len(argv) > 1 else []),
                       *([int(argv[2])] if len(argv) > 2 else []))


class Proxy:
    """A chaos proxy child process in front of 127.0.0.1:upstream_port; `port` is where it listens."""

    def __init__(self, upstream_port: int, rtt_ms: float = 0.0, seed: int = PROXY_SEED):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--proxy-child", str(upstream_port), str(rtt_ms), str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        line = self._readline(PROXY_START_TIMEOUT)
        if not line.strip().isdigit():
            self.stop()
            raise BenchError(f"chaos proxy child did not report a port (got {line!r})")
        self.port = int(line)

    def _readline(self, timeout: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
        return self.proc.stdout.readline()

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        line = self._readline(10)
        if not line:
            raise BenchError("chaos proxy child did not answer `stats` within 10s")
        return json.loads(line)

    def down(self) -> int:
        return self.stats()["bytes_downstream"]

    def settle(self, quiet: float, limit: float) -> int:
        """Downstream bytes once nothing moved for `quiet` seconds (at most `limit` seconds of waiting)."""
        deadline = time.monotonic() + limit
        last, since = self.down(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.down()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        else:
            log(f"NOTE: the origin was still sending after {limit:.0f}s of waiting")
        return last

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---------------------------------------------------------------------------------------------
# report helpers

def out(argv: list[str], stderr: bool = True) -> str:
    """What a command prints (stdout, and stderr after it unless stderr=False), stripped; '?' if it cannot run."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (p.stdout + (p.stderr if stderr else "")).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine() -> dict:
    """Facts every report gives: nproc, cpu, ram, kernel, python, rclone (scripts add their own tools)."""
    cpu, ram = "?", "?"
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    with contextlib.suppress(OSError):
        kib = next((int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal:")), None)
        ram = "?" if kib is None else f"{kib / 2**20:.1f} GiB"
    rclone = out(["rclone", "version"])
    return {"nproc": out(["nproc"]), "cpu": cpu, "ram": ram,
            "kernel": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "rclone": rclone.splitlines()[0] if rclone else "?"}


def run_lines(argv: list[str], started, seconds: float, load0: float, load1: float, info: dict) -> list[str]:
    """The Command, Date (with load averages and MusicFS's commit) and Machine lines of a report."""
    commit = out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return [f"- Command: `{shlex.join(argv)}`",
            f"- Date: {started:%Y-%m-%d %H:%M} UTC (run took {seconds:.0f} s); load average {load0:.2f} at the start, "
            f"{load1:.2f} at the end; MusicFS at commit `{commit}`",
            f"- Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}; RAM {info['ram']}; {info['kernel']}"]


def ratio(a, b) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "–"
    return f"{a / b:.2f}×"


def write_section(path: str, section: str, start: str, end: str) -> None:
    """Replace the text from `start` to `end` in the report at `path` by `section` (or append it)."""
    text = Path(path).read_text() if os.path.exists(path) else ""
    if start in text and end in text:
        text = text[: text.index(start)] + section.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--proxy-child"]:
        sys.exit(proxy_child_main(sys.argv[2:]))
    print(__doc__.split("\n\n")[0], file=sys.stderr)
    sys.exit(2)
