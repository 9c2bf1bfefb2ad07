"""Read-ahead through the FileReader: a real catalog and CAS, an origin that records every read it serves."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from musicfs.origins.memory import READ, MemoryOrigin, serve
from musicfs_test_utils.eventually import eventually_async
from musicfs_test_utils.reader_rig import ReaderRig, pattern_bytes, read_range
from musicfs_test_utils.reader_rig import settle_readahead as settle

CHUNK = 64 << 10
READ_SIZE = 16 << 10  # what FUSE sends, scaled down with the chunk
FILES = {f"album/{n:02d}.flac": pattern_bytes(n, 40 * CHUNK + 123, step=7, salt=31, period=97) for n in (1, 2, 3)}


class Recording:
    """serve(FILES), remembering the chunk index of every read; with a `gate` (a threading.Event set by a test),
    reads from chunk `hold_from` on wait for it, and `most_held` is how many of those waited at once."""

    def __init__(self):
        self.inner = serve(FILES)
        self.reads: list[tuple[str, int]] = []  # (path, chunk index) of every chunk a read covered
        self.requests = 0
        self.gate: threading.Event | None = None
        self.hold_from = 0
        self.held = self.most_held = 0
        self._lock = threading.Lock()

    def __call__(self, request):
        if request.op == READ:
            last = (request.offset + max(request.length, 1) - 1) // CHUNK
            self.reads += [(request.path, i) for i in range(request.offset // CHUNK, last + 1)]
            self.requests += 1
            if self.gate is not None and request.offset // CHUNK >= self.hold_from:
                with self._lock:
                    self.held += 1
                    self.most_held = max(self.most_held, self.held)
                try:
                    self.gate.wait(10)
                finally:
                    with self._lock:
                        self.held -= 1
        return self.inner(request)

    def chunks(self, path: str) -> list[int]:
        return sorted(i for p, i in self.reads if p == path)


@pytest.fixture
async def rig(tmp_path, nursery):
    recording = Recording()
    rig = ReaderRig.build(tmp_path, root=tmp_path / "unused", inner=MemoryOrigin(recording), chunk_size=CHUNK,
                          memory_cache=64 * CHUNK, read_timeout=10.0)
    rig.recording = recording
    nursery.start_soon(rig.reader.readahead.run)  # the daemon's supervisor runs this task
    yield rig
    rig.close()


async def read_sequentially(reader, fh, start: int, end: int) -> bytes:
    parts = []
    for offset in range(start, end, READ_SIZE):
        parts.append(await reader.read(fh, offset, READ_SIZE))
    return b"".join(parts)


async def test_a_sequential_reader_gets_chunks_fetched_ahead_with_right_bytes(rig):
    path = "album/01.flac"
    row = rig.row(path)
    fh = await rig.reader.open(row)
    assert await read_sequentially(rig.reader, fh, 0, 3 * CHUNK) == FILES[path][:3 * CHUNK]
    await settle(rig.reader)
    fetched = rig.recording.chunks(path)
    assert len(fetched) == len(set(fetched)), "a chunk was fetched twice"
    assert max(fetched) > 3, f"nothing was fetched ahead of chunk 2: {fetched}"
    before = len(rig.recording.reads)
    got = await read_sequentially(rig.reader, fh, 3 * CHUNK, row.size)
    assert got == FILES[path][3 * CHUNK:]
    rig.reader.release(fh)
    await settle(rig.reader)
    stats = rig.reader.statistics().readahead
    assert stats.started > 0 and stats.failed == 0
    assert sorted(set(rig.recording.chunks(path))) == list(range(41))  # every chunk once, none twice
    assert len(rig.recording.chunks(path)) == 41 and len(rig.recording.reads) >= before


async def test_a_tag_reader_pattern_fetches_only_what_it_reads(rig):
    path = "album/02.flac"
    row = rig.row(path)
    for _ in range(2):  # a scanner's probe: open, read the head, read the tail, close
        fh = await rig.reader.open(row)
        await read_sequentially(rig.reader, fh, 0, 3 * READ_SIZE)  # mutagen reads a few blocks of the head
        await rig.reader.read(fh, row.size - READ_SIZE, READ_SIZE)
        rig.reader.release(fh)
    await settle(rig.reader)
    tail = (row.size - READ_SIZE) // CHUNK
    assert rig.recording.chunks(path) == sorted({0, tail, 40})  # the chunks read, each once: nothing ahead
    assert rig.reader.statistics().readahead.started == 0


async def test_a_seek_cancels_the_window_and_reading_goes_on_right(rig):
    path = "album/01.flac"
    row = rig.row(path)
    fh = await rig.reader.open(row)
    await read_sequentially(rig.reader, fh, 0, 2 * CHUNK)
    far = 30 * CHUNK
    assert await rig.reader.read(fh, far, READ_SIZE) == FILES[path][far:far + READ_SIZE]
    await settle(rig.reader)
    handle = rig.reader._fh[fh]
    assert handle.history.window == 0 and handle.lane.generation == 1  # the seek closed the window
    assert rig.reader.statistics().readahead.streams == 0
    rig.reader.release(fh)


async def test_the_next_track_head_is_fetched_once_when_a_track_is_read_to_its_end(rig):
    first, second = rig.row("album/01.flac"), rig.row("album/02.flac")
    asked = []

    def next_track():
        asked.append(1)
        return second

    fh = await rig.reader.open(first, next_track)
    await read_sequentially(rig.reader, fh, 0, first.size)
    await read_sequentially(rig.reader, fh, first.size - CHUNK, first.size)  # the end read again
    rig.reader.release(fh)
    await settle(rig.reader)
    assert rig.recording.chunks("album/02.flac") == [0, 1]  # its head, once
    assert rig.reader.statistics().readahead.next_track == 2
    reads = len(rig.recording.reads)
    fh = await rig.reader.open(second)  # playing it: the head comes from the cache
    assert await rig.reader.read(fh, 0, 2 * CHUNK) == FILES["album/02.flac"][:2 * CHUNK]
    assert len(rig.recording.reads) == reads
    rig.reader.release(fh)


async def test_an_open_file_pins_only_the_chunks_around_where_it_reads(rig):
    path = "album/03.flac"
    row = rig.row(path)
    fh = await rig.reader.open(row)
    await read_sequentially(rig.reader, fh, 0, 20 * CHUNK)
    await settle(rig.reader)
    of = rig.reader._open[row.version]
    assert min(of.pinned.values()) >= 18, sorted(of.pinned.values())  # behind the reader: unpinned
    assert rig.cas.pinned == len(of.pinned)
    rig.reader.release(fh)
    assert not of.pinned and rig.cas.pinned == 0


async def test_the_quota_holds_again_when_a_file_larger_than_the_cache_is_closed(tmp_path, nursery):
    recording = Recording()
    quota = 12 * CHUNK  # the file is 41 chunks
    rig = ReaderRig.build(tmp_path, root=tmp_path / "unused", inner=MemoryOrigin(recording), chunk_size=CHUNK,
                          memory_cache=4 * CHUNK, read_timeout=10.0, cas_quota=quota)
    try:
        nursery.start_soon(rig.reader.readahead.run)
        path = "album/01.flac"
        row = rig.row(path)
        fh = await rig.reader.open(row)
        assert await read_sequentially(rig.reader, fh, 0, row.size) == FILES[path]
        rig.reader.release(fh)
        await settle(rig.reader)
        await rig.reader.after_release()  # what the FUSE release handler does
        used, _ = rig.cas.usage()
        assert used <= quota, f"{used} bytes cached under a {quota}-byte quota after the close"
        assert rig.cas.pinned == 0
    finally:
        rig.close()


# -- eviction that respects playback (issue 12): the played track and the next track's head go last -----------
PLAYBACK = {
    "old/u.flac": pattern_bytes(10, 6 * CHUNK, step=3, salt=17, period=89),  # read first: the oldest chunks
    "album/01.flac": pattern_bytes(11, 10 * CHUNK, step=5, salt=19, period=83),  # played
    "album/02.flac": pattern_bytes(12, 4 * CHUNK, step=9, salt=23, period=79),  # its next track
    **{f"scan/{n:02d}.flac": pattern_bytes(20 + n, 2 * CHUNK, step=11, salt=29, period=73) for n in range(20)},
}


@pytest.fixture
async def playback(tmp_path, nursery):
    rig = ReaderRig.build(tmp_path, root=tmp_path / "unused", inner=MemoryOrigin(serve(PLAYBACK)),
                          chunk_size=CHUNK, memory_cache=64 * CHUNK, read_timeout=10.0, cas_quota=24 * CHUNK)
    rig.files = PLAYBACK  # rig.chunks(path): the digests of a file's chunks
    nursery.start_soon(rig.reader.readahead.run)
    yield rig
    rig.close()


async def scan(rig, first: int, count: int) -> None:
    """Other traffic: a media server reading whole small files, one read each (nothing of them is played)."""
    for n in range(first, first + count):
        assert await read_range(rig.reader, rig.row(f"scan/{n:02d}.flac")) == PLAYBACK[f"scan/{n:02d}.flac"]
        await settle(rig.reader)
        await rig.reader.after_release()


@pytest.mark.resilience("6.1")
async def test_the_played_track_and_the_next_tracks_head_go_last_and_are_ordinary_after_release(playback):
    rig, reader = playback, playback.reader
    played, following = rig.row("album/01.flac"), rig.row("album/02.flac")
    old, mine, head = rig.chunks("old/u.flac"), rig.chunks("album/01.flac"), rig.chunks("album/02.flac")[:2]
    assert await read_range(reader, rig.row("old/u.flac")) == PLAYBACK["old/u.flac"]
    fh = await reader.open(played, lambda: following)
    assert await read_sequentially(reader, fh, 0, played.size) == PLAYBACK["album/01.flac"]
    await settle(reader)
    assert all(rig.cas.has(d) for d in old + mine + head)  # 18 of 24 chunks: nothing evicted yet
    assert rig.cas.protected == 8 + 2  # behind the reader (its last 2 chunks are pinned), the next track's head

    await scan(rig, 0, 8)  # 16 chunks more than fit: evictions
    assert not any(rig.cas.has(d) for d in old), "the older unrelated chunks go first"
    assert all(rig.cas.has(d) for d in mine), "a chunk of the track being played went before the scan's"
    assert all(rig.cas.has(d) for d in head), "a chunk of the next track's head went before the scan's"
    assert not rig.cas.has(rig.chunks("scan/00.flac")[0])  # the scan's own oldest went instead
    assert rig.cas.usage()[0] <= rig.cas_quota

    reader.release(fh)  # the player moves on: the played track's chunks are ordinary again, the head is not
    await reader.after_release()
    assert rig.cas.protected == 2 and rig.cas.pinned == 0
    await scan(rig, 8, 8)
    assert not any(rig.cas.has(d) for d in mine), "a closed track's chunks are still kept over newer ones"
    assert all(rig.cas.has(d) for d in head)

    fh = await reader.open(following)  # the next track opened: its head is its own until it is released
    assert rig.cas.protected == 2
    reader.release(fh)
    await reader.after_release()
    assert rig.cas.protected == 0
    await scan(rig, 16, 2)
    assert not any(rig.cas.has(d) for d in head), "a released next track's head is still kept over newer chunks"
    assert rig.cas.usage()[0] <= rig.cas_quota


async def test_only_the_heads_of_the_most_recent_next_tracks_stay_protected(playback):
    from musicfs.read.keeping import NEXT_HEADS, Protection

    rig = playback
    protection = Protection(rig.reader.cache)
    rows = [rig.row(f"scan/{n:02d}.flac") for n in range(NEXT_HEADS + 2)]
    heads = {row.path: rig.cas.put(PLAYBACK[row.path][:CHUNK]) for row in rows}
    for row in rows[:NEXT_HEADS]:
        protection.add_head(row.version, [heads[row.path]])
    assert rig.cas.protected == NEXT_HEADS
    protection.opened(rows[0].version)  # the oldest head's track is opened: it owns its head now
    protection.add_head(rows[NEXT_HEADS].version, [heads[rows[NEXT_HEADS].path]])
    protection.add_head(rows[NEXT_HEADS + 1].version, [heads[rows[NEXT_HEADS + 1].path]])
    # NEXT_HEADS heads wait (the two newest and two before them), the opened track keeps its own; one went
    assert rig.cas.protected == NEXT_HEADS + 1
    rig.cas.evict_to(CHUNK * (NEXT_HEADS + 1))
    assert not rig.cas.has(heads[rows[1].path]) and rig.cas.has(heads[rows[0].path])
    protection.drop(rows[0].version)  # released
    assert rig.cas.protected == NEXT_HEADS


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_files_batches_reach_an_ordered_origin_one_at_a_time_and_another_at_once(rig, ordered):
    # S3's stream is one GET read on (ordered_streams): a second batch would open another; SFTP's reads of one
    # file run on several connections at once
    rig.reader.origins.origins[0].ordered_streams = ordered
    rig.recording.gate, rig.recording.hold_from = threading.Event(), 8
    path = "album/02.flac"
    row = rig.row(path)
    fh = await rig.reader.open(row)
    try:
        assert await read_sequentially(rig.reader, fh, 0, 7 * CHUNK) == FILES[path][:7 * CHUNK]
        with trio.fail_after(10):  # the batches beyond chunk 8 reach the held origin (worker threads: a poll)
            while rig.recording.held < (1 if ordered else 2):
                await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert rig.recording.most_held == (1 if ordered else 2)
    finally:
        rig.recording.gate.set()
        rig.reader.release(fh)
    await settle(rig.reader)


@pytest.mark.parametrize("ordered", [True, False])
async def test_probe_reads_use_the_files_kept_open_stream_only_where_streams_need_no_order(rig, ordered, monkeypatch):
    # SFTP: small reads of an open file go through its stream (the remote file stays open: no open and close per
    # read); S3: a stream is one long GET, which a probe read must not start (it would pull more than it reads)
    registry = rig.reader.origins
    registry.origins[0].ordered_streams = ordered
    opened = []
    real = registry.open_stream
    monkeypatch.setattr(registry, "open_stream", lambda *a, **kw: opened.append(a[0]) or real(*a, **kw))
    path = "album/03.flac"
    row = rig.row(path)
    fh = await rig.reader.open(row)
    try:
        assert await rig.reader.read(fh, 100, 4096) == FILES[path][100:4196]  # a tag reader's head
        assert await rig.reader.read(fh, row.size - 4096, 4096) == FILES[path][-4096:]  # and its tail
    finally:
        rig.reader.release(fh)
    await rig.reader.after_release()
    assert opened == ([] if ordered else [path])


async def test_the_chunks_past_the_window_are_asked_for_while_a_read_waits_for_its_own(rig):
    # a reader entering a chunk still on its way grows the window: the loads beyond go at once, not after that
    # chunk came (on a remote origin every step would cost a round trip)
    path = "album/02.flac"
    rig.recording.gate, rig.recording.hold_from = threading.Event(), 1
    fh = await rig.reader.open(rig.row(path))
    try:
        first = await read_sequentially(rig.reader, fh, 0, CHUNK)  # chunk 0: the window opens (1..4, held)
        await eventually_async(lambda: 1 in rig.recording.chunks(path), 10, "the window asked for")
        got = []

        async def reading():
            got.append(await rig.reader.read(fh, CHUNK, READ_SIZE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reading)  # chunk 1: held at the origin
            await eventually_async(lambda: 5 in rig.recording.chunks(path), 10, "the chunks past the window")
            assert not got  # asked for while the read of chunk 1 still waited
            rig.recording.gate.set()
        assert first + got[0] == FILES[path][:CHUNK + READ_SIZE]
        await settle(rig.reader)  # the loads ahead end before the catalog closes
    finally:
        rig.recording.gate.set()
        rig.reader.release(fh)
