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
