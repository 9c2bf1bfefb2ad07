"""Credentials written into a SOURCE URL never reach a message: `s3://KEY:SECRET@bucket/x` is shown as
`s3://***@bucket/x`, `sftp://me:PASSWORD@nas/x` as `sftp://me:***@nas/x`.

The URL forms themselves are refused (credentials belong in `[origin_options]` or the environment), but the
refusal, the log, `musicfs status` and daemon.json must not echo what was typed. Used by the log handler's
filter (logsetup), the command line's error line, status output and the daemon's state file.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
# userinfo of an s3:// URL is all secret (a key id, a secret key); of an sftp:// URL only the password is.
# A secret may hold `/` or `+` (AWS secret keys do), so it runs to the `@`; the user / key id never has `/`.
_S3_USERINFO = re.compile(r"(?i)\b(s3://)(?:[^\s/@:'\"]+:[^\s@'\"]*|[^\s/@:'\"]+)@")
_SFTP_PASSWORD = re.compile(r"(?i)\b(sftp://[^\s/@:'\"]*):[^\s@'\"]*@")


def redact(text: str) -> str:
    """`text` with every credential inside an s3:// or sftp:// URL replaced by ***."""
    if "://" not in text:
        return text
    text = _S3_USERINFO.sub(rf"\g<1>{MASK}@", text)
    return _SFTP_PASSWORD.sub(rf"\g<1>:{MASK}@", text)


def redact_all(value):
    """`value` (a str, or lists / tuples / dicts of them, as in a status document) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v) for v in value)
    if isinstance(value, dict):
        return {redact_all(k): redact_all(v) for k, v in value.items()}
    return value


class RedactFilter(logging.Filter):
    """On a handler: a record whose text holds a credential-bearing URL is rewritten before it is formatted
    (its message and its traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format: logging reports it itself when formatting
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
