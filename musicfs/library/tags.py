"""Read audio tags with mutagen through a seekable file object that fetches ranges lazily."""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import mutagen
from mutagen.easyid3 import EasyID3
from mutagen.easymp4 import EasyMP4Tags
from mutagen.id3 import ID3

from ..shared import normalise_opt

log = logging.getLogger(__name__)

BLOCK = 64 << 10
#: A scan's first request of a file: its head, big enough for the tags of nearly every file (cover art
#: included), so most files cost one request; more is read lazily, block by block.
HEAD = 2 * BLOCK
#: Formats whose parser also reads the end of the file get it in the same first request (S3: a concurrent
#: GET; SFTP: the same handle): MP3 (ID3v1, APEv2 and Lyrics3 at the end), Ogg/Opus (the last page gives the
#: duration), MP4 (moov often after mdat), WavPack/Monkey's (APEv2), DSF (ID3 at the end).
TAIL = BLOCK
TAIL_EXTENSIONS = {".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".wv", ".ape", ".dsf"}
AUDIO_EXTENSIONS = {".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".wv", ".ape", ".aif", ".aiff", ".wav", ".dsf"}
COVER_NAMES = {"cover", "folder", "front"}
COVER_EXTENSIONS = {".jpg", ".jpeg", ".png"}


def classify(path: str) -> str | None:
    """'track', 'cover', or None for files that are not part of the library."""
    stem, ext = os.path.splitext(os.path.basename(path))
    ext = ext.lower()
    if ext in AUDIO_EXTENSIONS:
        return "track"
    if ext in COVER_EXTENSIONS and stem.lower() in COVER_NAMES:
        return "cover"
    return None


class RangeFile(io.RawIOBase):
    """Read-only seekable file over `fetch(offset, length)`, caching whole 64 KiB blocks."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, name: str = ""):
        self._fetch = fetch
        self._size = size
        self._pos = 0
        self._blocks: dict[int, bytes] = {}
        self.name = name
        self.fetches = 0

    def preload(self, fetch_ranges: Callable[[list[tuple[int, int]]], list[bytes]]) -> None:
        """Fetch what the parser will read first in one request (`first_ranges`): `fetch_ranges` reads
        several ranges of one version of the file at once (Origin.read_ranges)."""
        ranges = first_ranges(self.name, self._size)
        if not ranges:
            return
        self.fetches += 1
        for (offset, _), data in zip(ranges, fetch_ranges(ranges)):
            for i in range(0, len(data), BLOCK):
                self._blocks[(offset + i) // BLOCK] = data[i:i + BLOCK]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _block(self, index: int) -> bytes:
        if index not in self._blocks:
            # Read sequentially (the block before is here), the next block likely follows: both in one
            # request, so a parser walking the head costs half the round trips. Never past EOF.
            count = 2 if index - 1 in self._blocks and index + 1 not in self._blocks \
                and (index + 1) * BLOCK < self._size else 1
            self.fetches += 1
            data = self._fetch(index * BLOCK, count * BLOCK)
            for i in range(count):
                self._blocks[index + i] = data[i * BLOCK:(i + 1) * BLOCK]
        return self._blocks[index]

    def readinto(self, buf) -> int:
        want = min(len(buf), self._size - self._pos)
        got = 0
        while got < want:
            block, inner = divmod(self._pos, BLOCK)
            data = self._block(block)[inner : inner + want - got]
            if not data:
                break
            buf[got : got + len(data)] = data
            got += len(data)
            self._pos += len(data)
        return got


def first_ranges(name: str, size: int) -> list[tuple[int, int]]:
    """Block-aligned (offset, length) ranges a scan reads first of a file named `name` of `size` bytes: the
    whole file when small, else its HEAD, and its last TAIL bytes too when the format keeps tags or the
    duration there (TAIL_EXTENSIONS)."""
    if size <= 0:
        return []
    tail = TAIL if os.path.splitext(name)[1].lower() in TAIL_EXTENSIONS else 0
    if size <= HEAD + tail + BLOCK:  # one more block is cheaper than a second range
        return [(0, size)]
    ranges = [(0, HEAD)]
    if tail:
        start = (size - tail) // BLOCK * BLOCK
        ranges.append((start, size - start))
    return ranges


@dataclass(frozen=True, kw_only=True)
class TrackTags:
    """What the catalog keeps of a track's tags (FileRow carries them too)."""

    artist: str | None = None
    albumartist: str | None = None
    album: str | None = None
    title: str | None = None
    track_no: int | None = None
    disc_no: int | None = None
    year: str | None = None
    genre: str | None = None
    duration: float | None = None


@dataclass(frozen=True, kw_only=True)
class Tags(TrackTags):
    """A file's tags as read, before the catalog files a compilation under Various Artists."""

    compilation: bool = False


def _text(value) -> str | None:
    """One tag value as clean text: lone surrogates (undecodable bytes) become U+FFFD, blank is None."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if hasattr(value, "text"):
        value = value.text[0] if value.text else None
        if value is None:
            return None
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # as tree.clean_name: escaped bytes back to bytes, then replaced
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        text = raw.decode("utf-8", "replace")
    return text.strip() or None


def _first(tags, *keys) -> str | None:
    for key in keys:
        try:
            text = _text(tags[key])
        except Exception:  # a missing key, or a value mutagen cannot give back: not a reason to lose the track
            continue
        if text:
            return text
    return None


def _number(text: str | None) -> int | None:
    """'3', '03/12', '3 of 12' -> 3; junk ('²', 'A1', '', '1e3') -> None. Never raises."""
    if not text or not text.split():
        return None
    head = text.split("/")[0].split()[0] if text.split("/")[0].split() else ""
    # isdecimal, not isdigit: '²' is a digit that int() refuses; decimal digits of any script are numbers
    if not head.isdecimal() or len(head) >= 7:
        return None
    try:
        return int(head)
    except ValueError:
        return None


def _duration(info) -> float | None:
    """Seconds of audio when mutagen knows them and they make sense (finite, positive)."""
    try:
        length = float(getattr(info, "length", None) or 0)
    except (TypeError, ValueError, OverflowError):
        return None
    return length if math.isfinite(length) and length > 0 else None


# Keys of the tags parse reads, and where a plain ID3 tag (WAV, AIFF: mutagen gives their ID3 frames, not the
# easy keys) keeps each. TCMP is iTunes' compilation flag.
_ID3_FRAMES = {"artist": "TPE1", "albumartist": "TPE2", "album": "TALB", "title": "TIT2", "tracknumber": "TRCK",
               "discnumber": "TPOS", "date": "TDRC", "year": "TYER", "genre": "TCON", "compilation": "TCMP"}


def _cpil(tags, key) -> list[str]:
    """An MP4's compilation flag (the `cpil` atom, as iTunes writes it) as the easy key `compilation`."""
    return ["1" if tags["cpil"] else "0"]


EasyMP4Tags.RegisterKey("compilation", getter=_cpil)


class _ID3Keys:
    """A plain ID3 tag looked up by the easy keys."""

    def __init__(self, id3):
        self.id3 = id3

    def __getitem__(self, key: str):
        return self.id3[_ID3_FRAMES[key]]


def load_parsers() -> None:
    """Import every format module mutagen.File may try. It imports them on its first call (20-30 ms), and the scan's
    threads, which parse at once, would all wait on the import lock meanwhile."""
    try:
        mutagen.File(io.BytesIO(b"\0" * 64))
    except Exception:  # nothing recognises 64 zero bytes; whatever it says, the modules are imported
        pass


def parse(fileobj: RangeFile) -> Tags | None:
    """Tags of an audio file, or None when mutagen does not recognise it."""
    audio = mutagen.File(fileobj, easy=True)
    if audio is None:
        return None
    tags = audio.tags or {}
    if isinstance(tags, ID3) and not isinstance(tags, EasyID3):
        tags = _ID3Keys(tags)
    return Tags(
        artist=_first(tags, "artist"),
        albumartist=_first(tags, "albumartist", "album artist"),
        album=_first(tags, "album"),
        title=_first(tags, "title"),
        track_no=_number(_first(tags, "tracknumber")),
        disc_no=_number(_first(tags, "discnumber")),
        year=_first(tags, "date", "year"),
        genre=_first(tags, "genre"),
        duration=_duration(audio.info),
        compilation=_flag(_first(tags, "compilation")),
    )


VARIOUS_ARTISTS = "Various Artists"
_TEXT_TAGS = ("artist", "albumartist", "album", "title", "year", "genre")


def _flag(text: str | None) -> bool:
    """A compilation flag as taggers write it: '1' (TCMP, COMPILATION), 'true', 'yes'."""
    return (text or "").strip().lower() in {"1", "true", "yes"}


def catalog_fields(found: Tags) -> dict:
    """What the catalog stores of a file's tags, normalised once here at scan (text.normalise), and a
    compilation without an album artist filed under Various Artists (one album folder, as players do)."""
    fields = {k: v for k, v in found.__dict__.items() if k != "compilation"}
    fields.update({k: normalise_opt(fields[k]) for k in _TEXT_TAGS})
    if found.compilation and not fields["albumartist"]:
        fields["albumartist"] = VARIOUS_ARTISTS
    return fields
