"""Row 7.6: a DEBUG log of real S3 requests (moto server) holds no credential: not the access key id, the
secret key or the session token, whether they come from the origin's options or from the environment, nor an
SFTP password."""

from __future__ import annotations

import io
import logging

import pytest

from musicfs.origins.s3 import S3Origin
from musicfs.origins.sftp import SftpOrigin
from musicfs.shared.logsetup import setup_logging, teardown_logging

pytestmark = pytest.mark.l3

KEY_ID = "AKIAMUSICFSTESTKEY01"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY1"
TOKEN = "FwoGZXIvYXdzEMusicfsSessionToken0123456789abcdefghijklmnopqrstuvwxyz/+AbCdEf=="


@pytest.fixture
def debug_log():
    stream = io.StringIO()
    setup_logging("DEBUG", stream)
    yield stream
    teardown_logging()
    logging.getLogger().setLevel(logging.WARNING)


def read_some(origin) -> None:
    first = next(iter(origin.walk()))
    assert len(origin.read(first.path, 0, 100, first)) == min(100, first.size)
    origin.close()


@pytest.mark.resilience("7.6")
@pytest.mark.parametrize("where", ["options", "environment"])
def test_a_debug_log_of_s3_requests_holds_no_key_secret_or_session_token(where, moto_server, s3_library, debug_log,
                                                                        monkeypatch):
    if where == "options":
        options = moto_server.origin_options(access_key_id=KEY_ID, secret_access_key=SECRET, session_token=TOKEN)
    else:
        options = moto_server.origin_options()
        del options["access_key_id"], options["secret_access_key"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    read_some(S3Origin.from_url(s3_library, options))
    text = debug_log.getvalue()
    assert "x-amz-security-token" in text.lower(), "botocore logged no request: the test proves nothing"
    for secret in (KEY_ID, SECRET, TOKEN, TOKEN[:40], SECRET[:20]):
        assert secret not in text
    assert "***" in text


@pytest.mark.resilience("7.6")
def test_an_sftp_password_is_never_logged_whatever_the_line_around_it(sftp_library, debug_log):
    password = "correct horse battery staple"
    SftpOrigin.from_url(sftp_library, {"password": password})  # an origin that holds it: never written
    logging.getLogger("musicfs.origins.sftp_session").debug("ssh said: auth with %r failed", password)
    logging.getLogger("musicfs.test").debug("connecting with password=%s to %s", password, sftp_library)
    text = debug_log.getvalue()
    assert password not in text and "correct" not in text and text.count("***") == 2
