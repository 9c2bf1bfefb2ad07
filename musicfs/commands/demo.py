"""Generate sample music libraries made of real, decodable audio.

``make_library(root)`` writes a small, origin-like music tree (FLAC, MP3 and Ogg
Vorbis, real encoded audio with real tags) that exercises the awkward cases a
music-library cache must cope with: compilations, multi-disc albums, duplicate
titles, missing track numbers, unicode everywhere and, with ``hostile=True``,
untagged files, path-like titles, a 300+ character title, an artist starting
with a dot, a large embedded picture and two junk files that only *look* like
audio (``JUNK_FILES``; written, never returned).

Every audio file is decodable (``ffprobe`` accepts it, ``flac -t`` passes every
FLAC).  Output is deterministic: the same ``seed`` gives the same paths, tags
and bytes.

``GeneratedTrack`` fields describe exactly the tags that were written; an empty
string means "tag not written" and ``None`` means "number not written".  For the
one untagged file (``tagged=False``) ``title`` is the file name stem, i.e. the
fallback a scanner is expected to use.
"""

from __future__ import annotations

import io
import os
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..shared import MusicFSError


class DemoUnavailable(MusicFSError):
    """numpy/soundfile are the `demo` extra, not dependencies of the daemon."""


try:
    import numpy as np
    import soundfile as sf
except ImportError as exc:  # `musicfs demo` and the test fixtures need them; mount, scan, status do not
    raise DemoUnavailable(f"musicfs demo needs {exc.name or 'numpy and soundfile'}: "
                          "pip install 'musicfs[demo]' (make run installs it)") from exc

__all__ = [
    "GeneratedTrack",
    "make_library",
    "JUNK_FILES",
    "COVER_FILES",
    "FULL_COVERAGE_TRACKS",
    "BIG_FILE_PATH",
    "jpeg_solid",
    "png_solid",
]

#: Relative paths of the non-audio / truncated files written when ``hostile=True``.
#: They carry audio extensions but must be skipped by a scanner.
JUNK_FILES: tuple[str, ...] = ("misc/broken.mp3", "misc/truncated.flac")

#: Relative paths of the folder cover images (written when their album is present).
COVER_FILES: tuple[str, ...] = (
    "Aurora Quartet/Northern Lights/cover.jpg",
    "Various Artists/Summer Compilation 2024/folder.png",
)

#: Relative path of the big file written when ``big_file_mb > 0``.
BIG_FILE_PATH = "Big Artist/Big Album/01 Long Track.flac"

SAMPLE_RATE = 44100

_FORMATS = {
    # ext: (soundfile format, subtype)
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


@dataclass(frozen=True)
class GeneratedTrack:
    path: str  # relative to root, '/'-separated
    format: str  # "flac" | "mp3" | "ogg"
    artist: str
    albumartist: str
    album: str
    title: str
    tracknumber: int | None
    discnumber: int | None
    size: int  # bytes on disk
    tagged: bool = True  # False only for the deliberately untagged file


@dataclass(frozen=True)
class _Spec:
    path: str
    fmt: str
    title: str = ""
    tracknumber: int | None = None
    artist: str = ""
    albumartist: str = ""
    album: str = ""
    discnumber: int | None = None
    tracktotal: int | None = None
    disctotal: int | None = None
    date: str = ""
    genre: str = ""
    tagged: bool = True
    channels: int = 2
    big_picture: bool = False  # embed a ~300 KB PNG (FLAC only)
    small_picture: bool = False  # embed the small JPEG (MP3 only)


# --------------------------------------------------------------------------- #
# The catalogue
# --------------------------------------------------------------------------- #

_LONG_TITLE = (
    "Sinfonía für einen außergewöhnlich langen Titel — "
    "an extraordinarily long title that keeps going and going, "
    "well past what any sane file system accepts as a single path component, "
    "with ümlauts, accents (é, è, ê), CJK (長い曲名のテスト) and emoji 🎻🎺🥁 "
    "so that byte length and character length differ, "
    "and yet still more words to push it comfortably over three hundred characters — Fin."
)
assert len(_LONG_TITLE) >= 300


def _file_stem(title: str, limit: int = 80) -> str:
    """A file-system-safe stem for a title (the tags keep the real title)."""
    stem = title.replace("/", "_").replace("\x00", "")
    if len(stem) > limit:
        stem = stem[:limit].rstrip() + "…"
    return stem


def _album_tracks(
    artist: str,
    album: str,
    items: Sequence[tuple[int | None, str, str]],
    *,
    albumartist: str | None = None,
    folder: str | None = None,
    date: str = "",
    genre: str = "",
    artists: Sequence[str] | None = None,
    channels: Sequence[int] | None = None,
) -> list[_Spec]:
    folder = folder or f"{albumartist or artist}/{album}"
    specs = []
    for i, (num, title, fmt) in enumerate(items):
        a = artists[i] if artists else artist
        name = f"{num:02d} {_file_stem(title)}" if num is not None else _file_stem(title)
        specs.append(
            _Spec(
                path=f"{folder}/{name}.{fmt}",
                fmt=fmt,
                artist=a,
                albumartist=albumartist or artist,
                album=album,
                title=title,
                tracknumber=num,
                tracktotal=len(items) if num is not None else None,
                date=date,
                genre=genre,
                channels=channels[i] if channels else 2,
            )
        )
    return specs


def _core_specs() -> list[_Spec]:
    """Good, tagged tracks covering the non-hostile cases (seed independent)."""
    aurora = _aurora_specs()
    # Order matters: a truncated library (small ``tracks``) keeps the first
    # entries, and the first three cover all formats.
    return (aurora[:3] + _cafe_specs() + _compilation_specs() + _multidisc_specs() + _sessions_specs()
            + _loose_specs() + aurora[3:])


def _aurora_specs() -> list[_Spec]:
    return _album_tracks(
        "Aurora Quartet",
        "Northern Lights",
        [(1, "Polar Dawn", "flac"), (2, "Midnight Sun", "mp3"), (3, "Aurora", "ogg"), (4, "Borealis", "mp3")],
        date="2019",
        genre="Ambient",
        channels=[2, 2, 1, 2],
    )


def _cafe_specs() -> list[_Spec]:
    cafe = _album_tracks(
        "Björk Müller",
        "Café Träume",
        [(1, "Über den Dächern", "flac"), (2, "Interlude", "flac"), (3, "Interlude", "flac"), (4, "Schöne Grüße", "ogg")],
        date="2021",
        genre="Chanson",
    )
    # Embed a large (~300 KB) picture into the first FLAC of the album.
    cafe[0] = _replace(cafe[0], big_picture=True)
    return cafe


def _compilation_specs() -> list[_Spec]:
    va = _album_tracks(
        "Various Artists",
        "Summer Compilation 2024",
        [(1, "Sunny Day", "mp3"), (2, "夏の雨", "ogg"), (3, "Party 🎉", "flac")],
        albumartist="Various Artists",
        artists=["The Beachcombers", "坂本 美雨", "DJ 🎧 Emoji"],
        date="2024",
        genre="Pop",
    )
    va[0] = _replace(va[0], small_picture=True)
    return va


def _multidisc_specs() -> list[_Spec]:
    multidisc = []
    for disc, items in (
        (1, [(1, "Symphony No. 1: Allegro", "flac"), (2, "Symphony No. 1: Adagio", "mp3")]),
        (2, [(1, "Symphony No. 2: Allegro", "ogg"), (2, "Symphony No. 2: Finale", "flac")]),
    ):
        for spec in _album_tracks(
            "Midnight Orchestra",
            "The Complete Symphonies",
            items,
            folder=f"Midnight Orchestra/The Complete Symphonies/Disc {disc}",
            date="1998",
            genre="Classical",
        ):
            multidisc.append(_replace(spec, discnumber=disc, disctotal=2))
    return multidisc


def _track(path: str, artist: str, album: str, title: str, tracknumber: int | None = None, **more) -> _Spec:
    """One hand-placed track: the format from its extension, its own artist as album artist."""
    return _Spec(path=path, fmt=path.rsplit(".", 1)[1], artist=artist, albumartist=artist, album=album, title=title,
                 tracknumber=tracknumber, **more)


def _sessions_specs() -> list[_Spec]:
    return [
        _track("Street Busker/Sessions/Untitled Jam.ogg", "Street Busker", "Sessions", "Untitled Jam", genre="Folk"),
        # Same title, same format, no track number: the tree must disambiguate.
        _track("Street Busker/Sessions/Untitled Jam (take 2).ogg", "Street Busker", "Sessions", "Untitled Jam",
               genre="Folk", channels=1),
    ]


def _loose_specs() -> list[_Spec]:
    return [
        _track("Loose in the Root.mp3", "Lonely Artist", "Singles", "Loose in the Root", date="2015"),
        _track("misc/random find.flac", "Unknown Band", "Bootlegs", "Random Find", 7),
    ]


def _hostile_specs() -> list[_Spec]:
    slash = "Slash & Friends"
    return [
        _Spec(path="misc/no_tags_at_all.mp3", fmt="mp3", title="no_tags_at_all", tagged=False),
        _track("Path Tricks/Slashes/01 AC_DC Tribute.ogg", slash, "Slashes", "AC/DC Tribute", 1),
        _track("Path Tricks/Slashes/02 .._.._etc_passwd.flac", slash, "Slashes", "../../etc/passwd", 2),
        _track(f"Path Tricks/Slashes/03 {_file_stem(_LONG_TITLE)}.mp3", slash, "Slashes", _LONG_TITLE, 3),
        # The tag starts with a dot; the origin folder deliberately does not
        # (a scanner may legitimately skip hidden directories).
        _track("dotfile Collective/Hidden Things/01 Invisible.flac", ".dotfile Collective", "Hidden Things",
               "Invisible", 1),
    ]


_FILLER_ARTISTS = (
    "Glass Harbor", "Nina Okafor", "Los Pájaros", "Kaito Mori", "Velvet Static",
    "Ødegaard Trio", "Zoë & The Zebras", "Mika Häkkinen Band", "Sable Coast", "李 小龙 Ensemble",
)
_FILLER_ADJ = ("Silent", "Electric", "Golden", "Hollow", "Crimson", "Paper", "Distant", "Neon", "Wild", "Frozen")
_FILLER_NOUN = ("Rivers", "Engines", "Gardens", "Signals", "Mirrors", "Lanterns", "Horizons", "Cities", "Tides", "Echoes")
_FILLER_TITLE = (
    "Opening", "Driftwood", "Static Bloom", "Night Drive", "Paper Moon", "Lullaby", "Overpass",
    "Undertow", "Glasshouse", "Satellites", "Coda", "Weightless", "Northbound", "Ember", "Afterglow",
)


def _filler_specs(n: int, rng: np.random.Generator) -> list[_Spec]:
    specs: list[_Spec] = []
    used_albums: set[tuple[str, str]] = set()
    per_album = 8
    while len(specs) < n:
        artist = str(rng.choice(_FILLER_ARTISTS))
        album = f"{rng.choice(_FILLER_ADJ)} {rng.choice(_FILLER_NOUN)}"
        base, vol = album, 2
        while (artist, album) in used_albums:
            album = f"{base} Vol. {vol}"
            vol += 1
        used_albums.add((artist, album))
        count = min(per_album, n - len(specs))
        titles = rng.choice(len(_FILLER_TITLE), size=count, replace=False)
        fmts = rng.choice(list(_FORMATS), size=count)
        items = [(i + 1, _FILLER_TITLE[t], str(f)) for i, (t, f) in enumerate(zip(titles, fmts))]
        specs.extend(
            _album_tracks(artist, album, items, date=str(1990 + int(rng.integers(0, 35))), genre="Demo")
        )
    return specs


def _replace(spec: _Spec, **changes) -> _Spec:
    from dataclasses import replace

    return replace(spec, **changes)


# --------------------------------------------------------------------------- #
# Images (no PIL): a tiny baseline JPEG encoder for solid colours and PNG
# --------------------------------------------------------------------------- #

# Standard luminance DC Huffman table (ITU T.81, Annex K.3).
_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_VALS = tuple(range(12))
# AC table: the only symbol ever needed for a flat block is EOB (0x00).
_AC_BITS = (1,) + (0,) * 15
_AC_VALS = (0x00,)


def _huff_codes(bits: Sequence[int], vals: Sequence[int]) -> dict[int, tuple[int, int]]:
    codes: dict[int, tuple[int, int]] = {}
    code, k = 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[vals[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, length: int) -> None:
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0x00)  # byte stuffing
                self.acc = self.n = 0

    def flush(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with 1-bits
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def jpeg_solid(width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    """A valid baseline JFIF JPEG of one solid colour (YCbCr 4:4:4)."""
    r, g, b = rgb
    ycc = (
        0.299 * r + 0.587 * g + 0.114 * b,
        128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
        128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
    )
    # With an all-ones quantisation table the DC coefficient of a flat block
    # of level-shifted value v is 8 * v.
    dcs = [int(round(8 * (min(255.0, max(0.0, c)) - 128))) for c in ycc]
    dc_codes = _huff_codes(_DC_BITS, _DC_VALS)
    ac_codes = _huff_codes(_AC_BITS, _AC_VALS)
    bw = _BitWriter()
    pred = [0, 0, 0]
    mcus = ((width + 7) // 8) * ((height + 7) // 8)
    for _ in range(mcus):
        for c in range(3):
            diff = dcs[c] - pred[c]
            pred[c] = dcs[c]
            cat = abs(diff).bit_length()
            bw.put(*dc_codes[cat])
            if cat:
                bw.put(diff if diff >= 0 else diff + (1 << cat) - 1, cat)
            bw.put(*ac_codes[0x00])  # EOB
    scan = bw.flush()
    out = bytearray(b"\xff\xd8")
    out += _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += _segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00")
    out += _segment(0xC4, b"\x00" + bytes(_DC_BITS) + bytes(_DC_VALS))
    out += _segment(0xC4, b"\x10" + bytes(_AC_BITS) + bytes(_AC_VALS))
    out += _segment(0xDA, b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00")
    out += scan
    out += b"\xff\xd9"
    return bytes(out)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, rows: bytes, level: int = 6) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows, level))
        + _png_chunk(b"IEND", b"")
    )


def png_solid(width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    """A valid PNG of one solid colour."""
    row = b"\x00" + bytes(rgb) * width
    return _png(width, height, row * height)


def _png_noise(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A valid PNG of RGB noise: barely compressible, so roughly 3*w*h bytes."""
    pix = rng.integers(0, 256, size=(height, width * 3), dtype=np.uint8)
    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), pix], axis=1)
    return _png(width, height, rows.tobytes(), level=1)


# --------------------------------------------------------------------------- #
# Audio
# --------------------------------------------------------------------------- #


def _tone(index: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """A short chord whose root frequency is unique per track index."""
    duration = 1.0 + 0.5 * float(rng.integers(0, 3))  # 1.0, 1.5 or 2.0 s
    n = int(SAMPLE_RATE * duration)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    root = 110.0 * 2.0 ** ((index * 7 % 36) / 12.0) + float(rng.uniform(0.0, 3.0)) + index * 0.37
    sig = np.zeros(n)
    for ratio, amp in ((1.0, 0.5), (1.25, 0.3), (1.5, 0.25), (2.0, 0.15)):
        sig += amp * np.sin(2 * np.pi * root * ratio * t)
    fade = min(n // 2, int(0.05 * SAMPLE_RATE))
    env = np.ones(n)
    env[:fade] = np.linspace(0.0, 1.0, fade)
    env[-fade:] = np.linspace(1.0, 0.0, fade)
    sig *= env * 0.25
    if channels == 1:
        return sig.astype(np.float32)
    right = sig * 0.8 + 0.2 * np.roll(sig, 200)
    return np.stack([sig, right], axis=1).astype(np.float32)


def _fix_ogg_serial(path: Path, serial: int) -> None:
    """libvorbis picks a random stream serial; pin it so output is reproducible."""
    from mutagen.ogg import OggPage

    pages = []
    with open(path, "rb") as fh:
        while True:
            try:
                pages.append(OggPage(fh))
            except EOFError:
                break
    buf = io.BytesIO()
    for page in pages:
        page.serial = serial
        buf.write(page.write())
    path.write_bytes(buf.getvalue())


def _write_tags(path: Path, spec: _Spec, picture_rng: np.random.Generator) -> None:
    if not spec.tagged:
        _strip_tags(path, spec)
    elif spec.fmt == "mp3":
        _write_id3(path, spec)
    else:
        _write_vorbis_comments(path, spec, picture_rng)


def _strip_tags(path: Path, spec: _Spec) -> None:
    if spec.fmt != "mp3":  # libsndfile writes an ENCODER comment for Vorbis/FLAC
        import mutagen

        f = mutagen.File(path)
        f.delete()


def _write_id3(path: Path, spec: _Spec) -> None:
    from mutagen.id3 import APIC, ID3, TALB, TCON, TDRC, TIT2, TPE1, TPE2, TPOS, TRCK

    tags = ID3()
    tags.add(TPE1(encoding=3, text=[spec.artist]))
    tags.add(TPE2(encoding=3, text=[spec.albumartist]))
    tags.add(TALB(encoding=3, text=[spec.album]))
    tags.add(TIT2(encoding=3, text=[spec.title]))
    if spec.tracknumber is not None:
        trck = f"{spec.tracknumber}/{spec.tracktotal}" if spec.tracktotal else str(spec.tracknumber)
        tags.add(TRCK(encoding=3, text=[trck]))
    if spec.discnumber is not None:
        tpos = f"{spec.discnumber}/{spec.disctotal}" if spec.disctotal else str(spec.discnumber)
        tags.add(TPOS(encoding=3, text=[tpos]))
    if spec.date:
        tags.add(TDRC(encoding=3, text=[spec.date]))
    if spec.genre:
        tags.add(TCON(encoding=3, text=[spec.genre]))
    if spec.small_picture:
        tags.add(APIC(encoding=3, mime="image/jpeg", type=3, desc="Cover", data=jpeg_solid(32, 32, (240, 200, 40))))
    tags.save(path, v2_version=4)


def _write_vorbis_comments(path: Path, spec: _Spec, picture_rng: np.random.Generator) -> None:
    """FLAC and Ogg Vorbis tags (and, for a FLAC with ``big_picture``, the large cover)."""
    if spec.fmt == "flac":
        from mutagen.flac import FLAC as Tagged
    else:
        from mutagen.oggvorbis import OggVorbis as Tagged
    f = Tagged(path)
    if f.tags is None:
        f.add_tags()
    f.tags.clear()  # drop libsndfile's ENCODER comment
    f["ARTIST"] = spec.artist
    f["ALBUMARTIST"] = spec.albumartist
    f["ALBUM"] = spec.album
    f["TITLE"] = spec.title
    if spec.tracknumber is not None:
        f["TRACKNUMBER"] = str(spec.tracknumber)
        if spec.tracktotal:
            f["TRACKTOTAL"] = str(spec.tracktotal)
    if spec.discnumber is not None:
        f["DISCNUMBER"] = str(spec.discnumber)
        if spec.disctotal:
            f["DISCTOTAL"] = str(spec.disctotal)
    if spec.date:
        f["DATE"] = spec.date
    if spec.genre:
        f["GENRE"] = spec.genre
    if spec.big_picture and spec.fmt == "flac":
        f.add_picture(_big_cover(picture_rng))
    f.save()


def _big_cover(rng: np.random.Generator):
    """A ~300 KB front-cover picture block of PNG noise."""
    from mutagen.flac import Picture

    pic = Picture()
    pic.type = 3  # front cover
    pic.mime = "image/png"
    pic.desc = "Front cover (large)"
    pic.width, pic.height, pic.depth = 320, 320, 24
    pic.data = _png_noise(320, 320, rng)  # ~300 KB
    return pic


def _write_audio(root: Path, spec: _Spec, index: int, seed: int) -> tuple[int, bytes]:
    """Write one track; return its size and (for FLAC) its untagged head."""
    rng = np.random.default_rng([seed, index])
    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, subtype = _FORMATS[spec.fmt]
    sf.write(path, _tone(index, spec.channels, rng), SAMPLE_RATE, format=fmt, subtype=subtype)
    head = path.read_bytes()[:100] if spec.fmt == "flac" else b""
    _write_tags(path, spec, rng)
    if spec.fmt == "ogg":
        _fix_ogg_serial(path, (seed * 7919 + index * 104729 + 1) & 0x7FFFFFFF)
    return path.stat().st_size, head


def _write_big_flac(path: Path, min_bytes: int, seed: int) -> None:
    """A FLAC of at least ``min_bytes``: full-scale noise, written in blocks."""
    from mutagen.flac import FLAC

    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 2
    bytes_per_frame = 2 * channels
    rng = np.random.default_rng([seed, 0xB16])
    # Noise is incompressible, so FLAC stores it verbatim (~raw size); add a
    # small margin and verify afterwards.
    frames = int(min_bytes * 1.02 / bytes_per_frame) + SAMPLE_RATE
    block = 1 << 16
    while True:
        with sf.SoundFile(
            path, "w", samplerate=SAMPLE_RATE, channels=channels, format="FLAC", subtype="PCM_16"
        ) as out:
            left = frames
            while left > 0:
                n = min(block, left)
                out.write(rng.integers(-32768, 32768, size=(n, channels), dtype=np.int16))
                left -= n
        if path.stat().st_size >= min_bytes:
            break
        frames = int(frames * 1.1)  # pragma: no cover - noise never compresses that well
    f = FLAC(path)
    if f.tags is None:
        f.add_tags()
    f.tags.clear()
    f["ARTIST"] = "Big Artist"
    f["ALBUMARTIST"] = "Big Artist"
    f["ALBUM"] = "Big Album"
    f["TITLE"] = "Long Track"
    f["TRACKNUMBER"] = "1"
    f["GENRE"] = "Noise"
    f.save()


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #

#: With at least this many tracks (and ``hostile=True``) every case is present.
FULL_COVERAGE_TRACKS = len(_core_specs()) + len(_hostile_specs())


def _plan(tracks: int, seed: int, hostile: bool) -> list[_Spec]:
    specs = _core_specs() + (_hostile_specs() if hostile else [])
    if tracks > len(specs):
        specs += _filler_specs(tracks - len(specs), np.random.default_rng([seed, 0xF111]))
    specs = specs[:tracks]
    specs = [_replace(s, path=unicodedata.normalize("NFC", s.path)) for s in specs]
    assert len({s.path for s in specs}) == len(specs), "duplicate path in plan"
    return specs


def make_library(
    root: str | os.PathLike,
    tracks: int = 24,
    *,
    seed: int = 0,
    big_file_mb: int = 0,
    hostile: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[GeneratedTrack]:
    """Write a sample library into ``root`` and describe its good audio files.

    ``tracks`` good audio files are written (plus ``BIG_FILE_PATH`` when
    ``big_file_mb > 0``, which is returned too, last).  With ``hostile=True``
    the ``JUNK_FILES`` are also written but not returned.  Cover images
    (``COVER_FILES``) are written next to their album when it is present.
    ``progress(done, total)`` is called after every file written.
    """
    if tracks < 0:
        raise ValueError("tracks must be >= 0")
    if big_file_mb < 0:
        raise ValueError("big_file_mb must be >= 0")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    specs = _plan(tracks, seed, hostile)
    folders = {s.path.rsplit("/", 1)[0] for s in specs if "/" in s.path}
    covers = [c for c in COVER_FILES if c.rsplit("/", 1)[0] in folders]
    total = len(specs) + len(covers) + (len(JUNK_FILES) if hostile else 0) + (1 if big_file_mb else 0)
    tick = _counter(total, progress)

    result, flac_head = _write_tracks(root, specs, seed, tick)
    _write_covers(root, covers, tick)
    if hostile:
        _write_junk(root, seed, flac_head, tick)
    if big_file_mb:
        result.append(_write_big_track(root, big_file_mb, seed))
        tick()
    return result


def _counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[], None]:
    """A tick() that counts files written and reports ``progress(done, total)``."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return tick


def _write_tracks(
    root: Path, specs: list[_Spec], seed: int, tick: Callable[[], None]
) -> tuple[list[GeneratedTrack], bytes]:
    """Write every planned track; return their descriptions and the untagged head of the first FLAC."""
    result: list[GeneratedTrack] = []
    flac_head = b""
    for index, spec in enumerate(specs):
        size, head = _write_audio(root, spec, index, seed)
        flac_head = flac_head or head
        result.append(
            GeneratedTrack(
                path=spec.path,
                format=spec.fmt,
                artist=spec.artist,
                albumartist=spec.albumartist,
                album=spec.album,
                title=spec.title,
                tracknumber=spec.tracknumber,
                discnumber=spec.discnumber,
                size=size,
                tagged=spec.tagged,
            )
        )
        tick()
    return result, flac_head


def _write_covers(root: Path, covers: list[str], tick: Callable[[], None]) -> None:
    for cover in covers:
        data = jpeg_solid(16, 16, (200, 60, 40)) if cover.endswith(".jpg") else png_solid(16, 16, (40, 120, 200))
        (root / cover).write_bytes(data)
        tick()


def _write_junk(root: Path, seed: int, flac_head: bytes, tick: Callable[[], None]) -> None:
    """The ``JUNK_FILES``: text posing as an MP3, and a FLAC cut off after its first 100 bytes."""
    rng = np.random.default_rng([seed, 0xBAD])
    misc = root / "misc"
    misc.mkdir(parents=True, exist_ok=True)
    junk = rng.integers(0, 255, size=8192, dtype=np.uint8)  # never 0xFF: no MPEG sync word
    (root / JUNK_FILES[0]).write_bytes(b"This is not an MP3 file.\n" + junk.tobytes())
    tick()
    if not flac_head:  # no FLAC in a tiny library: make one just for its head
        buf = io.BytesIO()
        sf.write(buf, _tone(0, 2, rng), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        flac_head = buf.getvalue()[:100]
    (root / JUNK_FILES[1]).write_bytes(flac_head)
    tick()


def _write_big_track(root: Path, big_file_mb: int, seed: int) -> GeneratedTrack:
    big = root / BIG_FILE_PATH
    _write_big_flac(big, big_file_mb * 1024 * 1024, seed)
    return GeneratedTrack(
        path=BIG_FILE_PATH,
        format="flac",
        artist="Big Artist",
        albumartist="Big Artist",
        album="Big Album",
        title="Long Track",
        tracknumber=1,
        discnumber=None,
        size=big.stat().st_size,
    )
