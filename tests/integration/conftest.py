"""Session-scoped real servers on loopback (moto S3, OpenSSH sshd) and a small library on both."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from musicfs_test_utils.servers import MotoServer, SshServer

LIBRARY_BUCKET = "musicfs-library"
LIBRARY_PREFIX = "music"


def _library_files() -> dict[str, int]:
    """relative path -> size of the reference library."""
    return {
        "empty.bin": 0,
        "one.bin": 1,
        "hundred-k.mp3": 100 * 1024,
        "big.flac": 3 * 1024 * 1024,
        "Artist/Album/01 Opening.mp3": 54_321,
        "Artist/Album/Disc 2/02 Deep.ogg": 7_777,
        "Björk/Jóga — ünïcode ✓.flac": 12_345,
    }


@dataclass(frozen=True)
class Library:
    root: Path  # the reference copy: bytes every origin must return
    sizes: dict[str, int]

    def data(self, path: str) -> bytes:
        return (self.root / path).read_bytes()


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    root = tmp_path_factory.mktemp("library-src")
    rng = random.Random(20240601)
    sizes = _library_files()
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return Library(root=root, sizes=sizes)


@pytest.fixture(scope="session")
def moto_server():
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def ssh_server():
    with SshServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_library(moto_server: MotoServer, library: Library) -> str:
    """The library uploaded under s3://LIBRARY_BUCKET/LIBRARY_PREFIX; returns that URL.

    Also a "directory" marker key and a key outside the prefix, which walk must skip.
    """
    moto_server.make_bucket(LIBRARY_BUCKET)
    moto_server.upload_dir(library.root, LIBRARY_BUCKET, prefix=LIBRARY_PREFIX)
    client = moto_server.client()
    client.put_object(Bucket=LIBRARY_BUCKET, Key=f"{LIBRARY_PREFIX}/Empty Folder/", Body=b"")
    client.put_object(Bucket=LIBRARY_BUCKET, Key="elsewhere/not-in-library.mp3", Body=b"x" * 10)
    client.put_object(Bucket=LIBRARY_BUCKET, Key=f"{LIBRARY_PREFIX}x/sibling-prefix.mp3", Body=b"y" * 10)
    return f"s3://{LIBRARY_BUCKET}/{LIBRARY_PREFIX}"


@pytest.fixture(scope="session")
def sftp_library(ssh_server: SshServer, library: Library, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the library in a directory served by sshd; returns its sftp:// URL."""
    root = tmp_path_factory.mktemp("library-sftp") / "music"
    shutil.copytree(library.root, root)
    (root / "Empty Folder").mkdir()
    return ssh_server.url(root)


# ---------------------------------------------------------------------------------------------------
# Chaos: a ProxyThread in front of a session server, and a real audio library on both servers
# ---------------------------------------------------------------------------------------------------
AUDIO_PREFIX = "audio"


@pytest.fixture(scope="session")
def s3_audio(moto_server: MotoServer, s3_library: str, small_library) -> str:
    """The real-audio small_library under s3://LIBRARY_BUCKET/audio (for mounts: the scan reads tags)."""
    moto_server.upload_dir(small_library[0], LIBRARY_BUCKET, prefix=AUDIO_PREFIX)
    return f"s3://{LIBRARY_BUCKET}/{AUDIO_PREFIX}"


@pytest.fixture(scope="session")
def sftp_audio_root(small_library, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of small_library in a directory the sshd serves."""
    root = tmp_path_factory.mktemp("audio-sftp") / "audio"
    shutil.copytree(small_library[0], root)
    return root


@pytest.fixture
def proxies():
    """Make ProxyThreads to (host, port); all are stopped at teardown."""
    from musicfs_test_utils.chaos_proxy import ProxyThread

    made: list[ProxyThread] = []

    def make(host: str, port: int, seed: int = 1) -> ProxyThread:
        proxy = ProxyThread(host, port, seed=seed).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def via_proxy(request: pytest.FixtureRequest, proxies):
    """via_proxy(kind, audio=False, **options) -> (proxy, SOURCE, origin_options): the `kind` ("s3" or "sftp")
    server's library (the random-bytes one, or with audio=True small_library's real audio) through a new
    chaos proxy. For SFTP a known_hosts file names the proxy's port (host keys are looked up by host:port).
    """
    from urllib.parse import quote, unquote, urlsplit

    def make(kind: str, *, audio: bool = False, seed: int = 1, **options):
        if kind == "s3":
            server: MotoServer = request.getfixturevalue("moto_server")
            url = request.getfixturevalue("s3_audio" if audio else "s3_library")
            proxy = proxies(server.host, server.port, seed)
            return proxy, url, server.origin_options(endpoint_url=f"http://{proxy.host}:{proxy.port}", **options)
        ssh: SshServer = request.getfixturevalue("ssh_server")
        if audio:
            root = str(request.getfixturevalue("sftp_audio_root"))
        else:
            root = unquote(urlsplit(request.getfixturevalue("sftp_library")).path)
        proxy = proxies(ssh.host, ssh.port, seed)
        known_hosts = Path(ssh.dir) / f"known_hosts.proxy{proxy.port}"
        known_hosts.write_text(f"[{proxy.host}]:{proxy.port} {ssh.host_public_key}\n")
        url = f"sftp://{quote(ssh.user)}@{proxy.host}:{proxy.port}{quote(root)}"
        return proxy, url, ssh.origin_options(known_hosts=str(known_hosts), **options)

    return make
