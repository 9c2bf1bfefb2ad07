"""What read-ahead's workers load through the reader: batches of chunks ahead of a stream, the next track's head."""

from __future__ import annotations

import functools
import logging
from typing import Callable

import trio

from ..library import FileRow
from ..shared import (
    run_all,
)
from .open_files import NextHead, OpenFile

log = logging.getLogger(__name__)


class LoadsAhead:
    """FileReader's loads for read-ahead (ReadAhead's fetch); state lives in FileReader."""

    async def _prefetch(self, key, indexes: list[int], fetched: Callable[[], None]) -> None:
        """Load chunks ahead of a reader (ReadAhead's fetch; consecutive indexes): into the caches, verified,
        like a read. Chunks the cache has (or that are on their way) are loaded in parallel; a run of chunks
        nobody has is fetched from the origins in one request, then each chunk is stored and named at once.
        `fetched()` is called as soon as no origin request of this batch is left."""
        if isinstance(key, NextHead):  # the head of the next track: loaded and cached, protected (pinned by no one yet)
            await self._prefetch_head(key.row, indexes, fetched)
            return
        of = self._open.get(key)
        if of is None:
            return  # closed meanwhile
        self._stream_origin(of)
        if not of.origin.ordered:  # (SFTP) the file's next batch may go to the origin beside this one
            fetched()
        await self._load_ahead(of, indexes, fetched)

    async def _prefetch_head(self, row: FileRow, indexes: list[int], fetched: Callable[[], None]) -> None:
        """Load the head of the next track and protect it: until that track is opened and released, or newer
        heads push it out (Protection); if it is open already, until its release."""
        key = row.version
        of = self._open.get(key)
        if of is None:
            manifest, seen = await self._thread(self._version, row)
            of = OpenFile(row, manifest, seen, refs=0)
        try:
            await self._load_ahead(of, indexes, fetched)
        finally:  # what was loaded, also when the job failed or timed out
            head = [d for d in map(of.manifest.get, indexes) if d is not None]
            if key in self._open:  # (opened meanwhile)
                self.protection.add(key, head)
            elif head:
                self.protection.add_head(key, head)

    async def _load_ahead(self, of: OpenFile, indexes: list[int], fetched: Callable[[], None]) -> None:
        """_prefetch's loads: cached chunks (or chunks on their way) in parallel, a run of missing ones in one
        origin request; `fetched()` once no origin request is left."""
        here, missing = [], []
        # a racy version is not fetched ahead: nobody could keep what read-ahead fetched
        racy = not self.origins.settled(of.row.identity, of.seen, self.origins.wall_clock())
        for idx in indexes:
            if idx * self.chunk_size >= of.row.size:
                break
            if of.manifest.get(idx) is not None or (of.row.version, idx) in self._inflight:
                here.append(idx)  # cached (load and verify it) or on its way already
            elif not racy:
                missing.append(idx)
        loads = [(f"load-{idx}", functools.partial(self._chunk, of, idx)) for idx in here]
        if missing:
            loads.append(("fetch", functools.partial(self._fetch_missing, of, missing, fetched)))
        else:
            fetched()
        await run_all(loads)

    async def _fetch_missing(self, of: OpenFile, missing: list[int], fetched: Callable[[], None]) -> None:
        """Uncached chunks: consecutive ones nobody loads yet in one origin request (reads of any of them wait
        for it, as _chunk, each until its own chunk is stored), else chunk by chunk. `fetched()` once no origin
        request is left."""
        keys = [(of.row.version, idx) for idx in missing]
        if (len(missing) < 2 or missing != list(range(missing[0], missing[-1] + 1))
                or any(k in self._inflight for k in keys)):  # (someone started one meanwhile)
            try:
                for idx in missing:
                    await self._chunk(of, idx)
            finally:
                fetched()
            return
        events = {key: trio.Event() for key in keys}
        self._inflight.update(events)

        def done(key) -> None:
            self._fresh.pop(key, None)
            if self._inflight.get(key) is events[key]:
                del self._inflight[key]
            events[key].set()

        try:
            try:
                data, keep = await self._fetch_span(of, missing[0], missing[-1])
            finally:
                fetched()
            if not keep:  # racy: nobody else takes these bytes; each read fetches its own
                return
            cs = self.chunk_size
            for n, key in enumerate(keys):  # readers take them now, while they are stored
                self._fresh[key] = data[n * cs:(n + 1) * cs]
            del data  # the pieces are the only copy

            async def store(n: int, idx: int) -> None:
                try:
                    await self._store_fetched(of, idx, self._fresh[keys[n]], True)
                finally:
                    done(keys[n])

            # The chunks are hashed, written and named at once, on the cache's and the catalog's threads.
            await run_all([(f"store-{idx}", functools.partial(store, n, idx)) for n, idx in enumerate(missing)])
        finally:
            for key in keys:
                done(key)
