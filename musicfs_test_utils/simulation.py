"""Deterministic simulation (X.1): reader + CAS + origins + health + supervisor on trio's MockClock.

Every fault comes from one seeded RNG and is written to a trace with the mock time it happened at.
Blocking calls run inline on the trio thread (no real threads, no wall clock), and trio's own
scheduling order is seeded, so one seed always gives the same trace, byte for byte.
The invariant checked on every read: the right bytes or an error, never wrong bytes.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

from musicfs.cache.cas import CasStore
from musicfs.cache.chunk_cache import ChunkCache
from musicfs.daemon.supervisor import TaskSupervisor
from musicfs.library.catalog import Catalog
from musicfs.library.scanner import Scanner
from musicfs.origins.base import Origin
from musicfs.origins.health import HealthMonitor
from musicfs.origins.local import LocalOrigin
from musicfs.origins.memory import MemoryOrigin, Request
from musicfs.origins.registry import OriginRegistry
from musicfs.read import FileReader, build_reader
from musicfs.shared.errors import (
    CacheFull,
    CasError,
    MusicFSError,
    OriginNotFound,
    OriginTimeout,
    OriginTransient,
)

from .fixtures import open_catalog

CHUNK = 64 << 10


class Faults:
    """The one source of randomness for faults; every draw lands in the trace."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.trace: list[str] = []
        self.enabled = False

    def draw(self, where: str, weights: dict[str, float]) -> str:
        if not self.enabled:
            return "ok"
        outcome = self.rng.choices(list(weights), list(weights.values()))[0]
        self.note(f"{where} -> {outcome}")
        return outcome

    def note(self, event: str) -> None:
        now = trio.current_time() if self.enabled else 0.0
        self.trace.append(f"{now:10.3f} {event}")


READ_FAULTS = {"ok": 0.6, "transient": 0.2, "timeout": 0.1, "short": 0.05, "not_found": 0.05}
PROBE_FAULTS = {"ok": 0.6, "down": 0.4}  # both replicas down in ~1 round of 6: offline spells


def chaos_origin(inner: Origin, label: str, faults: Faults) -> MemoryOrigin:
    """A real origin whose every read and probe may fail as the seeded RNG says (a MemoryOrigin handler)."""

    def handler(request: Request):
        path = request.path
        if request.op == "read":
            outcome = faults.draw(f"{label} read {path}@{request.offset}", READ_FAULTS)
            if outcome == "transient":
                raise OriginTransient(f"{label}: simulated reset", origin=label, path=path)
            if outcome == "timeout":
                raise OriginTimeout(f"{label}: simulated timeout", origin=label, path=path)
            if outcome == "not_found":
                raise OriginNotFound(f"{label}: simulated missing replica file", origin=label, path=path)
            data = inner.read(path, request.offset, request.length, request.expect)
            return data[: len(data) // 2] if outcome == "short" else data
        if request.op == "probe":
            if faults.draw(f"{label} probe", PROBE_FAULTS) == "down":
                raise OriginTimeout(f"{label}: simulated dead probe", origin=label)
            return inner.probe()
        return list(inner.walk()) if request.op == "walk" else inner.stat(path)

    return MemoryOrigin(handler, name=label)


class ChaosCas:
    """A real CasStore whose disk may lie (flipped bits), fail (EIO) or fill up (ENOSPC)."""

    GET = {"ok": 0.85, "corrupt": 0.08, "eio": 0.07}
    PUT = {"ok": 0.9, "enospc": 0.1}

    def __init__(self, inner: CasStore, faults: Faults):
        self.inner, self.faults = inner, faults

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get(self, digest: str) -> bytes:
        outcome = self.faults.draw(f"cas get {digest[:8]}", self.GET)
        if outcome == "eio":
            raise CasError(f"cache: simulated EIO on {digest[:8]}")
        if outcome == "corrupt":
            path = self.inner._path(digest)
            with open(path, "r+b") as fh:  # every byte flipped: any read overlapping the chunk would see it
                data = fh.read()
                fh.seek(0)
                fh.write(bytes(b ^ 0xFF for b in data))
        return self.inner.get(digest)

    def put(self, data: bytes) -> str:
        if self.faults.draw("cas put", self.PUT) == "enospc":
            raise CacheFull("cache: simulated ENOSPC")
        return self.inner.put(data)


def _now() -> float:
    """Mock time inside the run; 0 for the fault-free scan before it."""
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


async def _inline(fn, *args, **_kwargs):
    """trio.to_thread.run_sync stand-in: the call runs here, so no real thread races the mock clock."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


@contextlib.contextmanager
def deterministic_trio(seed: int):
    """Blocking work inline and trio's scheduling coin seeded, for the length of one run."""
    real = trio.to_thread.run_sync
    trio.to_thread.run_sync = _inline
    trio._core._run._r.seed(seed)  # trio shuffles ready tasks with this RNG (its own test suite seeds it too)
    try:
        yield
    finally:
        trio.to_thread.run_sync = real


@dataclass
class SimResult:
    trace: list[str] = field(default_factory=list)
    reads_ok: int = 0
    reads_failed: int = 0
    wrong_bytes: list[str] = field(default_factory=list)


def simulate(seed: int, library: Path, workdir: Path, reads: int = 80) -> SimResult:
    """One seeded run over `library` (scanned fault-free first) in a fresh `workdir`."""
    faults = Faults(seed)
    workload = random.Random(seed ^ 0x5EED)
    catalog = open_catalog(str(workdir / "state"))
    origins = [chaos_origin(LocalOrigin(library), f"replica{i}", faults) for i in (1, 2)]
    registry = OriginRegistry(origins, seed=seed, sleep=lambda s: None, clock=_now, grace=30.0)
    Scanner(catalog, registry, workers=1).scan()
    cas = ChaosCas(CasStore(str(workdir / "cache"), 256 << 10), faults)  # small: evictions send reads back to the origins
    result = SimResult()
    with deterministic_trio(seed):
        trio.run(_run, catalog, cas, registry, library, faults, workload, reads, result,
                 clock=trio.testing.MockClock(autojump_threshold=0))
    catalog.close()
    cas.inner.close()
    result.trace = faults.trace
    return result


async def _run(catalog: Catalog, cas, registry, library, faults, workload, reads, result) -> None:
    faults.enabled = True
    cache = ChunkCache(cas, op_timeout=2.0, probe_timeout=2.0, probe_interval=20.0, retry_interval=1.0)
    reader = build_reader(catalog, cache, registry, chunk_size=CHUNK, memory_cache=128 << 10, read_timeout=10.0)
    monitor = HealthMonitor(registry, interval=5.0, timeout=2.0)
    tracks = sorted(catalog.files("track"), key=lambda r: r.path)
    async with TaskSupervisor(clock=trio.current_time) as sup:
        sup.spawn_critical("health", monitor.run)
        sup.spawn_critical("cache", cache.run)

        async def driver():
            for _ in range(reads):
                await _one_read(reader, workload.choice(tracks), library, workload, faults, result)
                await trio.sleep(workload.uniform(0, 3))
            sup.cancel_all()

        sup.spawn_supervised("reads", driver)


async def _one_read(reader: FileReader, row, library: Path, workload, faults: Faults, result: SimResult) -> None:
    offset = workload.randrange(row.size + 10)
    size = workload.randrange(1, 3 * CHUNK)
    fh = await reader.open(row)
    try:
        data = await reader.read(fh, offset, size)
    except (MusicFSError, trio.TooSlowError) as exc:
        result.reads_failed += 1
        faults.note(f"read {row.path}@{offset}+{size} failed: {type(exc).__name__}")
        return
    finally:
        reader.release(fh)
    with open(os.path.join(library, row.path), "rb") as fh_origin:
        fh_origin.seek(offset)
        expected = fh_origin.read(size)
    if data != expected:
        result.wrong_bytes.append(f"{row.path}@{offset}+{size}")
    result.reads_ok += 1
    faults.note(f"read {row.path}@{offset}+{size} ok {len(data)} bytes")
