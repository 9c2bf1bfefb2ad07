"""The SFTP version 3 wire format, for what MusicFS asks of a server: packets in, packets out, no I/O."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# -- packet types ---------------------------------------------------------------------------------------------
INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE = 3, 4, 5, 6
LSTAT, FSTAT = 7, 8
OPENDIR, READDIR, REMOVE, MKDIR = 11, 12, 13, 14
REALPATH, STAT, RENAME = 16, 17, 18
EXTENDED = 200
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED_REPLY = 201

# -- status codes -----------------------------------------------------------------------------------------------
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE = 0, 1, 2, 3, 4
BAD_MESSAGE, NO_CONNECTION, CONNECTION_LOST, OP_UNSUPPORTED = 5, 6, 7, 8
STATUS_NAMES = {OK: "ok", EOF: "end of file", NO_SUCH_FILE: "no such file", PERMISSION_DENIED: "permission denied",
                FAILURE: "failure", BAD_MESSAGE: "bad message", NO_CONNECTION: "no connection",
                CONNECTION_LOST: "connection lost", OP_UNSUPPORTED: "operation unsupported"}

OPEN_READ, OPEN_WRITE, OPEN_CREAT, OPEN_TRUNC = 0x1, 0x2, 0x8, 0x10
_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_ACMODTIME, _ATTR_EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000

#: The read size every server accepts (the draft's minimum packet is 34000 bytes); a server that tells its
#: limits (limits@openssh.com) allows more.
SAFE_READ = 32 << 10
LIMITS = b"limits@openssh.com"
POSIX_RENAME = b"posix-rename@openssh.com"  # a rename that replaces the target at once

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBI")  # length, type, request id


class StatusError(OSError):
    """A STATUS reply other than OK (and other than EOF where that means the end): the server refused the request.
    The session stays usable."""

    def __init__(self, code: int, message: str):
        name = STATUS_NAMES.get(code, f"status {code}")
        super().__init__(None, f"{name}: {message}" if message and message.lower() != name else name)
        self.code = code


class ProtocolError(Exception):
    """The server sent something that is not SFTP v3 as MusicFS speaks it: the session cannot be trusted."""


@dataclass(frozen=True)
class Attrs:
    """A file's attributes as the server sends them (None where it did not say)."""

    size: int | None = None
    mode: int | None = None
    mtime: int | None = None  # whole seconds: all SFTP v3 has


@dataclass(frozen=True)
class Entry:
    """One name of a READDIR answer: the raw bytes of the name and its attributes."""

    name: bytes
    attrs: Attrs


def string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def request(kind: int, request_id: int, *fields: bytes) -> bytes:
    """One request packet: its fields are already encoded (`string`, `u32`, `u64`)."""
    body = b"".join(fields)
    return _HEAD.pack(len(body) + 5, kind, request_id) + body


def init(version: int = 3) -> bytes:
    return _U32.pack(5) + bytes([INIT]) + _U32.pack(version)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


class Reader:
    """Fields read in order from one packet's payload."""

    __slots__ = ("data", "at")

    def __init__(self, data: bytes | bytearray | memoryview, at: int = 0):
        self.data = memoryview(data)  # slices of it are copied once, into the bytes they become
        self.at = at

    def u32(self) -> int:
        self._need(4)
        (value,) = _U32.unpack_from(self.data, self.at)
        self.at += 4
        return value

    def u64(self) -> int:
        self._need(8)
        (value,) = _U64.unpack_from(self.data, self.at)
        self.at += 8
        return value

    def string(self) -> bytes:
        return bytes(self.view())

    def view(self) -> memoryview:
        """A string field without copying it (a READ's data: copied once, when the pieces are joined)."""
        size = self.u32()
        self._need(size)
        value = self.data[self.at:self.at + size]
        self.at += size
        return value

    def attrs(self) -> Attrs:
        flags = self.u32()
        size = self.u64() if flags & _ATTR_SIZE else None
        if flags & _ATTR_UIDGID:
            self.u32(), self.u32()
        mode = self.u32() if flags & _ATTR_PERMISSIONS else None
        mtime = None
        if flags & _ATTR_ACMODTIME:
            self.u32()
            mtime = self.u32()
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.string(), self.string()
        return Attrs(size=size, mode=mode, mtime=mtime)

    def _need(self, size: int) -> None:
        if self.at + size > len(self.data):
            raise ProtocolError(f"an SFTP packet ended {self.at + size - len(self.data)} bytes early")


def version_reply(payload: bytes) -> tuple[int, dict[bytes, bytes]]:
    """(version, extensions) of the VERSION packet's payload (its type byte excluded)."""
    fields = Reader(payload)
    version = fields.u32()
    extensions = {}
    while fields.at < len(payload):
        name = fields.string()
        extensions[name] = fields.string()
    return version, extensions


def check_ok(kind: int, fields: Reader) -> None:
    """A reply that must be STATUS OK (WRITE, CLOSE, MKDIR, RENAME, REMOVE): StatusError for any other code."""
    if kind != STATUS:
        raise ProtocolError(f"expected SFTP packet type {STATUS}, got {kind}")
    error = status(fields)
    if error.code != OK:
        raise error


def status(fields: Reader) -> StatusError:
    code = fields.u32()
    message = fields.string().decode("utf-8", "replace") if fields.at < len(fields.data) else ""
    return StatusError(code, message)


def names(fields: Reader) -> list[Entry]:
    """The entries of a NAME reply (READDIR, REALPATH)."""
    out = []
    for _ in range(fields.u32()):
        name = fields.string()
        fields.string()  # the long name (`ls -l` style): not used
        out.append(Entry(name, fields.attrs()))
    return out


def limits(fields: Reader) -> dict[str, int]:
    """The answer to limits@openssh.com: 0 means no limit."""
    return {key: fields.u64() for key in ("packet", "read", "write", "handles")}
