#!/usr/bin/env python3
"""Media-server scans (issue 12): what real tag scanners cost the origin through MusicFS and rclone.

    .venv/bin/python bench/media_scan.py [--tracks 40] [--clients mediainfo,ffprobe,mpd,beets]
                                         [--library-cache DIR] [--out docs/benchmarks.md]

A library of realistic tracks (3-20 MB FLAC / MP3 / Ogg Vorbis / M4A, made by ffmpeg from noise + tones,
real tags and an embedded JPEG cover per album, one format per album) is uploaded to S3 (moto's server,
child process) and reached through the project's chaos proxy (child process, no toxics; its downstream
byte counter is "origin bytes": every byte the S3 server sent, HTTP headers and listings included).

For every (client, contestant) pair a FRESH mount is made (new, empty state and cache dirs), its first
scan / listing is awaited and not counted, then the client runs over every audio file of the mount:

  mediainfo   `mediainfo FILE` per file
  ffprobe     `ffprobe -v error -show_format -show_streams FILE` per file
  mpd         a throwaway mpd (music_directory = the mount, db/state/log in a temp dir, a free port),
              from starting it to `mpc -p PORT update --wait` returning (mpd also starts an update by
              itself on an empty db); the song count is checked
  beets       `beet -c CONFIG import -A -q MOUNT` (copy/move/write/autotag off, db in a temp dir); the
              item count is checked

Columns:
  bytes the client read   the same client on the local copy of the library (the folder uploaded to S3)
                          under `strace -f -y -e trace=read,pread64,readv,preadv,preadv2`: sum of the
                          returned sizes of reads on the audio files
  origin bytes            proxy downstream bytes from just before the client starts until the proxy has
                          been quiet for --settle seconds after it ends (background fetches count)
  time                    wall time of the client through the mount / on the local folder (page cache
                          dropped before; the local time is a run without strace)

Ctrl-C or SIGTERM stops the run: mounts are unmounted (fusermount3 -uz), mpd, the proxy and moto stopped.
The generated library is kept in --library-cache (default /tmp/musicfs-media-scan-lib) and reused when its
parameters match, so a re-run after a MusicFS change costs only the measurements.
The section between the media-scan markers of the report is replaced; bench/run_bench.py keeps it.

(Internal: `media_scan.py --proxy-child UPSTREAM_PORT` runs bench/benchlib.py's proxy child, the one
benchlib.Proxy starts: it prints its port,
then answers every `stats` line on stdin with a JSON line of the proxy's counters.)
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import datetime
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from benchlib import (  # noqa: E402
    BenchError,
    Proxy,
    Watchdog,
    drop_caches,
    log,
    machine,
    out,
    proxy_child_main,
    ratio,
    run_lines,
    write_section,
)

START, END = "<!-- media-scan:start -->", "<!-- media-scan:end -->"
BUCKET, PREFIX = "media", "lib"
MB = 1_000_000
AUDIO_EXT = (".flac", ".mp3", ".ogg", ".m4a")
CLIENTS = ("mediainfo", "ffprobe", "mpd", "mpd-noring", "beets")
# mpd-noring: mpd where io_uring is refused (as Docker's default seccomp profile does): it reads with read(2), the
# way its count is taken; only io_uring_setup is stopped (seccomp filter), every other call runs untraced
NO_URING = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=io_uring_setup", "-e",
            "inject=io_uring_setup:error=ENOSYS", "-o", "/dev/null"]
TOOLS = {  # executable -> Debian package
    "ffmpeg": "ffmpeg", "ffprobe": "ffmpeg", "mediainfo": "mediainfo", "mpd": "mpd", "mpc": "mpc",
    "beet": "beets", "strace": "strace", "rclone": "rclone", "fusermount3": "fuse3",
}
PROXY_SEED = 12
LIB_VERSION = 2  # bump when the generator changes: a cached library is regenerated


# ---------------------------------------------------------------------------------------------
# the library

FORMATS = {  # ext -> (ffmpeg codec args, approx bytes per second of audio; flac is calibrated)
    "flac": (["-c:a", "flac", "-compression_level", "5"], None),
    "mp3": (["-c:a", "libmp3lame", "-b:a", "320k", "-id3v2_version", "4"], 40_000),
    "ogg": (["-c:a", "libvorbis", "-b:a", "320k"], 40_000),
    "m4a": (["-c:a", "aac", "-b:a", "256k"], 32_000),
}
GENRES = ["Rock", "Jazz", "Electronic", "Classical", "Folk", "Ambient", "Hip-Hop", "Pop"]


def _audio_src(dur: float, seed: int) -> str:
    """Pink noise under a two-note chord: compresses like music (FLAC ~ 60-70% of PCM), not like silence."""
    f1 = 110 + (seed * 37) % 330
    return (f"anoisesrc=d={dur:.2f}:c=pink:r=44100:a=0.12:s={seed},aformat=channel_layouts=stereo[n];"
            f"sine=f={f1}:d={dur:.2f}:r=44100,aformat=channel_layouts=stereo[a];"
            f"sine=f={f1 * 1.5:.1f}:d={dur:.2f}:r=44100,aformat=channel_layouts=stereo[b];"
            f"[n][a][b]amix=inputs=3:normalize=0[out]")


def _run(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no result after {timeout:.0f}s") from None
    if p.returncode != 0:
        raise BenchError(f"{what} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-1500:]}")
    return p


def _encode(path: str, ext: str, dur: float, seed: int, meta: dict[str, str], timeout: float) -> None:
    argv = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-filter_complex", _audio_src(dur, seed), "-map", "[out]",
            *FORMATS[ext][0]]
    for k, v in meta.items():
        argv += ["-metadata", f"{k}={v}"]
    _run(argv + [path], timeout, f"ffmpeg {os.path.basename(path)}")


def _embed_cover(path: str, ext: str, jpeg: bytes) -> None:
    import mutagen

    if ext == "flac":
        from mutagen.flac import FLAC, Picture

        f = FLAC(path)
        pic = Picture()
        pic.type, pic.mime, pic.desc, pic.data = 3, "image/jpeg", "Front cover", jpeg
        f.add_picture(pic)
        f.save()
    elif ext == "mp3":
        from mutagen.id3 import APIC, ID3

        t = ID3(path)
        t.add(APIC(encoding=3, mime="image/jpeg", type=3, desc="Cover", data=jpeg))
        t.save(path, v2_version=4)
    elif ext == "ogg":
        from mutagen.flac import Picture
        from mutagen.oggvorbis import OggVorbis

        f = OggVorbis(path)
        pic = Picture()
        pic.type, pic.mime, pic.desc, pic.data = 3, "image/jpeg", "Front cover", jpeg
        f["metadata_block_picture"] = [base64.b64encode(pic.write()).decode("ascii")]
        f.save()
    elif ext == "m4a":
        from mutagen.mp4 import MP4, MP4Cover

        f = MP4(path)
        f["covr"] = [MP4Cover(jpeg, imageformat=MP4Cover.FORMAT_JPEG)]
        f.save()
    if mutagen.File(path) is None:
        raise BenchError(f"{path}: mutagen cannot read the generated file")


def make_library(root: str, tracks: int, seed: int, min_mb: float, max_mb: float, timeout: float) -> None:
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cal-", dir=root)
    try:  # FLAC bytes per second of this source
        cal = os.path.join(work, "cal.flac")
        _encode(cal, "flac", 10.0, 1, {}, timeout)
        flac_bps = os.path.getsize(cal) / 10.0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    jobs, covers, t, album = [], {}, 0, 0
    exts = list(FORMATS)
    while t < tracks:
        ext = exts[album % len(exts)]
        n = min(rng.randint(4, 7), tracks - t, max(1, tracks // len(exts)))  # every format, even in a small library
        artist, year = f"Artist {album // 2 + 1:02d}", 1970 + rng.randint(0, 53)
        title = f"Album {album + 1:02d}"
        folder = os.path.join(root, artist, f"{title} ({year})")
        os.makedirs(folder, exist_ok=True)
        cover = os.path.join(folder, ".cover.jpg")
        covers[folder] = cover
        # a real-looking cover: 600x600 JPEG of a fractal, ~60-200 KB
        _run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
              f"mandelbrot=s=600x600:start_scale={2 + album % 5}", "-frames:v", "1", "-q:v", "2", cover],
             timeout, "ffmpeg cover")
        for i in range(1, n + 1):
            size = rng.uniform(min_mb, max_mb) * MB
            bps = FORMATS[ext][1] or flac_bps
            dur = max(20.0, min(1200.0, size / bps))
            meta = {"title": f"Song {t + 1:03d} of {title}", "artist": artist, "album_artist": artist,
                    "album": title, "track": f"{i}/{n}", "date": str(year), "genre": GENRES[album % len(GENRES)],
                    "composer": f"Composer {rng.randint(1, 9)}", "comment": "musicfs media_scan benchmark"}
            jobs.append((os.path.join(folder, f"{i:02d} Song {t + 1:03d}.{ext}"), ext, dur, seed * 1000 + t, meta,
                         cover))
            t += 1
        album += 1

    def one(job):
        path, ext, dur, s, meta, cover = job
        _encode(path, ext, dur, s, meta, timeout)
        _embed_cover(path, ext, Path(cover).read_bytes())
        return path

    with concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        for k, path in enumerate(pool.map(one, jobs), 1):
            if k % 10 == 0 or k == len(jobs):
                log(f"library: {k}/{len(jobs)} tracks")
    for cover in covers.values():
        os.unlink(cover)


def library(args) -> tuple[str, list[str], float]:
    """(root, audio files, generation seconds or 0 when reused)."""
    params = {"v": LIB_VERSION, "tracks": args.tracks, "seed": args.seed, "min_mb": args.min_mb, "max_mb": args.max_mb}
    base = args.library_cache
    root = os.path.join(base, "library")
    stamp = os.path.join(base, "params.json")
    gen = 0.0
    if not (os.path.exists(stamp) and json.loads(Path(stamp).read_text()) == params and os.path.isdir(root)):
        shutil.rmtree(base, ignore_errors=True)
        log(f"generating {args.tracks} tracks in {root} (kept for re-runs)")
        t0 = time.perf_counter()
        make_library(root, args.tracks, args.seed, args.min_mb, args.max_mb, args.phase_timeout)
        gen = time.perf_counter() - t0
        Path(stamp).write_text(json.dumps(params))
    else:
        log(f"reusing the library in {root}")
    files = audio_files(root)
    if len(files) != args.tracks:
        raise BenchError(f"{root} holds {len(files)} audio files, expected {args.tracks}: remove {base}")
    return root, files, gen


def audio_files(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        out += [os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(AUDIO_EXT)]
    return out


# ---------------------------------------------------------------------------------------------
# clients

def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stop(proc: subprocess.Popen, pid: int | None = None, timeout: float = 10) -> None:
    """SIGTERM `pid` (default the process itself), then wait for `proc`; SIGKILL its group on overrun."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid or proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


LIVE_PROCS: list[subprocess.Popen] = []


class Client:
    """Runs one client over a music folder; `prefix` (strace) wraps every process it starts."""

    def __init__(self, name: str, work: str, args):
        self.name, self.work, self.args = name, work, args

    def run(self, root: str, files: list[str], prefix_for=None) -> float:
        """Wall seconds. prefix_for(tag) -> argv prefix (strace ... -o FILE) or None."""
        fn = getattr(self, "_" + self.name.replace("-", "_"))
        t0 = time.perf_counter()
        fn(root, files, prefix_for or (lambda tag: []))
        return time.perf_counter() - t0

    def _per_file(self, files, argv_for, prefix_for):
        deadline = time.monotonic() + self.args.phase_timeout
        for k, f in enumerate(files):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: not done with {len(files)} files after {self.args.phase_timeout:.0f}s")
            argv = prefix_for(f"{k}") + argv_for(f)
            try:
                p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=left)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{self.name} {f}: no result after {self.args.phase_timeout:.0f}s") from None
            if p.returncode != 0:
                raise BenchError(f"{shlex.join(argv)} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-800:]}")

    def _mediainfo(self, root, files, prefix_for):
        self._per_file(files, lambda f: ["mediainfo", f], prefix_for)

    def _ffprobe(self, root, files, prefix_for):
        self._per_file(files, lambda f: ["ffprobe", "-v", "error", "-show_format", "-show_streams", f], prefix_for)

    def _mpd_noring(self, root, files, prefix_for):
        self._mpd(root, files, lambda tag: prefix_for(tag) or NO_URING)

    def _mpd(self, root, files, prefix_for):
        from musicfs_test_utils.servers import free_port, wait_for_port

        d = tempfile.mkdtemp(prefix="mpd-", dir=self.work)
        port = free_port()
        conf = os.path.join(d, "mpd.conf")
        Path(conf).write_text(
            f'music_directory "{root}"\nplaylist_directory "{d}/playlists"\ndb_file "{d}/db"\n'
            f'state_file "{d}/state"\nsticker_file "{d}/sticker.sql"\npid_file "{d}/pid"\nlog_file "{d}/log"\n'
            f'bind_to_address "127.0.0.1"\nport "{port}"\nauto_update "no"\nzeroconf_enabled "no"\n'
            f'audio_output {{\n  type "null"\n  name "null"\n}}\n')
        os.makedirs(os.path.join(d, "playlists"))
        argv = prefix_for("mpd") + ["mpd", "--no-daemon", conf]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(d, "stderr"), "wb"), start_new_session=True)
        LIVE_PROCS.append(proc)
        try:
            try:
                wait_for_port("127.0.0.1", port, 30.0, proc=proc, banner=b"OK MPD")
            except RuntimeError as exc:
                raise BenchError(f"mpd did not start: {exc}\n{self._tail(d)}") from None
            mpc = ["mpc", "-q", "-h", "127.0.0.1", "-p", str(port)]
            _run(mpc + ["update", "--wait"], self.args.phase_timeout, "mpc update --wait")
            # the update mpd started by itself on the empty db may still be queued ahead: wait it out
            deadline = time.monotonic() + self.args.phase_timeout
            while b"Updating DB" in _run(["mpc", "-h", "127.0.0.1", "-p", str(port)], 30, "mpc status").stdout:
                if time.monotonic() > deadline:
                    raise BenchError("mpd: still updating after the phase timeout")
                time.sleep(0.1)
            stats = _run(mpc[:1] + mpc[2:] + ["stats"], 30, "mpc stats").stdout.decode()
            m = re.search(r"Songs:\s+(\d+)", stats)
            if not m or int(m.group(1)) != len(files):
                raise BenchError(f"mpd found {m and m.group(1)} songs in {root}, expected {len(files)}\n"
                                 f"{stats}\n{self._tail(d)}")
        finally:
            mpd_pid = next(iter(_children(proc.pid)), None) if prefix_for("x") else None
            _stop(proc, mpd_pid)
            if proc in LIVE_PROCS:
                LIVE_PROCS.remove(proc)

    @staticmethod
    def _tail(d: str) -> str:
        return "".join(Path(d, n).read_text(errors="replace")[-1500:] for n in ("log", "stderr")
                       if Path(d, n).exists())

    def _beets(self, root, files, prefix_for):
        d = tempfile.mkdtemp(prefix="beets-", dir=self.work)
        conf = os.path.join(d, "config.yaml")
        Path(conf).write_text(
            f"directory: {json.dumps(root)}\nlibrary: {json.dumps(os.path.join(d, 'library.db'))}\n"
            f"statefile: {json.dumps(os.path.join(d, 'state.pickle'))}\nplugins: []\n"
            "import:\n  copy: no\n  move: no\n  write: no\n  autotag: no\n  resume: no\n  incremental: no\n"
            f"  log: {json.dumps(os.path.join(d, 'import.log'))}\n")
        env = {**os.environ, "BEETSDIR": d, "HOME": d}
        argv = prefix_for("beets") + ["beet", "-c", conf, "import", "-A", "-q", root]
        try:
            p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=self.args.phase_timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"beets import: no result after {self.args.phase_timeout:.0f}s") from None
        if p.returncode != 0:
            raise BenchError(f"beet import failed ({p.returncode}): {p.stderr.decode(errors='replace')[-1500:]}")
        ls = subprocess.run(["beet", "-c", conf, "ls", "-f", "$path"], env=env, capture_output=True, timeout=120)
        n = len([ln for ln in ls.stdout.decode(errors="replace").splitlines() if ln.strip()])
        if n != len(files):
            raise BenchError(f"beets imported {n} items from {root}, expected {len(files)}\n"
                             f"{p.stdout.decode(errors='replace')[-1000:]}")


# ---------------------------------------------------------------------------------------------
# strace accounting on the local copy

READ_CALLS = "read,pread64,readv,preadv,preadv2"
_DONE = re.compile(r"^(\d+)\s+(?:read|pread64|readv|preadv|preadv2)\((\d+)<([^>]*)>,.*\)\s+=\s+(\d+)")
_UNFIN = re.compile(r"^(\d+)\s+(?:read|pread64|readv|preadv|preadv2)\((\d+)<([^>]*)>,.*<unfinished \.\.\.>")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (?:read|pread64|readv|preadv|preadv2) resumed>.*\)\s+=\s+(\d+)")
_URING = re.compile(r"io_uring_setup\(.*\)\s+=\s+(\d+)")  # a successful setup (an injected failure is -1)


def strace_bytes(outdir: str, root: str) -> tuple[int, int, bool]:
    """(bytes read from audio files under root, read calls, io_uring seen) over every trace file in outdir."""
    total = calls = 0
    uring = False
    for f in Path(outdir).iterdir():
        pending: dict[str, str] = {}
        for line in f.read_text(errors="replace").splitlines():
            if _URING.search(line):
                uring = True
            m = _DONE.match(line)
            if m:
                path, n = m.group(3), int(m.group(4))
            else:
                m = _UNFIN.match(line)
                if m:
                    pending[m.group(1)] = m.group(3)
                    continue
                m = _RESUMED.match(line)
                if not m or m.group(1) not in pending:
                    continue
                path, n = pending.pop(m.group(1)), int(m.group(2))
            if path.startswith(root + "/") and path.lower().endswith(AUDIO_EXT):
                total += n
                calls += 1
    return total, calls, uring


def measure_local(client: Client, root: str, files: list[str], work: str) -> dict:
    drop_caches()
    t = client.run(root, files)
    outdir = tempfile.mkdtemp(prefix=f"strace-{client.name}-", dir=work)

    def prefix_for(tag):
        # io_uring reads are invisible to strace: make io_uring_setup fail (ENOSYS), so a client that would use
        # it (mpd 0.23 reads local files through io_uring) falls back to read(2) for the count
        return ["strace", "-f", "-qq", "-y", "-s", "0", "-e", f"trace={READ_CALLS},io_uring_setup",
                "-e", "inject=io_uring_setup:error=ENOSYS", "-o", os.path.join(outdir, f"t.{tag}")]

    client.run(root, files, prefix_for)
    nbytes, calls, uring = strace_bytes(outdir, root)
    shutil.rmtree(outdir, ignore_errors=True)
    if calls == 0:
        raise BenchError(f"{client.name}: strace saw no reads of the audio files (parser or tracing broken?)")
    return {"read": nbytes, "calls": calls, "time": t, "uring": uring}


# ---------------------------------------------------------------------------------------------
# mounts

class Contestants:
    def __init__(self, proxy: Proxy, work: str, args):
        self.proxy, self.work, self.args = proxy, work, args
        self.n = 0

    def mount(self, kind: str):
        import run_bench
        from remote_bench import env_argv

        self.n += 1
        run_bench.MOUNT_TIMEOUT = self.args.phase_timeout
        state, cache = (os.path.join(self.work, f"{kind}-{self.n}-state"), os.path.join(self.work, f"{kind}-{self.n}-cache"))
        mp = os.path.join(self.work, f"mnt-{kind}")
        endpoint = f"http://127.0.0.1:{self.proxy.port}"
        if kind == "musicfs":
            argv = env_argv({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                             "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}) + \
                [sys.executable, "-m", "musicfs", "mount", f"s3://{BUCKET}/{PREFIX}", mp, "--state-dir", state,
                 "--cache-dir", cache]
        else:
            remote = (f":s3,provider=Other,env_auth=false,access_key_id=testing,secret_access_key=testing,"
                      f"region=us-east-1,endpoint='{endpoint}':{BUCKET}/{PREFIX}")
            argv = env_argv({}) + ["rclone", "mount", remote, mp, "--vfs-cache-mode", "full", "--cache-dir", cache]
        m = run_bench.Mount(kind, f"{kind} #{self.n}", argv, mp, os.path.join(self.work, f"{kind}-{self.n}.log"))
        m.dirs = (state, cache)
        return m

    def measure(self, kind: str, client: Client, ntracks: int) -> dict:
        m = self.mount(kind)
        try:
            before_mount = self.proxy.down()
            with m:
                with Watchdog(f"{m.label}: listing", self.args.phase_timeout, m.kill):
                    files = audio_files(m.mountpoint)  # rclone learns the tree; MusicFS knows it from its scan
                if len(files) != ntracks:
                    raise BenchError(f"{m.label}: {len(files)} audio files on the mount, expected {ntracks}")
                base = self.proxy.settle(self.args.settle, self.args.phase_timeout)
                drop_caches()
                with Watchdog(f"{m.label}: {client.name}", self.args.phase_timeout + 30, m.kill):
                    t = client.run(m.mountpoint, files)
                after = self.proxy.settle(self.args.settle, self.args.phase_timeout)
            return {"origin": after - base, "time": t, "first_scan": base - before_mount}
        finally:
            for d in m.dirs:
                shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# report

def machine_facts() -> dict:
    import moto

    return {**machine(), "moto": moto.__version__, "mediainfo": out(["mediainfo", "--version"]).splitlines()[-1],
            "ffprobe": out(["ffprobe", "-version"]).splitlines()[0].split(" Copyright")[0],
            "mpd": out(["mpd", "--version"]).splitlines()[0], "mpc": out(["dpkg-query", "-W", "-f", "${Version}", "mpc"]),
            "beets": out(["beet", "version"]).splitlines()[0]}


def other_benchmarks() -> list[str]:
    """Command lines of bench/*.py processes that are not this run (the machine is shared)."""
    mine = {os.getpid()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        cmd = " ".join(a.decode(errors="replace") for a in argv if a)
        if re.search(r"bench/\w+\.py", cmd) and "--proxy-child" not in cmd and "media_scan.py" not in cmd:
            found.append(cmd[:120])
    return sorted(set(found))


def human(n) -> str:
    if n is None:
        return "–"
    return f"{n / MB:,.2f} MB" if n >= 100_000 else f"{n / 1000:,.1f} kB"


def secs(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def med(rows: list[dict], key: str):
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def report(args, argv, info, lib_root, files, results, started, seconds, load0, load1, notes) -> str:
    sizes = [os.path.getsize(f) for f in files]
    by_ext: dict[str, int] = {}
    for f in files:
        by_ext[f.rsplit(".", 1)[1]] = by_ext.get(f.rsplit(".", 1)[1], 0) + 1
    dev = args.tracks < 30 or load0 >= 1.5 or any(n.startswith("other benchmarks") for n in notes)
    why = []
    if args.tracks < 30:
        why.append(f"{args.tracks} tracks (< 30)")
    if load0 >= 1.5:
        why.append(f"machine busy (load average {load0:.2f} at the start)")
    if any(n.startswith("other benchmarks") for n in notes):
        why.append("other benchmarks ran at the same time")
    lines = [START, "", "## Media-server scans", "",
             "Generated by `bench/media_scan.py` (its docstring says exactly what is counted); do not edit by hand. "
             "Real tag scanners run over every audio file of a fresh mount of an S3 bucket (moto's server behind the "
             "project's chaos proxy, loopback, no toxics), after the mount's first scan/listing. *Origin bytes* = "
             "what the S3 server sent through the proxy while the client ran (HTTP headers and listings included); "
             "*bytes the client read* = the same client on the local copy under `strace -f -y`, summing the sizes "
             "returned by read/pread64/readv/preadv on the audio files. Target of issue 12: MusicFS origin bytes "
             "≤ 1.5× the client's bytes.", ""]
    if dev:
        lines += [f"**Development figures, not the issue's:** {', '.join(why)}.", ""]
    lines += [
        *run_lines(argv, started, seconds, load0, load1, info),
        f"- Software: Python {info['python']}; {info['rclone']}; moto {info['moto']}; {info['mediainfo']}; "
        f"{info['ffprobe']}; {info['mpd']}; mpc {info['mpc']}; {info['beets']}",
        f"- Library: {len(files)} tracks ({', '.join(f'{v} {k}' for k, v in sorted(by_ext.items()))}), "
        f"{sum(sizes) / MB:.1f} MB, {min(sizes) / MB:.1f}–{max(sizes) / MB:.1f} MB a track (median "
        f"{statistics.median(sizes) / MB:.1f}); generated by ffmpeg (pink noise + tones; title/artist/album/"
        f"album artist/track/date/genre/composer/comment tags; an embedded 600×600 JPEG cover, the album's own, "
        f"{args.cover_kb:.0f} kB on the first track), one format per album",
        f"- Repetitions: {args.repeat} (median shown); a fresh mount (empty state and cache) for every client and "
        f"contestant; page cache dropped before every client run",
        "",
        "| Client | Bytes the client read | Origin bytes, MusicFS | MusicFS / read | Origin bytes, rclone | "
        "rclone / read | Time MusicFS / rclone / local (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    tot = {"read": 0, "musicfs": 0, "rclone": 0}
    for c, r in results.items():
        rd, mf, rc = med(r["local"], "read"), med(r["musicfs"], "origin"), med(r["rclone"], "origin")
        tot["read"] += rd or 0
        tot["musicfs"] += mf or 0
        tot["rclone"] += rc or 0
        lines.append(f"| {c} | {human(rd)} | {human(mf)} | {ratio(mf, rd)} | {human(rc)} | {ratio(rc, rd)} | "
                     f"{secs(med(r['musicfs'], 'time'))} / {secs(med(r['rclone'], 'time'))} / "
                     f"{secs(med(r['local'], 'time'))} |")
    if len(results) > 1:
        lines.append(f"| **all clients** | {human(tot['read'])} | {human(tot['musicfs'])} | "
                     f"{ratio(tot['musicfs'], tot['read'])} | {human(tot['rclone'])} | "
                     f"{ratio(tot['rclone'], tot['read'])} | |")
    fs_m = [x["first_scan"] for r in results.values() for x in r["musicfs"]]
    fs_r = [x["first_scan"] for r in results.values() for x in r["rclone"]]
    lines += ["", f"Not in the table (before each client, not counted): MusicFS's first scan cost the origin "
              f"{human(statistics.median(fs_m)) if fs_m else '–'} (median), rclone's mount + listing "
              f"{human(statistics.median(fs_r)) if fs_r else '–'}; the whole library is {human(sum(sizes))}.", "",
              "- **mediainfo**: `mediainfo FILE`, one process per file. **ffprobe**: `ffprobe -v error -show_format "
              "-show_streams FILE`, one process per file.",
              "- **mpd**: a throwaway `mpd --no-daemon` (music_directory = the mount or the local folder, db/state/log "
              "in a temp dir, a free port, null output); timed from starting mpd until `mpc update --wait` returns and "
              "no update is running (mpd starts one by itself on an empty db); the song count is checked. mpd 0.23 reads "
              "local files through io_uring, which strace cannot see: for the strace count only, `io_uring_setup` is "
              "made to fail (`strace -e inject=io_uring_setup:error=ENOSYS`) and mpd falls back to read(2); the timed "
              "runs and the mounts are untouched. **mpd-noring**: the same mpd with io_uring refused "
              "(`strace --seccomp-bpf -e inject=io_uring_setup:error=ENOSYS`, as Docker's default seccomp profile "
              "refuses it), so it reads with read(2) on the mount too, the way its bytes are counted.",
              "- **beets**: `beet -c CONFIG import -A -q DIR` with `import: {copy: no, move: no, write: no, autotag: "
              "no}`, library db in a temp dir; the item count is checked.",
              "- Reads through a FUSE mount pass the kernel's read-ahead first: what a mount fetches is judged against "
              "what the client asked for, as a user would see it.",
              "- rclone: `rclone mount --vfs-cache-mode full` of the same bucket through the same proxy (defaults "
              "otherwise), walked once before the client runs."]
    if notes:
        lines += ["", "Notes from the run:", ""] + [f"- {n}" for n in notes]
    lines += ["", END]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--proxy-child":
        return proxy_child_main([sys.argv[2], "0", str(PROXY_SEED)])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracks", type=int, default=40, help="tracks in the library (default 40; 8 for development)")
    p.add_argument("--min-mb", type=float, default=3.0, help="smallest track size aimed at, MB (default 3)")
    p.add_argument("--max-mb", type=float, default=20.0, help="largest track size aimed at, MB (default 20)")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--clients", default=",".join(CLIENTS), help=f"subset of {','.join(CLIENTS)}")
    p.add_argument("--contestants", default="musicfs,rclone", help="musicfs and/or rclone (default both)")
    p.add_argument("--repeat", type=int, default=1, help="repetitions, medians reported (default 1)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds the origin must be quiet before a byte count is read (default 2)")
    p.add_argument("--phase-timeout", type=float, default=600.0, help="seconds any one phase may take (default 600)")
    p.add_argument("--library-cache", default=os.path.join(tempfile.gettempdir(), "musicfs-media-scan-lib"),
                   help="where the generated library is kept and reused (default /tmp/musicfs-media-scan-lib)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="report file ('-': print only)")
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = p.parse_args()
    args.cover_kb = 0.0
    argv = [".venv/bin/python", "bench/media_scan.py"] + sys.argv[1:]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    contestants = [c.strip() for c in args.contestants.split(",") if c.strip()]
    if set(clients) - set(CLIENTS) or not clients:
        p.error(f"--clients: a subset of {','.join(CLIENTS)}")
    if set(contestants) - {"musicfs", "rclone"} or not contestants:
        p.error("--contestants: musicfs and/or rclone")

    need = {"ffmpeg", "ffprobe", "strace", "fusermount3"} | ({"rclone"} if "rclone" in contestants else set())
    for c in clients:
        need |= {"mediainfo": {"mediainfo"}, "ffprobe": set(), "mpd": {"mpd", "mpc"}, "mpd-noring": {"mpd", "mpc"},
                 "beets": {"beet"}}[c]
    missing = sorted(t for t in need if not shutil.which(t))
    if missing:
        for t in missing:
            print(f"media_scan: `{t}` not found: apt-get install -y {TOOLS[t]}  (`make bench` installs BENCH_DEBS)",
                  file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    import run_bench

    def cleanup():
        for proc in list(LIVE_PROCS):
            with contextlib.suppress(Exception):
                _stop(proc, next(iter(_children(proc.pid)), None), 5)
        run_bench.cleanup_mounts()

    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="musicfs-media-scan-", dir=args.tmpdir)
    log(f"work folder {work}; load average {load0:.2f}")
    others = other_benchmarks()
    if others:
        log(f"WARNING: other benchmarks are running (figures will be disturbed): {others}")
    ok, proxy = False, None
    notes: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            from musicfs_test_utils.servers import MotoServer

            root, files, gen = library(args)
            args.cover_kb = 0.0
            with contextlib.suppress(Exception):
                import mutagen

                f0 = mutagen.File(files[0])
                pics = getattr(f0, "pictures", None) or []
                args.cover_kb = len(pics[0].data) / 1000 if pics else 0.0
            log(f"library: {len(files)} tracks, {sum(map(os.path.getsize, files)) / MB:.1f} MB"
                + (f", generated in {gen:.0f}s" if gen else ""))
            if not drop_caches():
                notes.append("dropping the page cache failed (not root?): local times may be warm")
            moto = stack.enter_context(MotoServer(mode="process"))
            moto.make_bucket(BUCKET)
            moto.upload_dir(root, BUCKET, prefix=PREFIX)
            proxy = Proxy(moto.port, seed=PROXY_SEED)
            stack.callback(proxy.stop)
            stack.callback(cleanup)  # runs first on the way out: mounts go before the proxy and moto
            log(f"moto on port {moto.port}, proxy on {proxy.port}")
            info = machine_facts()
            con = Contestants(proxy, work, args)
            results: dict[str, dict[str, list[dict]]] = {}
            for name in clients:
                client = Client(name, work, args)
                res = results[name] = {"local": [], "musicfs": [], "rclone": []}
                for rep in range(args.repeat):
                    r = measure_local(client, root, files, work)
                    if r["uring"]:
                        notes.append(f"{name} set up io_uring on the local run: reads through it are invisible to "
                                     "strace, so its *bytes the client read* may be low")
                    res["local"].append(r)
                    log(f"{name} #{rep + 1} local: read {human(r['read'])} in {r['calls']} calls, {r['time']:.2f}s")
                    order = contestants if rep % 2 == 0 else contestants[::-1]
                    for kind in order:
                        x = con.measure(kind, client, len(files))
                        res[kind].append(x)
                        log(f"{name} #{rep + 1} {kind}: origin {human(x['origin'])} "
                            f"({ratio(x['origin'], r['read'])} of read), {x['time']:.2f}s; first scan/listing "
                            f"{human(x['first_scan'])}")
        load1 = os.getloadavg()[0]
        others = sorted(set(others) | set(other_benchmarks()))
        if others:
            notes.append("other benchmarks ran on the machine during this run (figures disturbed): "
                         + "; ".join(f"`{o}`" for o in others))
        for kind in contestants:
            bad = [ln for f in sorted(Path(work).glob(f"{kind}-*.log")) for ln in open(f, errors="replace")
                   if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
            if bad:
                notes.append(f"{kind} logs: {len(bad)} WARNING/ERROR lines (first: `{bad[0].strip()[:200]}`)")
        text = report(args, argv, info, root, files, results, started, time.perf_counter() - t_start, load0, load1,
                      list(dict.fromkeys(notes)))
        print(text)
        if args.out != "-":
            write_section(args.out, text, START, END)
            log(f"wrote the media-scan section of {args.out}")
        ok = True
        return 0
    except BenchError as exc:
        print(f"\nmedia_scan: STOPPED: {exc}", file=sys.stderr)
        for path in sorted(Path(work).glob("*.log"), key=lambda f: f.stat().st_mtime)[-1:]:
            print(f"\n--- last lines of {path}:", file=sys.stderr)
            print("\n".join(open(path, errors="replace").read().splitlines()[-30:]), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmedia_scan: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        cleanup()
        if proxy:
            proxy.stop()
        still = [os.path.join(work, n) for n in os.listdir(work) if run_bench.is_mounted(os.path.join(work, n))]
        if still:
            log(f"NOT removing {work}: still mounted: {still}")
        elif args.keep or not ok:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
