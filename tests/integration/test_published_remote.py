"""L3: a catalog published on a real S3 server (moto) and a real SFTP server (OpenSSH sshd), and a new library filled
from it: the same catalog the origin's own scan gives, and a revalidation that re-reads nothing."""

from __future__ import annotations

import shutil
import uuid

import pytest

from musicfs.library.publisher import publish_library
from musicfs.library.storage import Library
from musicfs.origins.factory import open_origins
from musicfs.shared.config import Config

pytestmark = pytest.mark.l3


@pytest.fixture(params=["s3", "sftp"])
def remote_audio(request, small_library, tmp_path) -> tuple[str, dict]:
    """A private copy of small_library's real audio on the `param` server: (SOURCE, origin_options)."""
    if request.param == "s3":
        server = request.getfixturevalue("moto_server")
        bucket = "published-" + uuid.uuid4().hex[:8]
        server.make_bucket(bucket)
        server.upload_dir(small_library[0], bucket, prefix="audio")
        return f"s3://{bucket}/audio", server.origin_options()
    server = request.getfixturevalue("ssh_server")
    root = tmp_path / "audio"
    shutil.copytree(small_library[0], root)
    return server.url(root), server.origin_options()


def test_a_catalog_published_on_a_remote_origin_fills_a_new_library(remote_audio, tmp_path):
    source, options = remote_audio
    make = lambda name: Config(sources=(source,), state_dir=str(tmp_path / name / "state"),  # noqa: E731
                               cache_dir=str(tmp_path / name / "cache"), origin_options=options).resolved()
    (origin,) = open_origins((source,), options)
    try:
        line = publish_library(make("publisher"), origin)
    finally:
        origin.close()
    assert line.startswith("published 12 tracks")
    scanned = Library.open(make("scanned"))
    fresh = Library.open(make("fresh"))
    try:
        scanned.scan()
        stats = fresh.adopt_published()
        assert stats is not None and stats.origin == source
        key = lambda lib: sorted((r.path, r.kind, r.size, r.mtime_ns, r.etag, r.artist, r.album, r.title)  # noqa: E731
                                 for r in lib.catalog.files())
        assert key(fresh) == key(scanned)  # what the origin's own scan gives, identities included
        result = fresh.scan()
        assert (result.added, result.changed, result.removed) == (0, 0, 0)
        assert fresh.published_from.revalidated and fresh.published_from.reread == 0
    finally:
        scanned.close()
        fresh.close()
