"""The SFTP origin's own parts without a server: the wire format, ssh's command line and last words, the
askpass helper, error classes, URLs, and the pipelined read against a scripted server."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

import pytest

from musicfs.origins import sftp_wire as wire
from musicfs.origins.base import FileStat
from musicfs.origins.sftp import SftpOrigin
from musicfs.origins.sftp_errors import classify_sftp_error
from musicfs.origins.sftp_session import Reply
from musicfs.origins.sftp_ssh import PASSPHRASE_ENV, PASSWORD_ENV, SshTarget, askpass_main
from musicfs.shared.errors import (
    LocalExhaustion,
    OriginError,
    OriginFatal,
    OriginFileChanged,
    OriginNotFound,
    OriginPermission,
    OriginTimeout,
    OriginTransient,
    PathEscape,
    ShortRead,
)

SORIGIN = "sftp://me@nas:2222/srv/music"
SPATH = "Artist/song.flac"


# -- the wire -------------------------------------------------------------------------------------------------
def test_a_request_packet_is_length_type_id_then_fields() -> None:
    packet = wire.request(wire.READ, 7, wire.string(b"h1"), wire.u64(1 << 33), wire.u32(4096))
    length, kind, request_id = struct.unpack(">IBI", packet[:9])
    assert (length, kind, request_id) == (len(packet) - 4, wire.READ, 7)
    fields = wire.Reader(packet, 9)
    assert (fields.string(), fields.u64(), fields.u32()) == (b"h1", 1 << 33, 4096)
    assert wire.init() == b"\0\0\0\x05\x01\0\0\0\x03"


def _attrs(size=None, mode=None, mtime=None, extended=()) -> bytes:
    flags = (1 if size is not None else 0) | 2 | (4 if mode is not None else 0) | (8 if mtime is not None else 0)
    flags |= 0x80000000 if extended else 0
    out = wire.u32(flags) + (wire.u64(size) if size is not None else b"") + wire.u32(1000) + wire.u32(1000)
    out += wire.u32(mode) if mode is not None else b""
    out += wire.u32(1) + wire.u32(mtime) if mtime is not None else b""
    if extended:
        out += wire.u32(len(extended)) + b"".join(wire.string(k) + wire.string(v) for k, v in extended)
    return out


def test_attributes_read_only_what_the_flags_say_and_skip_the_rest() -> None:
    data = _attrs(size=12345, mode=0o100644, mtime=1_700_000_000, extended=[(b"x@y", b"z")]) + b"tail"
    fields = wire.Reader(data)
    assert fields.attrs() == wire.Attrs(size=12345, mode=0o100644, mtime=1_700_000_000)
    assert data[fields.at:] == b"tail"
    assert wire.Reader(wire.u32(0)).attrs() == wire.Attrs()


def test_a_truncated_packet_is_a_protocol_error_not_garbage() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.Reader(wire.u32(10) + b"abc").string()
    with pytest.raises(wire.ProtocolError):
        wire.Reader(wire.u32(1)).attrs()


def test_version_names_and_limits_are_parsed() -> None:
    payload = wire.u32(3) + wire.string(wire.LIMITS) + wire.string(b"1") + wire.string(b"fsync@openssh.com") \
        + wire.string(b"1")
    assert wire.version_reply(payload) == (3, {wire.LIMITS: b"1", b"fsync@openssh.com": b"1"})
    limits = wire.Reader(wire.u64(262144) + wire.u64(261120) + wire.u64(261120) + wire.u64(0))
    assert wire.limits(limits) == {"packet": 262144, "read": 261120, "write": 261120, "handles": 0}
    entries = wire.u32(2) + wire.string(b"a.flac") + wire.string(b"-rw-r--r-- a.flac") + _attrs(size=3) \
        + wire.string(b"\xff.mp3") + wire.string(b"") + _attrs(mode=0o040755)
    assert wire.names(wire.Reader(entries)) == [wire.Entry(b"a.flac", wire.Attrs(size=3)),
                                                wire.Entry(b"\xff.mp3", wire.Attrs(mode=0o040755))]


# -- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc,expected", [
    (wire.StatusError(wire.NO_SUCH_FILE, "No such file"), OriginNotFound),
    (wire.StatusError(wire.PERMISSION_DENIED, "Permission denied"), OriginPermission),
    (wire.StatusError(wire.FAILURE, "Failure"), OriginTransient),  # an I/O error on the server's disk
    (wire.StatusError(wire.CONNECTION_LOST, ""), OriginTransient),
    (wire.StatusError(wire.OP_UNSUPPORTED, "nope"), OriginFatal),
    (wire.ProtocolError("expected SFTP packet type 102, got 103"), OriginTransient),
    (OSError(errno.EMFILE, "Too many open files"), LocalExhaustion),  # starting ssh, on this machine
    (FileNotFoundError(errno.ENOENT, "ssh"), OriginFatal),
    (ValueError("what"), OriginFatal),
])
def test_sftp_errors(exc: BaseException, expected: type[OriginError]) -> None:
    err = classify_sftp_error(exc, SORIGIN, SPATH)
    assert type(err) is expected, (exc, type(err))
    assert SORIGIN in str(err) and SPATH in str(err)
    assert err.origin == SORIGIN and err.path == SPATH


MISMATCH = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Host key for [nas]:2222 has changed and you have requested strict checking.
Host key verification failed.
"""


@pytest.mark.parametrize("stderr,expected,words", [
    ("Host key verification failed.\n", OriginFatal, ["nas:2222", "/k/known_hosts", "not in known_hosts",
                                                      "ssh-keyscan -p 2222 nas"]),
    (MISMATCH, OriginFatal, ["nas:2222", "does not match", "/k/known_hosts", "-R '[nas]:2222'"]),
    ("me@nas: Permission denied (publickey).\n", OriginFatal, ["authentication failed", "me", "publickey"]),
    ('Load key "/k/id": error in libcrypto\nme@nas: Permission denied (publickey).\n', OriginFatal,
     ["authentication failed", "/k/id"]),
    ("ssh: connect to host nas port 2222: Connection refused\n", OriginTransient, ["cannot connect", "refused"]),
    ("ssh: Could not resolve hostname nas: Name or service not known\n", OriginTransient, ["cannot resolve", "nas"]),
    ("ssh: connect to host nas port 2222: Connection timed out\n", OriginTimeout, ["timed out"]),
    ("Connection timed out during banner exchange\n", OriginTimeout, ["timed out"]),
    ("Unable to negotiate with nas port 2222: no matching host key type found. Their offer: ssh-dss\n",
     OriginFatal, ["no SSH algorithms in common"]),
    ("Connection closed by 10.0.0.2 port 2222\n", OriginTransient, ["exited with status 255", "Connection closed"]),
    ("", OriginTransient, ["exited with status 255"]),
])
def test_ssh_last_words_are_one_line_naming_the_host(stderr, expected, words) -> None:
    target = SshTarget("nas", 2222, "me", known_hosts="/k/known_hosts")
    err = target.failure(stderr, 255, SORIGIN)
    assert type(err) is expected
    message = str(err)
    assert "\n" not in message and message.startswith(SORIGIN)
    for word in words:
        assert word in message, (word, message)


def test_the_ssh_command_line_follows_the_options() -> None:
    plain = SshTarget("nas").argv()
    assert plain[-4:] == ["-s", "--", "nas", "sftp"]
    assert "-oBatchMode=yes" in plain and "-T" in plain and "-oClearAllForwardings=yes" in plain
    assert not any(a.startswith(("-i", "-p", "-l", "-oUserKnownHostsFile")) for a in plain)  # ~/.ssh/config decides
    full = SshTarget("nas", 2222, "me", identity_file="/k/id", known_hosts="/k/known hosts",
                     connect_timeout=3, alive_interval=7).argv()
    joined = " ".join(full)
    for part in ("-p 2222", "-l me", "-i /k/id -oIdentitiesOnly=yes", '-oUserKnownHostsFile="/k/known hosts"',
                 "-oConnectTimeout=3", "-oServerAliveInterval=7"):
        assert part in joined, part


def test_a_secret_goes_to_ssh_through_askpass_only(monkeypatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "leftover")  # never inherited by an ssh that has no secret
    assert PASSWORD_ENV not in SshTarget("nas").env()
    target = SshTarget("nas", password="pw", passphrase="pp")
    argv, env = target.argv(), target.env()
    assert "-oBatchMode=no" in argv and "-oBatchMode=yes" not in argv
    assert env["SSH_ASKPASS_REQUIRE"] == "force" and env["SSH_ASKPASS"].endswith("musicfs-askpass")
    assert (env[PASSWORD_ENV], env[PASSPHRASE_ENV]) == ("pw", "pp")
    assert not any("pw" == a or "pp" == a for a in argv)


def test_the_askpass_helper_answers_only_password_and_passphrase_prompts(monkeypatch, capsys) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    monkeypatch.setenv(PASSPHRASE_ENV, "pp")
    assert askpass_main(["me@nas's password: "]) == 0
    assert capsys.readouterr().out == "pw\n"
    assert askpass_main(["Enter passphrase for key '/k/id': "]) == 0
    assert capsys.readouterr().out == "pp\n"
    assert askpass_main(["Are you sure you want to continue connecting (yes/no/[fingerprint])? "]) == 1
    assert capsys.readouterr().out == ""  # a new host key is never accepted this way
    monkeypatch.delenv(PASSWORD_ENV)
    assert askpass_main(["me@nas's password: "]) == 1


def test_sftp_url_parsing_and_options(tmp_path) -> None:
    key = tmp_path / "id"
    key.write_text("x")
    o = SftpOrigin.from_url("sftp://alice@nas.example:2222/srv/My%20Music/", {"identity_file": str(key), "pool_size": "2"})
    assert (o.target.user, o.host, o.target.port, o.root, o.pool_size) == ("alice", "nas.example", 2222,
                                                                            "/srv/My Music", 2)
    assert o.target.identity_file == str(key)
    assert (o.connect_timeout, o.read_timeout) == (5.0, 10.0)
    assert o.name == "sftp://alice@nas.example:2222/srv/My%20Music/"
    assert SftpOrigin.from_url("sftp://nas/~/music", {}).root == "music"
    assert SftpOrigin.from_url("sftp://nas", {}).root == ""
    assert SftpOrigin.from_url("sftp://nas/", {}).root == "/"
    assert SftpOrigin.from_url("sftp://nas/x", {}).target.port is None  # ssh's configuration decides
    assert SftpOrigin.from_url("sftp://nas/x", {}).target.user is None
    assert SftpOrigin.from_url("sftp://nas/x", {"known_hosts": "/k"}).target.known_hosts == "/k"
    assert SftpOrigin.from_url("sftp://nas/x", {}).target.known_hosts is None
    for bad in ("../x", "a/../../x", "/etc/passwd", "a\0b"):
        with pytest.raises(PathEscape):
            o.read(bad, 0, 1)  # refused before any network use
    with pytest.raises(OriginFatal) as info:
        SftpOrigin.from_url("sftp://nas/x", {"identity_file": str(tmp_path / "missing_key")})
    assert str(tmp_path / "missing_key") in str(info.value)
    with pytest.raises(OriginFatal):
        SftpOrigin.from_url("sftp://me:secret@nas/x", {})
    with pytest.raises(OriginFatal):
        SftpOrigin.from_url("sftp://nas:notaport/x", {})
    with pytest.raises(OriginFatal):
        SftpOrigin.from_url("sftp://nas/x", {"pool_size": 0})


# -- the pipelined read, against a scripted server ------------------------------------------------------------
@dataclass
class ScriptedFile:
    """What a scripted server answers for one open file: FSTATs give `mtimes` in turn (the last one repeats),
    READs give at most `piece` bytes and nothing past `cut`."""

    data: bytes
    mtimes: list[int]
    piece: int = 1 << 20
    cut: int | None = None
    asked: list[int] = field(default_factory=list)

    def answer(self, kind: int, fields: wire.Reader) -> tuple[int, bytes]:
        fields.string()  # the handle
        self.asked.append(kind)
        if kind == wire.FSTAT:
            mtime = self.mtimes.pop(0) if len(self.mtimes) > 1 else self.mtimes[0]
            return wire.ATTRS, _attrs(size=len(self.data), mtime=mtime)
        offset, length = fields.u64(), fields.u32()
        end = len(self.data) if self.cut is None else min(self.cut, len(self.data))
        if offset >= end:
            return wire.STATUS, wire.u32(wire.EOF) + wire.string(b"EOF") + wire.string(b"")
        return wire.DATA, wire.string(self.data[offset:min(end, offset + length, offset + self.piece)])


class ScriptedSession:
    """The part of a Session the read uses (send, wait, call, max_read), answered by a ScriptedFile."""

    max_read = 100

    def __init__(self, file: ScriptedFile):
        self.file = file

    def send(self, kind: int, *fields: bytes) -> Reply:
        answer_kind, body = self.file.answer(kind, wire.Reader(b"".join(fields)))
        return Reply(answer_kind, wire.Reader(body))

    def wait(self, reply: Reply) -> Reply:
        return reply

    def call(self, kind: int, *fields: bytes) -> Reply:
        return self.send(kind, *fields)


MTIME = 1_700_000_000


def _read(file: ScriptedFile, ranges, expect: FileStat | None):
    origin = SftpOrigin.from_url("sftp://nas/srv", {})
    return origin._read_open(ScriptedSession(file), b"h", "a.mp3", ranges, expect)


def test_a_pipelined_read_joins_pieces_and_stops_at_the_end() -> None:
    data = bytes(range(256)) * 4
    expect = FileStat("a.mp3", len(data), MTIME * 10**9)
    assert _read(ScriptedFile(data, [MTIME]), [(10, 250)], expect) == [data[10:260]]  # 3 reads of 100
    assert _read(ScriptedFile(data, [MTIME]), [(1000, 100)], expect) == [data[1000:]]
    assert _read(ScriptedFile(data, [MTIME]), [(2000, 100)], expect) == [b""]
    assert _read(ScriptedFile(data, [MTIME]), [(0, 3), (2000, 1), (5, 209)], expect) == [data[:3], b"", data[5:214]]
    assert _read(ScriptedFile(data, [MTIME]), [(0, 1500)], None) == [data]  # sized by the first stat


def test_a_server_that_answers_short_reads_still_gives_every_byte_in_place() -> None:
    data = bytes(range(256)) * 4
    expect = FileStat("a.mp3", len(data), MTIME * 10**9)
    file = ScriptedFile(data, [MTIME], piece=7)
    assert _read(file, [(10, 250), (500, 300)], expect) == [data[10:260], data[500:800]]
    assert file.asked[-1] == wire.FSTAT  # the bytes fetched after the pipeline are checked by another stat


def test_a_file_cut_short_is_a_short_read_never_a_silent_short_chunk() -> None:
    data = bytes(range(256)) * 4
    expect = FileStat("a.mp3", len(data), MTIME * 10**9)
    with pytest.raises(ShortRead) as info:
        _read(ScriptedFile(data, [MTIME], cut=50), [(10, 100)], expect)
    assert "a.mp3" in str(info.value) and "40" in str(info.value)


def test_the_identity_is_checked_before_and_after_the_reads() -> None:
    data = bytes(range(256)) * 4
    expect = FileStat("a.mp3", len(data), MTIME * 10**9)
    with pytest.raises(OriginFileChanged, match="since it was scanned"):
        _read(ScriptedFile(data, [MTIME + 1]), [(0, 10)], expect)
    with pytest.raises(OriginFileChanged, match="while it was read"):
        _read(ScriptedFile(data, [MTIME, MTIME + 1]), [(0, 10)], expect)
    with pytest.raises(OriginFileChanged, match="while it was read"):  # no expect: the first stat is the version
        _read(ScriptedFile(data, [MTIME, MTIME + 1]), [(0, 10)], None)
    with pytest.raises(OriginFileChanged):
        _read(ScriptedFile(data[:-1], [MTIME]), [(0, 10)], expect)
    file = ScriptedFile(data, [MTIME])
    _read(file, [(0, 350)], expect)
    assert file.asked == [wire.FSTAT, wire.READ, wire.READ, wire.READ, wire.READ, wire.FSTAT]  # stats around
