"""One spelling per library: a SOURCE in canonical form (trailing and doubled slashes, `.` segments, default ports)."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

#: Ports a URL need not name: the same library with and without them.
DEFAULT_PORTS = {"sftp": 22}
#: `s3:/music` (one slash): a URL typed short, not a relative folder named `s3:`.
_ONE_SLASH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def canonical_source(source: str) -> str:
    """`source` as every spelling of its library writes it; ValueError saying what is wrong with it.

    A folder: absolute and normalised (its realpath names the library, as before). A URL: the scheme in lower case,
    an SFTP host in lower case without its default port, the path without empty or `.` segments and without a
    trailing slash (`sftp://host/` keeps its one slash: the server's root, where `sftp://host` is the login
    folder); `..` is refused."""
    if "://" not in source:
        match = _ONE_SLASH.match(source)
        if match and not os.path.exists(match.group(0)[:-1]):  # unless a folder `s3:` is here
            scheme = match.group(1).lower()
            raise ValueError(f"{source!r} looks like a URL with one slash: write {scheme}://{source[match.end():]}")
        return os.path.normpath(os.path.abspath(source))
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    if scheme in DEFAULT_PORTS:  # a host name is case-blind; the default port goes
        user, at, hostport = netloc.rpartition("@")
        host, colon, port = hostport.rpartition(":")
        if not colon or not port.isdigit() or host.count("[") != host.count("]"):
            host, colon, port = hostport, "", ""
        if port == str(DEFAULT_PORTS[scheme]):
            colon = port = ""
        netloc = f"{user}{at}{host.lower()}{colon}{port}"
    segments = [s for s in parts.path.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise ValueError(f"{source!r}: '..' in a source's path is not allowed")
    path = "/" + "/".join(segments) if segments else ("/" if parts.path.startswith("/") and scheme == "sftp" else "")
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{scheme}://{netloc}{path}{query}{fragment}"
