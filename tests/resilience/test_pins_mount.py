"""L2: pins on a real mount of a local library (`musicfs pin` / `pins --json` as a user runs them).

- An album pinned is fetched whole in the background, survives a cache pushed past its quota by other reads,
  and plays byte-exact after a restart with every origin down (the library folder renamed away); a track
  never read fails fast with EIO.
- 6.7: the daemon killed (-9) while a pin is being fetched; after a restart the pin completes with the right
  bytes.
- 6.9: a pinned album that grows at the origin past the pins' share of the quota keeps what it held and says
  so (`over_quota`, a warning in `musicfs status`); a restart with a smaller quota trims the cache at once.

The daemon's state folder is `<tmp>/musicfs/state`, so with XDG_STATE_HOME=<tmp> the commands find its
library from a path inside the mount, as they would for a user.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.commands.demo import BIG_FILE_PATH
from musicfs.shared import points
from musicfs_test_utils.assertions import file_digest
from musicfs_test_utils.daemon import write_config
from musicfs_test_utils.eventually import eventually
from musicfs_test_utils.fixtures import make_library, retagged_copy, wait_settled
from musicfs_test_utils.mount_io import mount_file_for, read_in_child

pytestmark = pytest.mark.l2

READ_TIMEOUT = 10.0


def config_file(tmp_path: Path, **extra) -> str:
    values = {"read_timeout": READ_TIMEOUT, "chunk_size": "64K", "health_interval": 0.3, "health_timeout": 1.0,
              **extra}
    return str(write_config(tmp_path / "musicfs.toml", **values))


def musicfs(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "musicfs", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def pins(tmp_path: Path, mountpoint: str) -> list[dict]:
    done = musicfs(tmp_path, "pins", "--json", "--mount", mountpoint)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def album_files(root: Path, album: str) -> list[Path]:
    return sorted(p for p in (root / album).iterdir() if p.is_file())


def start(daemons, root: Path, tmp_path: Path, **kwargs):
    daemon = daemons([root], name="musicfs", **kwargs)  # state in <tmp>/musicfs/state: see the module doc
    daemon.start()
    daemon.wait_for_mount()
    return daemon


def test_a_pinned_album_is_fetched_kept_past_the_quota_and_plays_offline_after_a_restart(library_copy, daemons,
                                                                                         tmp_path):
    root, _ = library_copy
    args = ["--config", config_file(tmp_path), "--cache-size", "256K"]
    daemon = start(daemons, root, tmp_path, extra_args=args)
    pinned = album_files(root, "Aurora Quartet/Northern Lights")
    digests = {f: file_digest(f) for f in pinned}
    names = {f: mount_file_for(daemon.mountpoint, f).name for f in pinned}
    folder = mount_file_for(daemon.mountpoint, pinned[-1]).parent  # e.g. <mnt>/Aurora Quartet/Northern Lights

    outside = musicfs(tmp_path, "pin", str(tmp_path))
    assert outside.returncode == 2 and f"{tmp_path}: not inside a musicfs mount" in outside.stderr
    too_big = musicfs(tmp_path, "pin", daemon.mountpoint)  # the whole library: more than 80% of 256K
    assert too_big.returncode == 1 and "80% of the cache quota 256.0 KiB" in too_big.stderr, too_big.stderr
    done = musicfs(tmp_path, "pin", str(folder))
    assert done.returncode == 0, done.stderr
    rel = str(folder.relative_to(daemon.mountpoint))
    assert f"pinned {rel} (" in done.stdout
    eventually(lambda: pins(tmp_path, daemon.mountpoint)[0]["state"] == "complete", 30, "the pin complete")
    [pin] = pins(tmp_path, daemon.mountpoint)
    assert pin["path"] == rel and pin["cached_bytes"] == pin["bytes"] == sum(f.stat().st_size for f in pinned)
    assert pin["tracks"] == 3

    # other reads push the cache past its quota (the Björk album alone is ~500K); Midnight Orchestra stays unread
    others = album_files(root, "Björk Müller/Café Träume") + album_files(root, "Various Artists/Summer Compilation 2024")
    assert sum(f.stat().st_size for f in others) > 2 * (256 << 10)
    for f in others:
        assert read_in_child(mount_file_for(daemon.mountpoint, f))[:2] == ("OK", file_digest(f))
    status = daemon.status()
    assert status["cache"]["used_bytes"] <= 256 << 10
    assert status["pins"]["pins"][0]["state"] == "complete"  # eviction took none of the pinned chunks
    unread = album_files(root, "Midnight Orchestra/The Complete Symphonies/Disc 1")[0]
    unread_size = unread.stat().st_size
    assert daemon.stop() == 0

    os.rename(root, root.with_name("library-away"))  # every origin down, then a restart
    daemon.start()
    daemon.wait_for_mount()
    eventually(lambda: daemon.status()["offline"], 15, "offline")
    assert pins(tmp_path, daemon.mountpoint)[0]["state"] == "complete"
    for f, digest in digests.items():
        assert read_in_child(folder / names[f])[:2] == ("OK", digest), f"{f.name}: pinned, must play offline"
    target = next(p for p in Path(daemon.mountpoint).rglob("*") if p.is_file() and p.stat().st_size == unread_size)
    outcome, code, seconds = read_in_child(target)
    assert (outcome, code) == ("ERR", "5") and seconds < 1.0, (outcome, code, seconds)
    assert daemon.stop() == 0


@pytest.mark.resilience("6.7")
def test_a_pin_fetch_killed_with_sigkill_completes_after_a_restart_with_the_right_bytes(library_copy, daemons,
                                                                                        tmp_path):
    root, _ = library_copy
    album = album_files(root, "Björk Müller/Café Träume")
    digests = {f: file_digest(f) for f in album}
    sizes = {f.stat().st_size: f for f in album}
    daemon = start(daemons, root, tmp_path, extra_args=["--config", config_file(tmp_path)],
                   env={"FAILPOINTS": f"{points.PIN_FETCH}=sleep(400)"})  # a slow pin fetch: time to kill it
    folder = mount_file_for(daemon.mountpoint, album[0]).parent
    assert musicfs(tmp_path, "pin", str(folder)).returncode == 0

    def midway():
        pin = pins(tmp_path, daemon.mountpoint)[0]
        return pin["state"] == "fetching" and 0 < pin["cached_bytes"] < pin["bytes"]

    eventually(midway, 30, "the pin half fetched")
    daemon.kill9()
    daemon.env = {}
    daemon.start()
    daemon.wait_for_mount()
    eventually(lambda: pins(tmp_path, daemon.mountpoint)[0]["state"] == "complete", 30, "the pin complete")
    os.rename(root, root.with_name("library-away"))  # the bytes must come from the cache
    eventually(lambda: daemon.status()["offline"], 15, "offline")
    for p in folder.iterdir():
        origin = sizes[p.stat().st_size]
        assert read_in_child(p)[:2] == ("OK", digests[origin]), f"{p.name}: wrong or missing bytes"
    assert daemon.stop() == 0


@pytest.mark.resilience("6.9")
@pytest.mark.expected_log(r"pins: \d+ files .* do not fit in 80% of the cache quota")
def test_a_pinned_album_that_grows_keeps_the_quota_and_a_start_with_a_smaller_quota_trims_at_once(daemons,
                                                                                                   tmp_path):
    root = tmp_path / "library"
    make_library(root, 1, big_file_mb=3, hostile=False)
    big = root / BIG_FILE_PATH  # ~3 MB of real FLAC
    album = root / "Growing"
    for n in (1, 2):
        retagged_copy(big, album / f"{n}.flac", artist="Grow", album="Pinned", title=f"T{n}", tracknumber=str(n))
    wait_settled(root)
    quota = 10 << 20
    daemon = start(daemons, root, tmp_path, extra_args=["--config", config_file(tmp_path), "--cache-size", "10M"])
    folder = Path(daemon.mountpoint) / "Grow" / "Pinned"
    assert musicfs(tmp_path, "pin", str(folder)).returncode == 0
    eventually(lambda: pins(tmp_path, daemon.mountpoint)[0]["state"] == "complete", 30, "the pin complete")

    for n in (3, 4, 5):  # the album grows at the origin: 15 MB, more than 80% of the quota
        retagged_copy(big, album / f"{n}.flac", artist="Grow", album="Pinned", title=f"T{n}", tracknumber=str(n))
    daemon.signal(signal.SIGHUP)
    eventually(lambda: pins(tmp_path, daemon.mountpoint)[0]["state"] == "over_quota", 30, "the pin over its share")
    [pin] = pins(tmp_path, daemon.mountpoint)
    assert pin["tracks"] == 5 and pin["left_out"] >= 1 and pin["cached_bytes"] <= 0.8 * quota
    status = daemon.status()
    assert status["cache"]["used_bytes"] <= quota
    assert status["pins"]["cached_bytes"] <= 0.8 * quota
    shown = musicfs(tmp_path, "status", "--mount", daemon.mountpoint)
    assert "do not fit in the pins' share of the cache quota" in shown.stdout, shown.stdout
    assert daemon.stop() == 0

    # a restart with a smaller quota: what the pins and the cache hold comes down to it before any read
    daemon.extra_args = ["--config", config_file(tmp_path), "--cache-size", "4M"]
    daemon.start()
    daemon.wait_for_mount()
    eventually(lambda: daemon.status()["cache"]["used_bytes"] <= 4 << 20, 30, "the cache trimmed to 4M")
    assert daemon.status()["pins"]["cached_bytes"] <= 0.8 * (4 << 20)
    assert daemon.stop() == 0
