"""The read policy: from a handle's history and a read, the plan for that read (pure: no trio, no I/O).

What a plan says, and why:
* **blocks or chunks.** A small read that is not part of a stream (a tag reader's probe) of a region no ready
  chunk holds is served from blocks (library/blocks.py): small verified ranges fetched aligned. A read that
  covers a whole chunk, or any read of a stream, loads whole chunks; a ready chunk always wins over blocks.
  Without read-ahead there is no stream to tell probes from playback: reads load whole chunks.
* **the window ahead.** A read that starts where the previous ones ended (within a tolerance: the kernel sends
  several reads at once; or past chunks pushed into the page cache, which the reader read there) extends the
  handle's run; any other read is a seek: the run starts again and what
  was planned ahead of the old run is dropped (`restart`). Once a run covers `min_run` bytes (a chunk: a tag
  reader's head read never gets there), chunks are loaded ahead: 4 at first, doubling each time the reader
  enters a new chunk, up to `max_window`.
* **the next track.** When a stream reads into its file's last chunk, the first chunks of the next track of
  its album folder are loaded too (once per handle).
* **keeping.** The handle `played` (it streams, or nobody can tell) keeps the chunks it passed protected;
  a `sequential` one also has its verified chunks pushed into the kernel's page cache (pages.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

# A sequential run this long (a few FUSE reads) is no tag reader's: its next uncached small read fetches the rest
# of its chunk at once (mediainfo, ffprobe, beets and mpd read less than this of a file's head in a row).
STREAMING_SOON = 512 << 10


@dataclass
class History:
    """Where one handle has read: its sequential run, and the window kept ahead of it."""

    size: int  # the file's size
    chunks: int  # its number of chunks
    next_offset: int = -1  # where the current run would continue
    run: int = 0  # bytes read in the current sequential run
    window: int = 0  # chunks kept ahead; 0: not streaming
    ahead: int = 0  # chunk index up to which loads ahead were planned (exclusive)
    last_chunk: int = -1  # the chunk the reader was last in
    next_planned: bool = False  # the next track's head was planned


@dataclass(frozen=True)
class ReadPlan:
    first: int  # the chunks the read touches: first..last
    last: int
    blocks: bool = False  # served from blocks, not chunks
    to_chunk_end: bool = False  # blocks: fetch the last gap on to the end of its chunk (a stream is near)
    restart: bool = False  # a seek ended a streaming run: what was loading ahead of it is dropped
    ahead: range = range(0)  # chunks to load ahead of the reader now
    next_head: int = 0  # chunks of the next track's head to load now
    played: bool = True  # the chunks the reader passed are protected (evicted last) until its release
    sequential: bool = False  # the handle streams: its verified chunks go to the kernel's page cache


class ReadPolicy:
    def __init__(self, chunk_size: int, *, block_size: int = 0, readahead: bool = True, max_window: int = 32,
                 min_run: int | None = None, next_track_chunks: int = 2, first_window: int = 4):
        """`block_size`: what a small read outside a stream fetches (0: reads always load whole chunks);
        `readahead`: whether handles are followed at all; `max_window`: chunks kept ahead of one reader;
        `first_window`: chunks ahead when a run opens its window (4: every request costs a round trip, and none of
        the tag scanners bench/media_scan.py runs reads a chunk in a row, so none opens a window)."""
        self.chunk_size = chunk_size
        self.block_size = block_size if 0 < block_size < chunk_size else 0
        self.readahead = readahead
        self.max_window = max(2, max_window)
        self.first_window = max(1, min(first_window, self.max_window))
        self.min_run = chunk_size if min_run is None else min_run
        self.tolerance = max(chunk_size, 256 << 10)  # reads the kernel sends at once arrive a little out of order
        self.next_track_chunks = next_track_chunks

    def history(self, size: int) -> History | None:
        """A new handle's history (None: read-ahead is off, nothing is followed)."""
        if not self.readahead:
            return None
        return History(size, chunks=math.ceil(size / self.chunk_size))

    def plan(self, history: History | None, offset: int, end: int, ready: Callable[[int], bool],
             pushed: Callable[[int], bool] = lambda idx: False) -> ReadPlan:
        """The plan for reading [offset, end) (end within the file) and the history after it. `ready(idx)`:
        whether chunk idx is in hand or on its way (then blocks would not save a request); `pushed(idx)`:
        whether chunk idx went to the kernel's page cache (the reader read it there: no request came)."""
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        if history is None:
            return ReadPlan(first, last)
        played = bool(history.window)
        soon = self._streaming_soon(history, offset)
        blocks = self._from_blocks(history, offset, end, soon, ready)
        self._skip_pushed(history, offset, pushed)
        restart, ahead, next_head = self._follow(history, offset, end)
        return ReadPlan(first, last, blocks=blocks, to_chunk_end=soon, restart=restart, ahead=ahead,
                        next_head=next_head, played=played, sequential=bool(history.window))

    def _streaming_soon(self, history: History, offset: int) -> bool:
        """Whether this read continues a sequential run of STREAMING_SOON bytes or more: longer than tag readers
        read, so a player or a copy on its way to read-ahead (which starts at a chunk)."""
        return history.run >= STREAMING_SOON and abs(offset - history.next_offset) <= self.tolerance

    def _from_blocks(self, history: History, offset: int, end: int, soon: bool, ready: Callable[[int], bool]) -> bool:
        cs = self.chunk_size
        if not self.block_size or history.window or (offset % cs == 0 and soon):
            return False
        indexes = range(offset // cs, (end - 1) // cs + 1)
        if any(offset <= i * cs and end >= min((i + 1) * cs, history.size) for i in indexes):
            return False  # it covers a whole chunk: load that
        return not all(ready(idx) for idx in indexes)

    def _skip_pushed(self, h: History, offset: int, pushed: Callable[[int], bool]) -> None:
        """A streaming reader that read pushed chunks from the page cache asks next beyond them: its run goes on
        over what it read there (else the jump would look like a seek and close the window)."""
        cs = self.chunk_size
        if h.window and offset > h.next_offset and all(pushed(i) for i in range(h.next_offset // cs, offset // cs)):
            h.run += offset - h.next_offset
            h.next_offset = offset

    def _follow(self, h: History, offset: int, end: int) -> tuple[bool, range, int]:
        """Extend or restart the run with this read; (restart, chunks to load ahead, next head chunks)."""
        if end <= offset:  # an empty read (and every read of an empty file)
            return False, range(0), 0
        restart = False
        if abs(offset - h.next_offset) <= self.tolerance:  # (a first read near the start: the same either way)
            h.run += max(0, end - max(offset, h.next_offset))
            h.next_offset = max(h.next_offset, end)
        else:
            if h.window:
                restart = True
                h.window = h.ahead = 0
                h.last_chunk = -1
            h.run, h.next_offset = end - offset, end
        if h.run < self.min_run:
            return restart, range(0), 0
        current = (end - 1) // self.chunk_size  # the read ends within the file
        if not h.window:
            h.window = self.first_window
        elif current > h.last_chunk:
            h.window = min(self.max_window, h.window * 2)  # the reader keeps up: look further
        h.last_chunk = current
        stop = min(current + h.window, h.chunks - 1) + 1
        ahead = range(max(h.ahead, current + 1), stop)
        h.ahead = max(h.ahead, stop)
        next_head = 0
        if current == h.chunks - 1 and not h.next_planned:
            h.next_planned = True
            next_head = self.next_track_chunks
        return restart, ahead, next_head

