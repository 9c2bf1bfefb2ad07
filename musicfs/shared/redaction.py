"""Credentials never reach a message. Written into a SOURCE URL: `s3://KEY:SECRET@bucket/x` is shown as
`s3://***@bucket/x`, `sftp://me:PASSWORD@nas/x` as `sftp://me:***@nas/x`. At any log level (row 7.6): the values
the origins hold (`add_secrets`: keys, session tokens, passwords, passphrases), and what botocore writes at
DEBUG (AWS access key ids, `X-Amz-Security-Token` headers and query strings, the key id of `Credential=`,
`Signature=`, credential fields of STS and config dumps) are ***.

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
# What botocore logs at DEBUG: headers ('X-Amz-Security-Token': b'...'), canonical requests
# (x-amz-security-token:...), presigned queries (X-Amz-Security-Token=...), Authorization (Credential=AKID/...,
# Signature=...), credential dicts ('SecretAccessKey': '...'), and bare access key ids.
_FIELD = re.compile(r"(?i)((?:x-amz-security-token|aws_session_token|session_?token|aws_secret_access_key"
                    r"|secret_?access_?key|secretkey|password|passphrase)['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,&}]+")
_CREDENTIAL = re.compile(r"(?i)(Credential=|Signature=)[^/,\s'\"&]+")
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_SECRETS: set[str] = set()  # values an origin holds; never shorter than MIN_SECRET (a 1-letter one would mask text)
MIN_SECRET = 6


def add_secrets(*values: str | None) -> None:
    """Values that must never be written: an origin's keys, session token, password, passphrase."""
    _SECRETS.update(v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET)


def redact(text: str) -> str:
    """`text` with every credential replaced by *** (see the module doc)."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _S3_USERINFO.sub(rf"\g<1>{MASK}@", text)
        text = _SFTP_PASSWORD.sub(rf"\g<1>:{MASK}@", text)
    text = _FIELD.sub(rf"\g<1>{MASK}", text)
    text = _CREDENTIAL.sub(rf"\g<1>{MASK}", text)
    return _KEY_ID.sub(MASK, text)


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
