"""L1: origins/sftp_wire.py against the protocol itself (draft-ietf-secsh-filexfer-02, SFTP version 3), not
against its own constants: every number and every packet below is written out as the draft lays it out, so a
wrong type, status or flag number is a failing test here and not only against a real server. The mutation run
of sftp_wire.py uses this file (bench/mutate.py)."""

from __future__ import annotations

import pytest

from musicfs.origins import sftp_wire as wire

# The draft's numbers (section 3 packet types, 5 attribute flags, 6.3 pflags, 7 status codes).
PACKET_TYPES = {"INIT": 1, "VERSION": 2, "OPEN": 3, "CLOSE": 4, "READ": 5, "WRITE": 6, "LSTAT": 7, "FSTAT": 8,
                "OPENDIR": 11, "READDIR": 12, "REMOVE": 13, "MKDIR": 14, "REALPATH": 16, "STAT": 17, "RENAME": 18,
                "STATUS": 101, "HANDLE": 102, "DATA": 103, "NAME": 104, "ATTRS": 105, "EXTENDED": 200,
                "EXTENDED_REPLY": 201}
STATUS_CODES = {"OK": 0, "EOF": 1, "NO_SUCH_FILE": 2, "PERMISSION_DENIED": 3, "FAILURE": 4, "BAD_MESSAGE": 5,
                "NO_CONNECTION": 6, "CONNECTION_LOST": 7, "OP_UNSUPPORTED": 8}


@pytest.mark.parametrize("name, number", sorted({**PACKET_TYPES, **STATUS_CODES}.items()))
def test_the_protocol_numbers_are_the_drafts(name, number):
    assert getattr(wire, name) == number


def test_flags_and_the_extension_name_are_the_drafts():
    assert (wire.OPEN_READ, wire.OPEN_WRITE, wire.OPEN_CREAT, wire.OPEN_TRUNC) == (0x01, 0x02, 0x08, 0x10)  # SSH_FXF_*
    assert (wire._ATTR_SIZE, wire._ATTR_UIDGID, wire._ATTR_PERMISSIONS, wire._ATTR_ACMODTIME, wire._ATTR_EXTENDED) \
        == (0x00000001, 0x00000002, 0x00000004, 0x00000008, 0x80000000)
    assert wire.LIMITS == b"limits@openssh.com"
    assert wire.POSIX_RENAME == b"posix-rename@openssh.com"
    assert wire.SAFE_READ == 32768  # a READ answer of this size fits the smallest packet every server takes (34000)


def test_status_names_say_each_code_in_words():
    assert wire.STATUS_NAMES == {0: "ok", 1: "end of file", 2: "no such file", 3: "permission denied", 4: "failure",
                                 5: "bad message", 6: "no connection", 7: "connection lost",
                                 8: "operation unsupported"}
    assert wire.StatusError(2, "No such file").strerror == "no such file"  # the server's words, when they say the same
    assert wire.StatusError(4, "disk on fire").strerror == "failure: disk on fire"
    assert wire.StatusError(4, "").strerror == "failure"
    assert wire.StatusError(99, "odd").strerror == "status 99: odd"
    assert wire.StatusError(3, "x").code == 3 and isinstance(wire.StatusError(3, "x"), OSError)


def test_packets_byte_for_byte():
    # uint32 length (of what follows), byte type, uint32 id, then the fields
    assert wire.init() == bytes.fromhex("00000005" "01" "00000003")
    assert wire.init(6) == bytes.fromhex("00000005" "01" "00000006")
    read = wire.request(wire.READ, 7, wire.string(b"h1"), wire.u64(1 << 33), wire.u32(4096))
    assert read == bytes.fromhex("00000017" "05" "00000007" "00000002" "6831" "0000000200000000" "00001000")
    opened = wire.request(wire.OPEN, 0xFFFFFFFF, wire.string(b"a"), wire.u32(wire.OPEN_READ), wire.u32(0))
    assert opened == bytes.fromhex("00000012" "03" "ffffffff" "00000001" "61" "00000001" "00000000")
    assert wire.request(wire.READDIR, 1) == bytes.fromhex("00000005" "0c" "00000001")
    assert wire.string(b"") == b"\0\0\0\0" and wire.u64(1) == b"\0" * 7 + b"\1"


def test_fields_are_read_big_endian_in_order():
    fields = wire.Reader(bytes.fromhex("0102030405060708090a0b0c" "00000003616263" "00000000"), 0)
    assert fields.u32() == 0x01020304 and fields.u64() == 0x05060708090A0B0C
    assert fields.string() == b"abc" and fields.at == 19
    view = fields.view()
    assert isinstance(view, memoryview) and bytes(view) == b"" and fields.at == 23
    assert wire.Reader(b"xx\0\0\0\1z", at=2).string() == b"z"


def test_attributes_of_every_flag_byte_for_byte():
    everything = bytes.fromhex(
        "8000000f"  # size | uid/gid | permissions | atime/mtime | extended
        "0000000000003039"  # size 12345
        "000003e8" "000003e8"  # uid, gid: skipped
        "000081a4"  # permissions 0o100644
        "00000001" "6553f100"  # atime (skipped), mtime 1700000000
        "00000001" "00000003" "782579" "00000001" "7a"  # one extended pair: skipped
        "ffff")
    fields = wire.Reader(everything)
    assert fields.attrs() == wire.Attrs(size=12345, mode=0o100644, mtime=1_700_000_000)
    assert everything[fields.at:] == b"\xff\xff"
    only_mtime = wire.Reader(bytes.fromhex("00000008" "00000005" "00000006"))
    assert only_mtime.attrs() == wire.Attrs(mtime=6) and only_mtime.at == 12
    only_uid = wire.Reader(bytes.fromhex("00000002" "00000005" "00000006" "ee"))
    assert only_uid.attrs() == wire.Attrs() and only_uid.at == 12
    two_pairs = wire.Reader(bytes.fromhex("80000000" "00000002" "00000001" "61" "00000000" "00000001" "62"
                                          "00000001" "63"))
    assert two_pairs.attrs() == wire.Attrs() and two_pairs.at == len(two_pairs.data)


@pytest.mark.parametrize("data, short", [
    (bytes.fromhex("000000"), 1), (bytes.fromhex("0000000a616263"), 7), (b"", 4)])
def test_a_truncated_field_says_how_many_bytes_are_missing(data, short):
    with pytest.raises(wire.ProtocolError, match=f"ended {short} bytes early"):
        wire.Reader(data).string()
    wire.Reader(bytes.fromhex("00000003616263")).string()  # exactly enough: no error


def test_a_u64_needs_eight_bytes():
    with pytest.raises(wire.ProtocolError, match="ended 1 bytes early"):
        wire.Reader(b"\0" * 7).u64()
    assert wire.Reader(b"\0" * 7 + b"\2").u64() == 2


def test_version_status_names_limits_byte_for_byte():
    assert wire.version_reply(bytes.fromhex("00000003")) == (3, {})
    with_limits = bytes.fromhex("00000003" "00000012") + b"limits@openssh.com" + bytes.fromhex("00000001" "31")
    assert wire.version_reply(with_limits) == (3, {b"limits@openssh.com": b"1"})
    err = wire.status(wire.Reader(bytes.fromhex("00000002" "00000004" "6e6f7065" "00000000")))
    assert err.code == 2 and err.strerror == "no such file: nope"
    bare = wire.status(wire.Reader(bytes.fromhex("00000001")))  # some servers send no message at all
    assert bare.code == 1 and bare.strerror == "end of file"
    named = wire.names(wire.Reader(bytes.fromhex("00000001" "00000001" "61" "00000002" "2d61" "00000001"
                                                 "0000000000000009")))
    assert named == [wire.Entry(b"a", wire.Attrs(size=9))]
    assert wire.names(wire.Reader(bytes.fromhex("00000000"))) == []
    limits = wire.limits(wire.Reader(bytes.fromhex("0000000000040000" "000000000003fc00" "000000000003fc00"
                                                   "0000000000000000")))
    assert limits == {"packet": 262144, "read": 261120, "write": 261120, "handles": 0}


def test_a_reply_that_must_be_ok():
    wire.check_ok(wire.STATUS, wire.Reader(bytes.fromhex("00000000" "00000000" "00000000")))  # OK: nothing raised
    with pytest.raises(wire.StatusError) as err:
        wire.check_ok(wire.STATUS, wire.Reader(bytes.fromhex("00000004" "00000004" "66756c6c" "00000000")))
    assert err.value.code == wire.FAILURE and err.value.strerror == "failure: full"
    with pytest.raises(wire.StatusError):
        wire.check_ok(wire.STATUS, wire.Reader(bytes.fromhex("00000001")))  # EOF is no success either
    for other in (wire.HANDLE, wire.DATA, wire.ATTRS, wire.STATUS - 1, wire.STATUS + 1):
        with pytest.raises(wire.ProtocolError, match=f"expected SFTP packet type 101, got {other}"):
            wire.check_ok(other, wire.Reader(bytes.fromhex("00000000")))


def test_a_field_past_the_end_counts_from_where_the_reader_is():
    with pytest.raises(wire.ProtocolError, match="ended 2 bytes early"):
        wire.Reader(b"\0" * 6, at=4).u32()
    assert wire.Reader(b"\0" * 7 + b"\5", at=4).u32() == 5


def test_parsed_records_are_frozen():
    import dataclasses

    for record, name in ((wire.Attrs(size=1), "size"), (wire.Entry(b"a", wire.Attrs()), "name")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, name, None)


def test_long_packets_are_read_to_their_exact_end():
    names = [b"ext%03d@example.com" % i for i in range(20)]  # a VERSION of more than 256 bytes
    payload = wire.u32(3) + b"".join(wire.string(n) + wire.string(b"1") for n in names)
    assert len(payload) > 256 and wire.version_reply(payload) == (3, {n: b"1" for n in names})
    padded = b"\0" * 300 + bytes.fromhex("00000001")  # a STATUS without a message, read from offset 300
    assert wire.status(wire.Reader(padded, at=300)).strerror == "end of file"
