"""PinSet over a real catalog, CAS and reader (ReaderRig): resolution, re-resolution after a rescan, the fits
check, persistence across a restart, the worker (fetch, CAS pins that survive eviction, passthrough)."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from musicfs.cache.cas import chunk_hash
from musicfs.library.catalog import FileRow
from musicfs.library.pins import (
    COMPLETE,
    QUEUED,
    WAITING,
    PinError,
    PinSet,
    normalise_path,
    resolve,
)
from musicfs.library.tree import FIRST_INO, build_tree
from musicfs.shared.errors import CasError
from musicfs_test_utils.eventually import eventually_async
from musicfs_test_utils.reader_rig import ReaderRig, pattern_bytes

CHUNK = 4096
ALBUMS = {  # origin path -> (artist, album, track number)
    "a/x/1.flac": ("Ann", "Xray", 1), "a/x/2.flac": ("Ann", "Xray", 2),
    "a/y/1.flac": ("Ann", "Yoke", 1), "b/z/1.flac": ("Bob", "Zulu", 1),
}


def files() -> dict[str, bytes]:
    return {p: pattern_bytes(n, 3 * CHUNK + 100 * n, step=7 + n, salt=31, period=97) for n, p in enumerate(ALBUMS, 1)}


def tag(catalog, paths=None) -> None:
    """Give the rig's rows their artist/album/track tags (same identity: manifests are kept)."""
    rows = [r for r in catalog.files() if paths is None or r.path in paths]
    catalog.upsert_files([dataclasses.replace(r, artist=ALBUMS[r.path][0], album=ALBUMS[r.path][1],
                                              title=f"t{ALBUMS[r.path][2]}", track_no=ALBUMS[r.path][2])
                          for r in rows])


def tree_of(catalog):
    return build_tree(catalog.files(), catalog.inode_map(), lambda keys: catalog.add_inodes(keys, FIRST_INO))


@pytest.fixture
def rig(tmp_path):
    r = ReaderRig.build(tmp_path, files(), chunk_size=CHUNK, memory_cache=1 << 20, read_timeout=10.0,
                        cas_quota=1 << 20, health={"op_timeout": 5.0})
    tag(r.catalog)
    yield r
    r.close()


def pinset(rig, tree_box, quota=1 << 20) -> PinSet:
    return PinSet(rig.catalog, rig.cache, chunk_size=CHUNK, quota=quota, tree=lambda: tree_box[0],
                  reader=rig.reader, origins=rig.registry, retry=0.05)


def size(*paths) -> int:
    data = files()
    return sum(len(data[p]) for p in paths)


async def run_until(pins: PinSet, done, what: str, timeout: float = 10.0) -> None:
    """Run the worker until `done()`; fail after `timeout` seconds."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pins.run)
        await eventually_async(done, timeout, what)
        nursery.cancel_scope.cancel()
    assert done(), what


def test_paths_are_normalised_and_dotdot_refused():
    assert normalise_path("/Ann//Xray/") == "Ann/Xray"
    assert normalise_path("Cafe\u0301/./x") == "Caf\u00e9/x"
    assert normalise_path("") == ""
    with pytest.raises(PinError, match=r"\.\."):
        normalise_path("Ann/../Bob")


def test_resolution_of_artist_album_and_track(rig):
    tree = tree_of(rig.catalog)
    got = resolve(tree, ["Ann", "Ann/Xray", "Ann/Xray/02 - t2.flac", "Bob/Nope"])
    assert [r.path for r in got["Ann"]] == ["a/x/1.flac", "a/x/2.flac", "a/y/1.flac"]
    assert [r.path for r in got["Ann/Xray"]] == ["a/x/1.flac", "a/x/2.flac"]
    assert [r.path for r in got["Ann/Xray/02 - t2.flac"]] == ["a/x/2.flac"]
    assert got["Bob/Nope"] == []


async def test_pin_unknown_path_and_unpin_of_unpinned_are_refused_naming_the_path(rig):
    box = [tree_of(rig.catalog)]
    pins = pinset(rig, box)
    with pytest.raises(PinError, match="Ann/Nope: no such file or folder in the mount"):
        await pins.add(["Ann/Nope"])
    with pytest.raises(PinError, match="Bob: not pinned"):
        await pins.remove(["Bob"])
    assert rig.catalog.pins() == [] and pins.listing() == []


async def test_a_pin_that_would_not_fit_is_refused_with_the_sizes(rig):
    box = [tree_of(rig.catalog)]
    quota = int(size("a/x/1.flac", "a/x/2.flac") / 0.8) + 10  # the album fits, the artist does not
    pins = pinset(rig, box, quota=quota)
    assert await pins.add(["Ann/Xray"]) == ["Ann/Xray"]
    with pytest.raises(PinError) as err:
        await pins.add(["Ann"])
    message = str(err.value)
    assert "cannot pin Ann" in message and "80% of the cache quota" in message and "KiB" in message
    assert rig.catalog.pins() == ["Ann/Xray"]
    assert await pins.add(["Ann/Xray/01 - t1.flac"]) == ["Ann/Xray/01 - t1.flac"]  # inside what is pinned: fits


async def test_pins_fetch_whole_files_pin_their_chunks_and_survive_a_restart(rig):
    box = [tree_of(rig.catalog)]
    pins = pinset(rig, box)
    await pins.add(["Ann/Xray"])
    [info] = pins.listing()
    assert info == {"path": "Ann/Xray", "tracks": 2, "bytes": size("a/x/1.flac", "a/x/2.flac"),
                    "cached_bytes": 0, "state": QUEUED, "left_out": 0}
    await run_until(pins, lambda: pins.listing()[0]["state"] == COMPLETE, "pin complete")
    data = files()
    for path in ("a/x/1.flac", "a/x/2.flac"):
        manifest = rig.manifest(rig.row(path))
        assert [manifest[i] for i in sorted(manifest)] == [chunk_hash(data[path][i:i + CHUNK])
                                                          for i in range(0, len(data[path]), CHUNK)]
        assert all(rig.cas.has(d) for d in manifest.values())
    wanted = {d for p in ("a/x/1.flac", "a/x/2.flac") for d in rig.manifest(rig.row(p)).values()}
    assert rig.reader.statistics().open_handles == 0  # the worker released its handle
    assert rig.cas.pinned == len(wanted) and pins.statistics().pinned_chunks == len(wanted)
    rig.cas.evict_to(0)  # eviction takes everything it may: not the pinned chunks
    assert all(rig.cas.has(d) for d in wanted)

    rig.restart_cache()  # a new process: CAS pins are memory, the catalog's pins table is not
    rig.cache = None
    rig.reader = rig.new_reader()
    again = PinSet(rig.catalog, rig.reader.cache, chunk_size=CHUNK, quota=1 << 20, tree=lambda: box[0],
                   reader=rig.reader, origins=rig.registry)
    await again.load()
    assert again.paths == ["Ann/Xray"] and again.listing()[0]["state"] == COMPLETE
    assert rig.cas.pinned == len(wanted)
    rig.cas.evict_to(0)
    assert all(rig.cas.has(d) for d in wanted)
    await again.remove(["Ann/Xray"])
    assert rig.cas.pinned == 0 and rig.catalog.pins() == []
    rig.cas.evict_to(0)
    assert not any(rig.cas.has(d) for d in wanted)


async def test_a_rescan_that_adds_a_track_to_a_pinned_album_pins_it_too(rig):
    (rig.root / "a/x/3.flac").write_bytes(b"\x01" * (2 * CHUNK + 5))
    box = [tree_of(rig.catalog)]
    pins = pinset(rig, box)
    await pins.add(["Ann/Xray"])
    await run_until(pins, lambda: pins.listing()[0]["state"] == COMPLETE, "pin complete")
    st = rig.origin.inner.stat("a/x/3.flac")  # the rescan finds a new track of the album
    rig.catalog.upsert_files([FileRow(path="a/x/3.flac", kind="track", size=st.size, mtime_ns=st.mtime_ns,
                                      etag=st.etag, artist="Ann", album="Xray", title="t3", track_no=3)])
    box[0] = tree_of(rig.catalog)
    await pins.refresh()
    info = pins.listing()[0]
    assert info["tracks"] == 3 and info["state"] == QUEUED and info["bytes"] == size("a/x/1.flac", "a/x/2.flac") + 2 * CHUNK + 5
    await run_until(pins, lambda: pins.listing()[0]["state"] == COMPLETE, "new track fetched")
    new = rig.row("a/x/3.flac")
    assert len(rig.manifest(new)) == 3 and all(rig.cas.has(d) for d in rig.manifest(new).values())


@pytest.mark.resilience("6.9")
@pytest.mark.expected_log(r"pins: 1 files .* of Ann/Xray do not fit in 80% of the cache quota")
async def test_a_pinned_album_that_grows_past_its_share_keeps_what_it_held_and_says_so(rig):
    box = [tree_of(rig.catalog)]
    quota = int(size("a/x/1.flac", "a/x/2.flac") / 0.8) + 10  # the album fits, nothing more
    pins = pinset(rig, box, quota=quota)
    await pins.add(["Ann/Xray"])
    await run_until(pins, lambda: pins.listing()[0]["state"] == COMPLETE, "pin complete")
    pinned = rig.cas.pinned
    (rig.root / "a/x/3.flac").write_bytes(b"\x02" * (2 * CHUNK + 5))  # the album grows at the origin
    st = rig.origin.inner.stat("a/x/3.flac")
    rig.catalog.upsert_files([FileRow(path="a/x/3.flac", kind="track", size=st.size, mtime_ns=st.mtime_ns,
                                      etag=st.etag, artist="Ann", album="Xray", title="t3", track_no=3)])
    box[0] = tree_of(rig.catalog)
    await pins.refresh()
    [info] = pins.listing()
    assert info["state"] == "over_quota" and info["left_out"] == 1 and info["tracks"] == 3
    await run_until(pins, lambda: pins.statistics().worker == "idle", "the fetcher idle")
    assert rig.manifest(rig.row("a/x/3.flac")) == {} and rig.cas.pinned == pinned  # not fetched, not kept
    assert pins.statistics().bytes <= quota * 0.8


@pytest.mark.resilience("6.8")
@pytest.mark.expected_log(r"musicfs\.cache\.health: cache: normal -> unstable \(.*injected")
async def test_with_the_cache_in_passthrough_pins_wait_and_resume_when_it_is_back(rig):
    box = [tree_of(rig.catalog)]
    pins = pinset(rig, box)
    await pins.add(["Bob"])
    rig.health.failed(CasError("injected: the cache disk failed"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pins.run)
        await eventually_async(lambda: pins.listing()[0]["state"] == WAITING, 10, "the pin waiting")
        assert "passthrough" in pins.statistics().reason
        assert rig.registry.statistics()[0].requests == 0  # no origin bytes fetched only to be thrown away
        assert pins.listing()[0]["cached_bytes"] == 0
        assert await rig.health.probe_once()  # the disk answers again: normal
        await eventually_async(lambda: pins.listing()[0]["state"] == COMPLETE, 10, "the pin complete")
        nursery.cancel_scope.cancel()
    assert pins.listing()[0]["cached_bytes"] == size("b/z/1.flac")


async def test_requests_over_the_control_handler(rig):
    box = [tree_of(rig.catalog)]
    pins = pinset(rig, box)
    answer = await pins.handle({"op": "pin", "paths": ["Bob/Zulu"]})
    assert answer["ok"] and answer["changed"] == ["Bob/Zulu"] and answer["pins"][0]["tracks"] == 1
    assert (await pins.handle({"op": "pins"}))["pins"][0]["path"] == "Bob/Zulu"
    bad = await pins.handle({"op": "pin", "paths": "Bob"})
    assert bad == {"ok": False, "error": "pin: 'paths' must be a non-empty list of paths inside the mount"}
    assert (await pins.handle({"op": "unpin", "paths": ["Bob/Zulu"]}))["pins"] == []


async def test_the_control_socket_answers_requests_and_still_the_status_without_one(tmp_path):
    from musicfs.commands.status import query_daemon
    from musicfs.daemon.control import serve_status

    seen = []

    async def handle(request):
        seen.append(request)
        return {"ok": True, "pins": []}

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, str(tmp_path), lambda: {"state": "running"}, handle)
        status = await trio.to_thread.run_sync(query_daemon, str(tmp_path))
        answer = await trio.to_thread.run_sync(lambda: query_daemon(str(tmp_path), request={"op": "pins"}))
        unknown = await trio.to_thread.run_sync(lambda: query_daemon(str(tmp_path), request={"op": "boom"}))
        nursery.cancel_scope.cancel()
    assert status == {"state": "running"}
    assert answer == {"ok": True, "pins": []} and seen == [{"op": "pins"}]
    assert unknown["ok"] is False and "unknown request 'boom'" in unknown["error"]


def test_cli_pin_outside_a_mount_exits_2_and_pins_without_a_daemon_exits_3(tmp_path, monkeypatch, capsys):
    from musicfs.commands import cli

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert cli.main(["pin", str(tmp_path / "elsewhere")]) == 2
    assert f"{tmp_path / 'elsewhere'}: not inside a musicfs mount" in capsys.readouterr().err
    state = tmp_path / "xdg" / "musicfs" / "lib"
    state.mkdir(parents=True)
    (state / "daemon.json").write_text('{"mountpoint": "%s"}' % (tmp_path / "mnt"))
    assert cli.main(["pins", "--mount", str(tmp_path / "mnt")]) == 3
    assert f"the daemon of {tmp_path / 'mnt'} is not running" in capsys.readouterr().err
    assert cli.main(["unpin", str(tmp_path / "mnt" / "Ann")]) == 3
