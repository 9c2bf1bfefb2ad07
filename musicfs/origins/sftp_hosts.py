"""Whom an SFTP origin talks to and what paramiko says of it: unknown host keys refused, paramiko's connection chatter at DEBUG."""

from __future__ import annotations

import logging
from typing import Any

import paramiko

from .sftp_errors import (
    UnknownHostKey,
)

PARAMIKO_LOG_CHANNEL = "musicfs.origins.sftp.paramiko"


class _DemoteToDebug(logging.Filter):
    """paramiko's transport thread logs every connection failure at ERROR, with a
    traceback. The same failure reaches the caller as a classified OriginError
    (and retry policy decides whether it matters), so those records are kept
    at DEBUG only, on PARAMIKO_LOG_CHANNEL."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.msg = f"(paramiko {record.levelname}) {record.msg}"
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
        return True


class _RejectUnknownHost(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: str, exists: bool):
        self.known_hosts = known_hosts
        self.exists = exists

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        fingerprint = key.fingerprint if hasattr(key, "fingerprint") else key.get_name()
        where = self.known_hosts + ("" if self.exists else " (file does not exist)")
        raise UnknownHostKey(
            f"host {hostname} is not in known_hosts file {where}; refusing its "
            f"{key.get_name()} key {fingerprint}. Verify it and add it, e.g. "
            f"ssh-keyscan -t ed25519 ... >> {self.known_hosts}"
        )
