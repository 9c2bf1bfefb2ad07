"""Tag text as names and search see it: normalised once, at scan, by `normalise`.

- NFC, so a tag written decomposed (macOS, some taggers) and one written composed give the same name;
- C0/C1 control characters, DEL and the Unicode line/paragraph separators become a space (a newline or a
  tab in a file name breaks players, playlists and line-per-path output);
- runs of spaces collapse to one and the ends are trimmed.

The tree's own rules (`/`, NUL, a leading dot, 255 bytes, duplicates) are applied on top, in tree.py.
`nfc` is what a lookup of a typed name goes through, so an NFD name finds the NFC entry.
"""

from __future__ import annotations

import re
import unicodedata

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(" {2,}")


def normalise(text: str) -> str:
    """NFC, control characters as spaces, runs of spaces collapsed, ends trimmed."""
    text = unicodedata.normalize("NFC", _CONTROLS.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


def normalise_opt(text: str | None) -> str | None:
    """`normalise` for an optional tag: None, and text that normalises to nothing, stay None."""
    if text is None:
        return None
    return normalise(text) or None


def nfc(name: bytes) -> bytes | None:
    """The NFC form of a UTF-8 name, or None when it is not UTF-8 or already NFC."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    composed = unicodedata.normalize("NFC", text).encode("utf-8")
    return composed if composed != name else None
