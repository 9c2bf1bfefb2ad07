"""S3Origin and SftpOrigin against real servers on loopback (moto S3, OpenSSH sshd)."""

from __future__ import annotations

import contextlib
import http.server
import os
import random
import signal
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest

from musicfs.origins.base import FileStat, Origin
from musicfs.origins.factory import open_origin
from musicfs.origins.registry import OriginRegistry
from musicfs.origins.s3 import S3Origin
from musicfs.origins.sftp import SftpOrigin
from musicfs.shared.errors import (
    OriginFatal,
    OriginFileChanged,
    OriginNotFound,
    OriginTimeout,
    OriginTransient,
    PathEscape,
    ShortRead,
)
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.servers import MotoServer, SshServer, ed25519_keypair, free_port

pytestmark = pytest.mark.l3

KINDS = ["s3", "sftp"]


def _open(kind: str, request: pytest.FixtureRequest, **extra) -> Origin:
    if kind == "s3":
        server: MotoServer = request.getfixturevalue("moto_server")
        url = request.getfixturevalue("s3_library")
        return open_origin(url, server.origin_options(**extra))
    ssh: SshServer = request.getfixturevalue("ssh_server")
    url = request.getfixturevalue("sftp_library")
    return open_origin(url, ssh.origin_options(**extra))


@pytest.fixture(params=KINDS)
def remote(request: pytest.FixtureRequest) -> Iterator[Origin]:
    origin = _open(request.param, request)
    yield origin
    origin.close()


class Scratch:
    """An empty, private origin root a test may modify."""

    def __init__(self, origin: Origin, put: Callable[[str, bytes, float | None], None]):
        self.origin = origin
        self._put = put

    def put(self, rel: str, data: bytes, mtime: float | None = None) -> None:
        self._put(rel, data, mtime)


@pytest.fixture(params=KINDS)
def scratch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scratch]:
    if request.param == "s3":
        server: MotoServer = request.getfixturevalue("moto_server")
        bucket = urlsplit(request.getfixturevalue("s3_library")).netloc
        prefix = f"scratch/{uuid.uuid4().hex}"
        client = server.client()

        def put(rel: str, data: bytes, mtime: float | None) -> None:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)

        origin = S3Origin.from_url(f"s3://{bucket}/{prefix}", server.origin_options())
    else:
        ssh: SshServer = request.getfixturevalue("ssh_server")
        root = tmp_path / "scratch"
        root.mkdir()

        def put(rel: str, data: bytes, mtime: float | None) -> None:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if mtime is not None:
                os.utime(path, (mtime, mtime))

        origin = SftpOrigin.from_url(ssh.url(root), ssh.origin_options())
    yield Scratch(origin, put)
    origin.close()


def _ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) pairs: start, middle, across a 1 MiB boundary, over EOF, at EOF, past EOF, whole."""
    mid = size // 2
    return [
        (0, 4096),
        (0, 1),
        (mid, 1000),
        (max(0, (1 << 20) - 100), 200) if size > (1 << 20) else (max(0, mid - 50), 100),
        (max(0, mid - 40_000), 1_500_000),
        (max(0, size - 10), 100),
        (size, 100),
        (size + 1000, 100),
        (0, size + 10),
        (0, size),
    ]


# ---------------------------------------------------------------------------
# both origins
# ---------------------------------------------------------------------------
def test_walk_lists_exactly_the_library(remote: Origin, library: Any) -> None:
    entries = list(remote.walk())
    assert sorted(e.path for e in entries) == sorted(library.sizes)
    assert len(entries) == len({e.path for e in entries})
    assert {e.path: e.size for e in entries} == library.sizes
    for e in entries:
        assert e.mtime_ns > 0
        assert e.mtime_ns % 1_000_000_000 == 0  # whole seconds at both origins
        if isinstance(remote, S3Origin):
            assert e.etag and '"' not in e.etag


def test_stat_agrees_with_walk(remote: Origin, library: Any) -> None:
    for entry in remote.walk():
        st = remote.stat(entry.path)
        assert st.path == entry.path
        assert st.same_identity(entry), (st, entry)


def test_reads_are_byte_identical(remote: Origin, library: Any) -> None:
    for path, size in library.sizes.items():
        data = library.data(path)
        expect = remote.stat(path)
        for offset, length in _ranges(size):
            want = data[offset:offset + length]
            got = remote.read(path, offset, length)
            assert got == want, (path, offset, length, len(got), len(want))
            assert remote.read(path, offset, length, expect) == want, (path, offset, length)


def test_read_with_expect_detects_a_changed_file(scratch: Scratch) -> None:
    origin = scratch.origin
    scratch.put("song.mp3", b"A" * 5000, 1_700_000_000)
    before = origin.stat("song.mp3")
    assert origin.read("song.mp3", 100, 10, before) == b"A" * 10

    # same size, new bytes (S3: new ETag -> If-Match fails; SFTP: new mtime)
    scratch.put("song.mp3", b"B" * 5000, 1_700_000_100)
    with pytest.raises(OriginFileChanged) as info:
        origin.read("song.mp3", 100, 10, before)
    assert "song.mp3" in str(info.value)
    assert info.value.origin == origin.name
    with pytest.raises(OriginFileChanged):
        origin.read("song.mp3", 5000, 10, before)  # at EOF too: never b"" for a changed file

    # new size
    middle = origin.stat("song.mp3")
    assert origin.read("song.mp3", 0, 3, middle) == b"BBB"
    scratch.put("song.mp3", b"C" * 4000, 1_700_000_200)
    with pytest.raises(OriginFileChanged):
        origin.read("song.mp3", 0, 3, middle)
    with pytest.raises(OriginFileChanged):
        origin.read("song.mp3", 4500, 10, middle)  # past the new EOF

    # without expect the new bytes are simply returned
    assert origin.read("song.mp3", 3990, 100) == b"C" * 10
    after = origin.stat("song.mp3")
    assert after.size == 4000 and not after.same_identity(middle)
    assert origin.read("song.mp3", 0, 4, after) == b"CCCC"


def test_missing_file_is_not_found(remote: Origin) -> None:
    with pytest.raises(OriginNotFound) as info:
        remote.stat("Artist/nope.mp3")
    assert remote.name in str(info.value) and "nope.mp3" in str(info.value)
    with pytest.raises(OriginNotFound) as info:
        remote.read("Artist/nope.mp3", 0, 10)
    assert remote.name in str(info.value) and "nope.mp3" in str(info.value)
    with pytest.raises(OriginNotFound):
        remote.read("Artist/nope.mp3", 0, 10, FileStat("Artist/nope.mp3", 10, 1, "abc"))


def test_paths_leaving_the_root_are_refused(remote: Origin) -> None:
    for bad in ("../escape.mp3", "Artist/../../escape.mp3", "/etc/passwd", "a\0b"):
        with pytest.raises(PathEscape):
            remote.read(bad, 0, 10)
        with pytest.raises(PathEscape):
            remote.stat(bad)


def test_probe_ok_and_close_is_idempotent(remote: Origin) -> None:
    remote.probe()
    remote.close()
    remote.close()
    remote.probe()  # reconnects lazily after close


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_reads_from_8_threads(request: pytest.FixtureRequest, library: Any, kind: str) -> None:
    origin = _open(kind, request)
    try:
        rng = random.Random(kind)
        paths = [p for p, s in library.sizes.items() if s > 0]
        stats = {p: origin.stat(p) for p in paths}
        jobs = []
        for _ in range(96):
            path = rng.choice(paths)
            offset = rng.randrange(library.sizes[path])
            jobs.append((path, offset, rng.randint(1, 256 * 1024)))
        threads_seen: set[int] = set()

        def run(job: tuple[str, int, int]) -> bool:
            path, offset, length = job
            threads_seen.add(threading.get_ident())
            return origin.read(path, offset, length, stats[path]) == library.data(path)[offset:offset + length]

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(run, jobs))
        assert all(results), f"{kind}: {results.count(False)} of {len(results)} reads differ"
        assert len(threads_seen) > 1
    finally:
        origin.close()


# ---------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------
def test_s3_default_credential_chain_from_environment(
    moto_server: MotoServer, s3_library: str, library: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for key, value in moto_server.env().items():
        monkeypatch.setenv(key, value)
    origin = open_origin(s3_library)
    try:
        assert origin.name == s3_library
        origin.probe()
        assert {e.path: e.size for e in origin.walk()} == library.sizes
    finally:
        origin.close()


def test_s3_missing_bucket_is_fatal(moto_server: MotoServer) -> None:
    origin = S3Origin.from_url("s3://no-such-bucket-musicfs/x", moto_server.origin_options())
    try:
        with pytest.raises(OriginFatal) as info:
            origin.probe()
        assert "no-such-bucket-musicfs" in str(info.value)
        with pytest.raises(OriginFatal):
            list(origin.walk())
    finally:
        origin.close()


def test_s3_probe_dead_endpoint_is_transient_and_fast(moto_server: MotoServer) -> None:
    port = free_port()
    origin = S3Origin.from_url(
        "s3://any-bucket/music",
        moto_server.origin_options(endpoint_url=f"http://127.0.0.1:{port}", connect_timeout=1, read_timeout=1),
    )
    try:
        with pytest.raises(OriginTransient) as info:
            origin.probe()
        assert not isinstance(info.value, OriginTimeout)  # refused at once: nothing waited for a timeout
        assert str(port) in str(info.value) or origin.name in str(info.value)
        with pytest.raises(OriginTransient):
            origin.read("one.bin", 0, 1)
    finally:
        origin.close()


class _FakeS3Handler(http.server.BaseHTTPRequestHandler):
    """Serves one 1000-byte object and misbehaves as `server.mode` says."""

    protocol_version = "HTTP/1.1"
    SIZE = 1000

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _range(self) -> tuple[int, int]:
        spec = self.headers.get("Range", f"bytes=0-{self.SIZE - 1}").split("=", 1)[1]
        a, b = spec.split("-")
        return int(a), min(int(b), self.SIZE - 1)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.SIZE))
        self.send_header("ETag", '"fake"')
        self.end_headers()

    def do_GET(self) -> None:
        start, end = self._range()
        body = bytes(i % 251 for i in range(start, end + 1))
        if self.server.mode == "short":  # consistent headers, but a shorter range than asked
            body = body[: len(body) // 2]
            end = start + len(body) - 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{self.SIZE}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"fake"')
        self.send_header("Last-Modified", "Wed, 01 May 2024 10:00:00 GMT")
        self.end_headers()
        if self.server.mode == "cut":  # promise len(body) bytes, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.wfile.write(body)


@contextlib.contextmanager
def _fake_s3(mode: str) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeS3Handler)
    server.mode = mode  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_s3_truncated_body_is_a_short_read(moto_server: MotoServer, mode: str) -> None:
    with _fake_s3(mode) as endpoint:
        origin = S3Origin.from_url("s3://fake-bucket/p", moto_server.origin_options(endpoint_url=endpoint))
        try:
            expected = bytes(i % 251 for i in range(500, 600))
            with _fake_s3("ok") as good:  # the fake itself is sound when it behaves
                ok = S3Origin.from_url("s3://fake-bucket/p", moto_server.origin_options(endpoint_url=good))
                assert ok.read("x.mp3", 500, 100) == expected
                ok.close()
            with pytest.raises(ShortRead) as info:
                origin.read("x.mp3", 500, 100)
            assert isinstance(info.value, OriginTransient)
            assert "p/x.mp3" in str(info.value)
        finally:
            origin.close()


class SilentServer:
    """A port that accepts connections and never says a word; `accepted` counts them (each one a connection
    attempt of the client: a hidden retry loop would show as more, each costing a whole timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def accepted(self) -> int:
        return len(self.held)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)


@contextlib.contextmanager
def _silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.sock.close()
        for conn in server.held:
            conn.close()


def test_s3_unanswered_request_times_out(moto_server: MotoServer) -> None:
    with _silent_server() as silent:
        origin = S3Origin.from_url(
            "s3://bucket/p",
            moto_server.origin_options(endpoint_url=f"http://127.0.0.1:{silent.port}", connect_timeout=1,
                                       read_timeout=1),
        )
        try:
            with pytest.raises(OriginTimeout):
                origin.read("x.mp3", 0, 10)
            assert silent.accepted == 1  # one attempt, one read_timeout: no retries of the SDK's stacked on it
        finally:
            origin.close()


# ---------------------------------------------------------------------------
# SFTP
# ---------------------------------------------------------------------------
def test_sftp_probe_dead_endpoint_is_transient_and_fast(ssh_server: SshServer, tmp_path: Path) -> None:
    port = free_port()
    origin = SftpOrigin.from_url(
        f"sftp://{ssh_server.user}@127.0.0.1:{port}/srv", ssh_server.origin_options(connect_timeout=1)
    )
    with pytest.raises(OriginTransient) as info:
        origin.probe()
    assert not isinstance(info.value, OriginFatal) and "cannot connect" in str(info.value)  # refused: no wait
    assert origin.name in str(info.value)
    origin.close()


def test_sftp_silent_server_times_out(ssh_server: SshServer) -> None:
    with _silent_server() as silent:
        origin = SftpOrigin.from_url(
            f"sftp://{ssh_server.user}@127.0.0.1:{silent.port}/srv",
            ssh_server.origin_options(connect_timeout=1, read_timeout=1),
        )
        with pytest.raises(OriginTimeout) as info:
            origin.probe()
        assert "timed out" in str(info.value) or "took longer" in str(info.value)  # ssh's ConnectTimeout, or ours
        assert silent.accepted == 1  # one connection, given up on: not a retry loop
        origin.close()


def test_sftp_unknown_host_key_is_refused(ssh_server: SshServer, sftp_library: str, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(known_hosts=str(empty)))
    with pytest.raises(OriginFatal) as info:
        origin.probe()
    message = str(info.value)
    assert "127.0.0.1" in message and str(ssh_server.port) in message
    assert str(empty) in message
    with pytest.raises(OriginFatal):
        origin.read("one.bin", 0, 1)
    assert empty.read_text() == ""  # never added

    missing = tmp_path / "nope" / "known_hosts"
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(known_hosts=str(missing)))
    with pytest.raises(OriginFatal) as info:
        origin.probe()
    assert str(missing) in str(info.value) and "127.0.0.1" in str(info.value)
    assert not missing.exists()


def test_sftp_wrong_host_key_is_refused(ssh_server: SshServer, sftp_library: str, tmp_path: Path) -> None:
    _, other_public = ed25519_keypair()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{ssh_server.port} {other_public}\n")
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(known_hosts=str(known)))
    with pytest.raises(OriginFatal) as info:
        origin.probe()
    assert "127.0.0.1" in str(info.value) and "does not match" in str(info.value)


def test_sftp_bad_credentials_are_fatal(ssh_server: SshServer, sftp_library: str, tmp_path: Path) -> None:
    missing = tmp_path / "id_missing"
    with pytest.raises(OriginFatal) as info:
        SftpOrigin.from_url(sftp_library, ssh_server.origin_options(identity_file=str(missing)))
    assert str(missing) in str(info.value)

    stranger = tmp_path / "id_stranger"
    private, _ = ed25519_keypair()
    stranger.write_bytes(private)
    stranger.chmod(0o600)
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(identity_file=str(stranger)))
    with pytest.raises(OriginFatal) as info:
        origin.probe()
    assert "authentication" in str(info.value).lower()

    garbage = tmp_path / "id_garbage"
    garbage.write_text("not a key\n")
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(identity_file=str(garbage)))
    with pytest.raises(OriginFatal) as info:
        origin.probe()
    assert str(garbage) in str(info.value)


def test_sftp_walk_symlinks(ssh_server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "inner.mp3").write_bytes(b"i" * 11)
    (root / "real.mp3").write_bytes(b"r" * 7)
    outside = tmp_path / "outside.mp3"
    outside.write_bytes(b"o" * 5)
    (root / "link-inside.mp3").symlink_to(root / "real.mp3")
    (root / "link-outside.mp3").symlink_to(outside)
    (root / "link-dir").symlink_to(root / "dir")
    (root / "dangling.mp3").symlink_to(root / "gone.mp3")
    origin = SftpOrigin.from_url(ssh_server.url(root), ssh_server.origin_options())
    try:
        assert {e.path: e.size for e in origin.walk()} == {
            "dir/inner.mp3": 11,
            "real.mp3": 7,
            "link-inside.mp3": 7,
        }
    finally:
        origin.close()


def test_sftp_read_timeout_discards_the_connection(ssh_server: SshServer, sftp_library: str, library: Any) -> None:
    origin = SftpOrigin.from_url(
        sftp_library, ssh_server.origin_options(connect_timeout=1, read_timeout=1, pool_size=1)
    )
    try:
        assert origin.read("one.bin", 0, 1) == library.data("one.bin")  # a pooled, idle connection now
        sessions = ssh_server.session_pids()
        assert sessions
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(OriginTimeout, match="nothing from .* for 1s"):  # read_timeout's own words
                origin.read("hundred-k.mp3", 0, 1000)
        finally:
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        # the frozen connection was dropped: the next read uses a fresh one
        assert origin.read("hundred-k.mp3", 0, 1000) == library.data("hundred-k.mp3")[:1000]
    finally:
        origin.close()


def test_sftp_connection_killed_under_the_pool_is_replaced(
    ssh_server: SshServer, sftp_library: str, library: Any
) -> None:
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(pool_size=1))
    try:
        before = set(ssh_server.session_pids())
        assert origin.read("one.bin", 0, 1) == library.data("one.bin")
        ours = set(ssh_server.session_pids()) - before
        assert ours
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        outcomes = []
        for _ in range(2):  # at most one transient failure, then a fresh connection
            try:
                outcomes.append(origin.read("hundred-k.mp3", 10, 20) == library.data("hundred-k.mp3")[10:30])
            except OriginTransient:
                outcomes.append("transient")
        assert outcomes[-1] is True, outcomes
    finally:
        origin.close()


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        return exc


def _reaped(pid: int) -> bool:
    """No process and no zombie is left with this pid."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.mark.resilience("N.2")
def test_sftp_ssh_killed_in_the_middle_of_a_read_fails_it_and_a_new_ssh_takes_over(via_proxy, library: Any) -> None:
    """ssh dies while a stream's read is in flight: that read raises a transient error (the registry retries it),
    never part of the bytes as the whole; ssh is reaped, and the stream's next read runs on a new ssh."""
    proxy, url, options = via_proxy("sftp", pool_size=1)
    origin = SftpOrigin.from_url(url, options)
    path, data = "big.flac", library.data("big.flac")
    try:
        stream = origin.open_stream(path, origin.stat(path))
        assert stream.read(0, 10) == data[:10]
        [pid] = origin.ssh_pids()
        proxy.add_toxic("thin", "bandwidth", rate_kbps=100)  # the read below takes half a minute
        result: list[Any] = []
        reader = threading.Thread(target=lambda: result.append(_outcome(lambda: stream.read(0, len(data)))))
        reader.start()
        eventually(lambda: origin.sessions().requests_waiting > 0, 10, "the read's requests in flight")
        os.kill(pid, signal.SIGKILL)
        reader.join(30)
        assert not reader.is_alive()
        assert isinstance(result[0], OriginTransient), result[0]
        assert "ssh" in str(result[0]) and origin.name in str(result[0])
        proxy.remove_toxic("thin")
        eventually(lambda: _reaped(pid), 10, "the killed ssh reaped")
        assert stream.read(0, len(data)) == data
        assert origin.ssh_pids() and pid not in origin.ssh_pids()
        assert origin.sessions().replaced == 1
        [seen] = OriginRegistry([origin]).statistics()  # what status and metrics show
        assert seen.sessions == origin.sessions() and seen.sessions.replaced == 1 and seen.sessions.sessions >= 1
        stream.close()
    finally:
        origin.close()


def test_sftp_close_kills_and_reaps_every_ssh(ssh_server: SshServer, sftp_library: str, library: Any) -> None:
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(pool_size=3))
    data = library.data("big.flac")
    try:
        with ThreadPoolExecutor(6) as pool:  # enough requests at once that one session is not enough
            got = list(pool.map(lambda _: origin.read("big.flac", 0, len(data)), range(6)))
        assert got == [data] * 6
        pids = origin.ssh_pids()
        assert 1 < len(pids) <= 3
    finally:
        origin.close()
    assert origin.ssh_pids() == []
    assert all(_reaped(pid) for pid in pids)  # killed and waited for: no zombie


def test_sftp_an_encrypted_key_is_unlocked_through_askpass(ssh_server: SshServer, sftp_library: str,
                                                           library: Any, tmp_path: Path) -> None:
    private, public = ed25519_keypair(passphrase="open sesame")
    key = tmp_path / "id_locked"
    key.write_bytes(private)
    key.chmod(0o600)
    assert ssh_server.dir is not None
    with open(ssh_server.dir / "authorized_keys", "a") as keys:
        keys.write(public + "\n")
    origin = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(identity_file=str(key),
                                                                         passphrase="open sesame"))
    try:
        assert origin.read("one.bin", 0, 1) == library.data("one.bin")[:1]
    finally:
        origin.close()
    wrong = SftpOrigin.from_url(sftp_library, ssh_server.origin_options(identity_file=str(key), passphrase="nope"))
    try:
        with pytest.raises(OriginFatal, match="authentication failed"):
            wrong.probe()
    finally:
        wrong.close()



def test_s3_a_failing_part_get_fails_the_whole_read(request: pytest.FixtureRequest, library: Any,
                                                   monkeypatch) -> None:
    """One part GET of a stream's read fails (the connection drops): the read raises a transient origin error
    (the registry retries it), never returns the other parts' bytes as the whole."""
    from botocore.exceptions import EndpointConnectionError

    from musicfs.origins import s3
    from musicfs.shared.errors import OriginTransient

    monkeypatch.setattr(s3, "PART", 1 << 20)
    origin = _open("s3", request)
    try:
        calls = []
        send = origin._send_get

        def drop_the_second(key, headers):
            calls.append(1)
            if len(calls) == 2:
                raise EndpointConnectionError(endpoint_url="http://s3.test")
            return send(key, headers)

        origin._send_get = drop_the_second
        path, data = "big.flac", library.data("big.flac")
        stream = origin.open_stream(path, origin.stat(path))
        with pytest.raises(OriginTransient):
            stream.read(0, 3 << 20)
        assert stream.read(0, 3 << 20) == data[:3 << 20]  # the next try reads every part
        stream.close()
    finally:
        origin.close()


def test_s3_stream_reads_go_as_concurrent_part_gets_of_one_version(request: pytest.FixtureRequest,
                                                                  library: Any, monkeypatch) -> None:
    """A read-ahead batch over S3: a read of two parts or more is cut into even part GETs sent at once, each with
    the pinned identity (If-Match); a short read is one GET; every byte is right."""
    from musicfs.origins import s3

    PART = 1 << 20
    monkeypatch.setattr(s3, "PART", PART)  # the test file is 3 MiB
    origin = _open("s3", request)
    try:
        gets: list[dict] = []
        send = origin._send_get

        def recorded(key, headers):
            gets.append(headers)
            return send(key, headers)

        origin._send_get = recorded
        path, data = "big.flac", library.data("big.flac")
        assert len(data) > 2 * PART
        stream = origin.open_stream(path, origin.stat(path))
        span = 2 * PART + 12345
        assert stream.read(1000, span) == data[1000:1000 + span]
        assert len(gets) == 2 and all(g.get("If-Match") for g in gets)  # two even parts, no small one at the end
        assert {g["Range"] for g in gets} == {f"bytes=1000-{1000 + span // 2}",
                                              f"bytes={1001 + span // 2}-{1000 + span - 1}"}
        assert stream.read(100, 10) == data[100:110] and len(gets) == 3
        assert stream.read(len(data) - 10, 100) == data[-10:]
        stream.close()
    finally:
        origin.close()
