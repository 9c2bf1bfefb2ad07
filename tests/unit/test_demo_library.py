"""The demo library generator writes real, decodable, correctly tagged audio."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mutagen
import pytest

from musicfs.commands.demo import (
    BIG_FILE_PATH,
    COVER_FILES,
    FULL_COVERAGE_TRACKS,
    JUNK_FILES,
    GeneratedTrack,
    make_library,
)

FFPROBE = shutil.which("ffprobe")
FFMPEG = shutil.which("ffmpeg")
FLAC = shutil.which("flac")


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> tuple[Path, list[GeneratedTrack]]:
    root = tmp_path_factory.mktemp("demo") / "library"
    return root, make_library(root)  # defaults: 24 tracks, hostile, seed 0


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, timeout=60)


def _run_all(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(_run, cmds))


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _tags(path: Path) -> dict[str, str | None]:
    """Normalise ID3 / Vorbis comments to one dict (None = tag absent)."""
    f = mutagen.File(path)
    assert f is not None, f"mutagen cannot parse {path}"
    tags = f.tags
    keys = {
        "artist": ("TPE1", "artist"),
        "albumartist": ("TPE2", "albumartist"),
        "album": ("TALB", "album"),
        "title": ("TIT2", "title"),
        "tracknumber": ("TRCK", "tracknumber"),
        "discnumber": ("TPOS", "discnumber"),
    }
    out: dict[str, str | None] = {}
    for name, (id3, vorbis) in keys.items():
        value = None
        if tags is not None:
            if path.suffix == ".mp3":
                frame = tags.get(id3)
                value = str(frame.text[0]) if frame is not None else None
            else:
                values = tags.get(vorbis)
                value = values[0] if values else None
        out[name] = value
    return out


def _num(value: str | None) -> int | None:
    return None if value is None else int(value.split("/")[0])


# --------------------------------------------------------------------------- #


def test_layout_formats_count_and_junk(lib):
    root, tracks = lib
    assert len(tracks) == 24 == FULL_COVERAGE_TRACKS
    assert {t.format for t in tracks} == {"flac", "mp3", "ogg"}
    paths = [t.path for t in tracks]
    assert len(set(paths)) == len(paths)
    for t in tracks:
        p = root / t.path
        assert p.is_file(), t.path
        assert not t.path.startswith("/") and "\\" not in t.path
        assert p.suffix == "." + t.format
        assert p.stat().st_size == t.size > 0
    # origin-like layout: artist/album folders, plus odd places
    assert any(t.path.count("/") == 0 for t in tracks), "no file in the root"
    assert any(t.path.startswith("misc/") for t in tracks)
    assert any(t.path.count("/") == 3 for t in tracks), "no disc sub-folder"
    for junk in JUNK_FILES:
        assert (root / junk).is_file()
        assert junk not in paths
    for cover in COVER_FILES:
        assert (root / cover).is_file()
    # every audio-looking file on disk is either returned or declared junk
    on_disk = {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".flac", ".mp3", ".ogg")
    }
    assert on_disk == set(paths) | set(JUNK_FILES)


def test_every_track_parses_with_promised_tags(lib):
    root, tracks = lib
    for t in tracks:
        f = mutagen.File(root / t.path)
        assert f is not None and f.info.length > 0.5, t.path
        got = _tags(root / t.path)
        if not t.tagged:
            assert all(v is None for v in got.values()), (t.path, got)
            assert t.title == Path(t.path).stem
            continue
        assert got["artist"] == t.artist, t.path
        assert got["albumartist"] == t.albumartist, t.path
        assert got["album"] == t.album, t.path
        assert got["title"] == t.title, t.path
        assert _num(got["tracknumber"]) == t.tracknumber, t.path
        assert _num(got["discnumber"]) == t.discnumber, t.path


def test_mp3_tags_are_id3v24(lib):
    root, tracks = lib
    mp3s = [t for t in tracks if t.format == "mp3" and t.tagged]
    assert mp3s
    for t in mp3s:
        f = mutagen.File(root / t.path)
        assert f.tags.version[:2] == (2, 4), t.path
        for frame in ("TPE1", "TPE2", "TALB", "TIT2"):
            assert frame in f.tags, (t.path, frame)


def test_library_covers_the_tricky_cases(lib):
    root, tracks = lib
    tagged = [t for t in tracks if t.tagged]

    # several artists / albums
    assert len({t.artist for t in tagged}) >= 6
    assert len({(t.albumartist, t.album) for t in tagged}) >= 6

    # compilation: albumartist "Various Artists", distinct track artists
    va = [t for t in tracks if t.albumartist == "Various Artists"]
    assert len(va) >= 3 and len({t.artist for t in va}) == len(va)
    assert "Various Artists" not in {t.artist for t in va}

    # multi-disc album with track numbers restarting per disc
    by_album: dict[tuple[str, str], list[GeneratedTrack]] = {}
    for t in tagged:
        by_album.setdefault((t.albumartist, t.album), []).append(t)
    multi = [ts for ts in by_album.values() if {t.discnumber for t in ts} >= {1, 2}]
    assert multi, "no multi-disc album"
    ts = multi[0]
    assert {t.tracknumber for t in ts if t.discnumber == 1} & {t.tracknumber for t in ts if t.discnumber == 2}

    # duplicate titles within one album (with and without track numbers)
    dups = [ts for ts in by_album.values() if len({t.title for t in ts}) < len(ts)]
    assert dups
    assert any(all(t.tracknumber is None for t in ts) for ts in dups)

    # missing track numbers
    assert sum(1 for t in tagged if t.tracknumber is None) >= 2

    # unicode everywhere
    text = "".join(t.artist + t.album + t.title for t in tagged)
    for ch in ("é", "ü", "ä"):
        assert ch in text, ch
    assert any("\u4e00" <= c <= "\u9fff" for c in text), "no CJK"
    assert any(ord(c) >= 0x1F300 for c in text), "no emoji"

    # hostile cases
    untagged = [t for t in tracks if not t.tagged]
    assert len(untagged) == 1
    assert any("/" in t.title for t in tagged)
    assert any(".." in t.title for t in tagged)
    assert any(len(t.title) >= 300 for t in tagged)
    assert any(t.artist.startswith(".") for t in tagged)
    for t in tracks:  # the path on disk never contains what the title does
        assert all(part not in ("", ".", "..") for part in t.path.split("/")), t.path
        assert all(len(part.encode()) <= 255 for part in t.path.split("/")), t.path


def test_large_embedded_picture(lib):
    root, tracks = lib
    from mutagen.flac import FLAC as FlacFile

    big = []
    for t in tracks:
        if t.format == "flac":
            for pic in FlacFile(root / t.path).pictures:
                if len(pic.data) >= 300_000:
                    big.append((t, pic))
    assert big, "no FLAC with a >= 300 KB embedded picture"
    t, pic = big[0]
    assert pic.mime == "image/png" and pic.data.startswith(b"\x89PNG\r\n\x1a\n")
    # the tags still parse and match: the picture sits before nothing important
    assert _tags(root / t.path)["title"] == t.title


def test_ffprobe_accepts_every_track_and_rejects_broken_mp3(lib):
    if not FFPROBE:
        pytest.skip("ffprobe not installed")
    root, tracks = lib
    results = _run_all([[FFPROBE, "-v", "error", "-show_format", str(root / t.path)] for t in tracks])
    bad = [(t.path, r.stderr.decode(errors="replace")) for t, r in zip(tracks, results) if r.returncode != 0]
    assert not bad
    for t, r in zip(tracks, results):
        assert f"format_name={t.format}\n" in r.stdout.decode(), t.path
    assert _run([FFPROBE, "-v", "error", "-show_format", str(root / JUNK_FILES[0])]).returncode != 0


def test_flac_t_passes_every_flac_and_fails_truncated(lib):
    if not FLAC:
        pytest.skip("flac not installed")
    root, tracks = lib
    flacs = [t for t in tracks if t.format == "flac"]
    assert len(flacs) >= 5
    results = _run_all([[FLAC, "-s", "-t", str(root / t.path)] for t in flacs])
    bad = [(t.path, r.stderr.decode(errors="replace")) for t, r in zip(flacs, results) if r.returncode != 0]
    assert not bad
    truncated = root / JUNK_FILES[1]
    assert truncated.stat().st_size == 100 and truncated.read_bytes().startswith(b"fLaC")
    assert _run([FLAC, "-s", "-t", str(truncated)]).returncode != 0


def test_broken_mp3_is_not_audio(lib):
    root, _ = lib
    data = (root / JUNK_FILES[0]).read_bytes()
    assert b"\xff" not in data  # no MPEG frame sync anywhere
    with pytest.raises(mutagen.MutagenError):
        mutagen.File(root / JUNK_FILES[0])


def test_cover_images_are_real(lib):
    if not FFPROBE:
        pytest.skip("ffprobe not installed")
    root, _ = lib
    jpg, png = (root / c for c in COVER_FILES)
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path, codec in ((jpg, "mjpeg"), (png, "png")):
        r = _run([FFPROBE, "-v", "error", "-show_streams", str(path)])
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert f"codec_name={codec}" in out and "width=16" in out and "height=16" in out
    if FFMPEG:  # decode the pixels: solid colours
        for path, rgb in ((jpg, (200, 60, 40)), (png, (40, 120, 200))):
            r = _run([FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            assert r.returncode == 0 and len(r.stdout) == 16 * 16 * 3
            for i in range(0, len(r.stdout), 3):
                assert all(abs(a - b) <= 3 for a, b in zip(r.stdout[i : i + 3], rgb)), (path, i)


def test_big_file(tmp_path):
    root = tmp_path / "big"
    tracks = make_library(root, tracks=3, big_file_mb=3, hostile=False)
    assert len(tracks) == 4
    big = tracks[-1]
    assert big.path == BIG_FILE_PATH and big.format == "flac"
    assert (big.artist, big.album, big.title) == ("Big Artist", "Big Album", "Long Track")
    path = root / big.path
    assert path.stat().st_size == big.size >= 3 * 1024 * 1024
    got = _tags(path)
    assert (got["artist"], got["album"], got["title"]) == ("Big Artist", "Big Album", "Long Track")
    if not FLAC:
        pytest.skip("flac not installed")
    r = _run([FLAC, "-s", "-t", str(path)])
    assert r.returncode == 0, r.stderr


def test_deterministic_for_a_seed(lib, tmp_path):
    root_a, a = lib  # seed 0
    b = make_library(tmp_path / "b", seed=0)
    c = make_library(tmp_path / "c", seed=1)
    key = lambda ts: [(t.path, t.title, t.artist) for t in ts]  # noqa: E731
    assert key(a) == key(b)
    assert a == b
    ha, hb, hc = _tree_hashes(root_a), _tree_hashes(tmp_path / "b"), _tree_hashes(tmp_path / "c")
    assert ha == hb  # byte for byte, Ogg serial numbers included
    assert key(a) == key(c)  # the catalogue itself is seed-independent...
    assert ha != hc  # ...but the audio is not


def test_progress_called_after_each_file(tmp_path):
    calls: list[tuple[int, int]] = []
    root = tmp_path / "p"
    make_library(root, tracks=24, progress=lambda d, t: calls.append((d, t)))
    files = [p for p in root.rglob("*") if p.is_file()]
    total = len(files)
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_not_hostile_small_and_large_libraries(tmp_path):
    small = make_library(tmp_path / "small", tracks=3, hostile=False)
    assert len(small) == 3 and {t.format for t in small} == {"flac", "mp3", "ogg"}
    for junk in JUNK_FILES:
        assert not (tmp_path / "small" / junk).exists()

    tame = make_library(tmp_path / "tame", tracks=24, hostile=False)
    assert len(tame) == 24 and all(t.tagged for t in tame)
    assert not any("/" in t.title or ".." in t.title or t.artist.startswith(".") for t in tame)
    assert all(len(t.title) < 100 for t in tame)

    large = make_library(tmp_path / "large", tracks=45, seed=3)
    assert len(large) == 45 and len({t.path for t in large}) == 45
    for t in large:
        assert (tmp_path / "large" / t.path).is_file()
        assert _tags(tmp_path / "large" / t.path)["title"] == (t.title if t.tagged else None)


def test_rejects_negative_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_library(tmp_path / "x", tracks=-1)
    with pytest.raises(ValueError):
        make_library(tmp_path / "y", big_file_mb=-1)
