"""A toxiproxy-style TCP chaos proxy, written with trio.

Toxiproxy itself cannot be installed here, so network-chaos tests put this
proxy between the daemon and a real server (moto S3, OpenSSH) on loopback.

Two layers:

* ``ChaosProxy`` is the trio core.  ``await proxy.serve()`` (usually through
  ``nursery.start``) binds, reports the port and forwards every accepted
  connection to the upstream until it is cancelled.  Its control methods
  (``add_toxic``, ``disable``, ...) are plain synchronous functions that must
  be called from the proxy's trio thread.
* ``ProxyThread`` runs a ``ChaosProxy`` in a background thread with its own
  ``trio.run`` so that synchronous tests (boto3, the SFTP client, a daemon in another
  process) can use it::

      with ProxyThread("127.0.0.1", s3_port, seed=1) as proxy:
          proxy.add_toxic("slow", "latency", latency_ms=200)
          ... talk to ("127.0.0.1", proxy.port) ...

Toxics follow Shopify toxiproxy's names and semantics (see ``TOXIC_ATTRIBUTES``
and the README-style summary in ``ChaosProxy.add_toxic``).  Each has a
``direction``: "downstream" (server -> client, the default) or "upstream"
(client -> server), and a ``toxicity``: the probability that it applies to a
given connection, drawn from ``random.Random(seed)`` when the connection is
accepted (or, for a connection already open, when the toxic is added), so a
run with a given seed and the same sequence of events is reproducible.

The pump of each direction looks up the current toxics for every chunk it
reads, so toxics added or removed at run time affect open connections too.
"""

from __future__ import annotations

import functools
import math
import random
import socket
import struct
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import trio

__all__ = ["ChaosProxy", "ProxyThread", "ProxyStats", "Toxic", "TOXIC_ATTRIBUTES", "DIRECTIONS"]

DIRECTIONS = ("downstream", "upstream")

_REQUIRED = object()

#: Attributes of each toxic type, with their defaults (``_REQUIRED``: no default).
TOXIC_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "latency": {"latency_ms": _REQUIRED, "jitter_ms": 0},
    "bandwidth": {"rate_kbps": _REQUIRED},
    "slow_close": {"delay_ms": _REQUIRED},
    "timeout": {"timeout_ms": 0},
    "reset_peer": {"timeout_ms": 0},
    "slicer": {"average_size": _REQUIRED, "size_variation": 0, "delay_us": 0},
    "limit_data": {"bytes": _REQUIRED},
}

CHUNK_SIZE = 64 * 1024
# Chunks a direction may read ahead of what it has delivered.  Reading on while
# earlier chunks wait out their latency keeps latency a delay, not a throughput
# cap (as in toxiproxy); the bound keeps memory and backpressure sane.
PIPELINE_CHUNKS = 16
UPSTREAM_CONNECT_TIMEOUT = 10.0
# A bandwidth-limited chunk is sent in pieces of at most this many seconds'
# worth of data, so throughput is smooth rather than bursty.
BANDWIDTH_PIECE_SECONDS = 0.1

# What a broken, reset or locally closed socket raises; each ends the connection.
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(frozen=True)
class Toxic:
    """One toxic, as added with ``ChaosProxy.add_toxic``."""

    name: str
    type: str
    direction: str
    toxicity: float
    attributes: dict[str, float]
    uid: int  # distinguishes a toxic from a later one that reuses its name

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "direction": self.direction,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


@dataclass
class ProxyStats:
    connections_accepted: int = 0
    connections_active: int = 0
    bytes_upstream: int = 0  # delivered client -> server
    bytes_downstream: int = 0  # delivered server -> client
    writes_upstream: int = 0  # send calls; a slicer shows up here
    writes_downstream: int = 0
    bytes_dropped: int = 0  # swallowed by a timeout toxic
    # What the time toxics scheduled (their own arithmetic, in ms: what a test checks instead of a stopwatch)
    delayed_chunks: int = 0  # chunks held back by a latency toxic
    latency_ms: float = 0.0  # the delays they were given, summed
    paced_ms: float = 0.0  # bandwidth: the time the pieces were spread over
    close_delay_ms: float = 0.0  # slow_close: how late EOFs were passed on
    timer_closes: int = 0  # connections a timeout or reset_peer timer ended
    timer_ms: float = 0.0  # how long after the toxic started applying those timers fired


@dataclass
class _Applied:
    """A toxic's state on one connection it applies to."""

    since: float  # trio time it started applying: the origin of its timers
    passed: int = 0  # bytes through it so far (limit_data)


@dataclass(eq=False)
class _Conn:
    id: int
    client: trio.SocketStream
    rng: random.Random  # jitter and slice sizes; separate from the toxicity draws
    server: trio.SocketStream | None = None
    applied: dict[int, _Applied] = field(default_factory=dict)  # by Toxic.uid
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def close(self, *, rst: bool = False) -> None:
        """End the connection now: stop its tasks and close both sockets.

        Synchronous on purpose, so that when ``disable()`` returns the peers
        already see the close.  ``rst`` sets SO_LINGER 0 so the kernel sends
        a TCP RST instead of a FIN.
        """
        self.scope.cancel()
        for stream in (self.client, self.server):
            if stream is None:
                continue
            if rst:
                try:
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                except OSError:
                    pass
            stream.socket.close()


def _validate(type: str, direction: str, toxicity: float, attributes: dict[str, Any]) -> dict[str, float]:
    if type not in TOXIC_ATTRIBUTES:
        raise ValueError(f"unknown toxic type {type!r}; known: {sorted(TOXIC_ATTRIBUTES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    if not 0.0 <= toxicity <= 1.0:
        raise ValueError(f"toxicity must be within 0..1, not {toxicity!r}")
    schema = TOXIC_ATTRIBUTES[type]
    unknown = set(attributes) - set(schema)
    if unknown:
        raise TypeError(f"{type} toxic has no attribute(s) {sorted(unknown)}; it takes {sorted(schema)}")
    values = {}
    for key, default in schema.items():
        value = attributes.get(key, default)
        if value is _REQUIRED:
            raise TypeError(f"{type} toxic needs the attribute {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{type}.{key} must be a number >= 0, not {value!r}")
        values[key] = value
    if type == "bandwidth" and values["rate_kbps"] <= 0:
        raise ValueError("bandwidth.rate_kbps must be > 0 (remove the toxic for no limit)")
    if type == "slicer" and values["average_size"] < 1:
        raise ValueError("slicer.average_size must be >= 1")
    return values


class ChaosProxy:
    """A TCP proxy to one upstream, with toxics (see the module docstring)."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.port = listen_port  # the bound port once serving (0 asks for any)
        self.seed = seed
        self._rng = random.Random(seed)  # toxicity draws only, in a fixed order
        self._toxics: dict[str, Toxic] = {}  # insertion order = application order
        self._next_uid = 0
        self._conns: dict[int, _Conn] = {}
        self._next_conn_id = 0
        self._stats = ProxyStats()
        self._nursery: trio.Nursery | None = None
        self._listener: tuple[trio.SocketListener, trio.CancelScope] | None = None
        # Set and replaced on every toxic change; waiters that depend on the
        # toxic list (timers, a blackholed EOF) wake on it and look again.
        self._changed = trio.Event()

    # ------------------------------------------------------------------ serving

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the port with ``task_status.started(port)`` and proxy
        connections until cancelled.  All tasks live in this call's nursery."""
        if self._nursery is not None:
            raise RuntimeError("this ChaosProxy is already serving")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._open_listener()
                task_status.started(self.port)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._listener = None

    def _open_listener(self) -> None:
        # A plain socket, bound synchronously, so that enable() can rebind the
        # same port (SO_REUSEADDR: our closed connections sit in TIME_WAIT on
        # it) and report a bind error to its caller at once.
        family, type_, proto, _, addr = socket.getaddrinfo(
            self.listen_host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        scope = trio.CancelScope()
        self._listener = (listener, scope)
        assert self._nursery is not None
        self._nursery.start_soon(self._accept_loop, listener, scope)

    async def _accept_loop(self, listener: trio.SocketListener, scope: trio.CancelScope) -> None:
        with scope:
            try:
                while True:
                    self._admit(await listener.accept())
            except (trio.ClosedResourceError, OSError):
                return  # disable() closed the listener under us
            finally:
                listener.socket.close()

    def _admit(self, client: trio.SocketStream) -> None:
        conn = _Conn(self._next_conn_id, client, random.Random(f"{self.seed}:{self._next_conn_id}"))
        self._next_conn_id += 1
        self._stats.connections_accepted += 1
        # Draw here, in accept order, so a seed gives the same pattern each run.
        for toxic in self._toxics.values():
            self._draw(conn, toxic)
        self._conns[conn.id] = conn
        assert self._nursery is not None
        self._nursery.start_soon(self._handle, conn)

    def _draw(self, conn: _Conn, toxic: Toxic) -> None:
        if self._rng.random() < toxic.toxicity:
            conn.applied[toxic.uid] = _Applied(since=trio.current_time())

    async def _handle(self, conn: _Conn) -> None:
        self._stats.connections_active += 1
        try:
            with conn.scope:
                conn.server = await self._connect_upstream()
                if conn.server is None:
                    return  # upstream down: the client just sees its connection close
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guarded, conn, self._run_timers, conn)
                    async with trio.open_nursery() as pumps:
                        pumps.start_soon(self._pump, conn, "upstream", conn.client, conn.server)
                        pumps.start_soon(self._pump, conn, "downstream", conn.server, conn.client)
                    nursery.cancel_scope.cancel()  # both directions ended: stop the timers
        finally:
            conn.close()
            del self._conns[conn.id]
            self._stats.connections_active -= 1

    async def _connect_upstream(self) -> trio.SocketStream | None:
        with trio.move_on_after(UPSTREAM_CONNECT_TIMEOUT):
            try:
                return await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
            except OSError:
                return None
        return None

    async def _guarded(self, conn: _Conn, fn: Callable[..., Any], *args: Any) -> None:
        """Run a per-connection task; a socket error anywhere ends the whole
        connection (as in toxiproxy) instead of crashing the proxy."""
        try:
            await fn(*args)
        except _STREAM_ERRORS:
            conn.close()

    # -------------------------------------------------------------------- pumps

    async def _pump(self, conn: _Conn, direction: str, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        """One direction of a connection: a reader feeding a writer through a
        small buffer, so a chunk waiting out its latency does not stall reads."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](PIPELINE_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._guarded, conn, self._read, src, send)
            nursery.start_soon(self._guarded, conn, self._write, conn, direction, receive, dst)

    async def _read(self, src: trio.SocketStream, chunks: trio.MemorySendChannel[tuple[float, bytes]]) -> None:
        while True:
            data = await src.receive_some(CHUNK_SIZE)
            if not data:
                chunks.close()  # end of stream: the writer forwards the EOF
                return
            await chunks.send((trio.current_time(), data))

    async def _write(
        self,
        conn: _Conn,
        direction: str,
        chunks: trio.MemoryReceiveChannel[tuple[float, bytes]],
        dst: trio.SocketStream,
    ) -> None:
        async for read_at, data in chunks:
            await self._deliver(conn, direction, read_at, data, dst)
        await self._deliver_eof(conn, direction, dst)

    def _active(self, conn: _Conn, direction: str) -> dict[str, list[Toxic]]:
        """The toxics applying to this connection and direction, by type."""
        active: dict[str, list[Toxic]] = defaultdict(list)
        for toxic in self._toxics.values():
            if toxic.direction == direction and toxic.uid in conn.applied:
                active[toxic.type].append(toxic)
        return active

    async def _deliver(self, conn: _Conn, direction: str, read_at: float, data: bytes, dst: trio.SocketStream) -> None:
        toxics = self._active(conn, direction)
        if toxics["timeout"]:
            # Blackhole: keep reading (the sender is not blocked) but drop it.
            self._stats.bytes_dropped += len(data)
            return
        data, limit_reached = self._apply_limit(conn, toxics["limit_data"], data)
        await self._apply_latency(conn, toxics["latency"], read_at)
        await self._send_paced(conn, direction, data, dst, toxics["slicer"], toxics["bandwidth"])
        if limit_reached:
            conn.close()

    async def _deliver_eof(self, conn: _Conn, direction: str, dst: trio.SocketStream) -> None:
        # A FIN does not get through a blackhole either: hold it until the
        # timeout toxic is removed (or its timer closes the connection).
        while True:
            changed = self._changed
            if not self._active(conn, direction)["timeout"]:
                break
            await changed.wait()
        slow_close = self._active(conn, direction)["slow_close"]
        if slow_close:
            delay_ms = max(t.attributes["delay_ms"] for t in slow_close)
            self._stats.close_delay_ms += delay_ms
            await trio.sleep(delay_ms / 1000)
        # Half-close: the other direction may still be flowing.
        await dst.send_eof()

    # ---------------------------------------------------------- one per toxic

    def _apply_limit(self, conn: _Conn, limits: list[Toxic], data: bytes) -> tuple[bytes, bool]:
        """limit_data: cut the chunk at the limit; True if the limit is reached."""
        reached = False
        for toxic in limits:
            allowed = max(0, int(toxic.attributes["bytes"]) - conn.applied[toxic.uid].passed)
            if len(data) >= allowed:
                data, reached = data[:allowed], True
        for toxic in limits:
            conn.applied[toxic.uid].passed += len(data)
        return data, reached

    async def _apply_latency(self, conn: _Conn, latencies: list[Toxic], read_at: float) -> None:
        """latency: deliver the chunk latency +- jitter after it was read."""
        delay_ms = 0.0
        for toxic in latencies:
            jitter = toxic.attributes["jitter_ms"]
            delay_ms += toxic.attributes["latency_ms"] + conn.rng.uniform(-jitter, jitter)
        if delay_ms > 0:
            self._stats.delayed_chunks += 1
            self._stats.latency_ms += delay_ms
            await trio.sleep_until(read_at + delay_ms / 1000)

    def _slice(self, conn: _Conn, slicers: list[Toxic], data: bytes) -> list[bytes]:
        """slicer: split into pieces of average_size +- size_variation bytes."""
        pieces = [data]
        for toxic in slicers:
            average = int(toxic.attributes["average_size"])
            variation = int(toxic.attributes["size_variation"])
            sliced = []
            for piece in pieces:
                start = 0
                while start < len(piece):
                    size = max(1, average + conn.rng.randint(-variation, variation))
                    sliced.append(piece[start : start + size])
                    start += size
            pieces = sliced
        return pieces

    async def _send_paced(
        self,
        conn: _Conn,
        direction: str,
        data: bytes,
        dst: trio.SocketStream,
        slicers: list[Toxic],
        bandwidths: list[Toxic],
    ) -> None:
        pieces = self._slice(conn, slicers, data) if data else []
        gap = max((t.attributes["delay_us"] for t in slicers), default=0) / 1e6
        # bandwidth: the slowest limit wins; sleep in proportion to each piece.
        rate = min((t.attributes["rate_kbps"] * 1000 for t in bandwidths), default=None)
        if rate is not None:
            most = max(1, int(rate * BANDWIDTH_PIECE_SECONDS))
            pieces = [p[i : i + most] for p in pieces for i in range(0, len(p), most)]
        for index, piece in enumerate(pieces):
            if index and gap:
                await trio.sleep(gap)
            if rate is not None:
                self._stats.paced_ms += len(piece) / rate * 1000
                await trio.sleep(len(piece) / rate)
            await dst.send_all(piece)
            self._count(direction, len(piece))

    def _count(self, direction: str, nbytes: int) -> None:
        if direction == "upstream":
            self._stats.bytes_upstream += nbytes
            self._stats.writes_upstream += 1
        else:
            self._stats.bytes_downstream += nbytes
            self._stats.writes_downstream += 1

    async def _run_timers(self, conn: _Conn) -> None:
        """timeout (> 0) and reset_peer: end the connection timeout_ms after the
        toxic started applying to it, unless the toxic is removed first."""
        while True:
            changed = self._changed
            deadline, rst, after = self._next_timer(conn)
            with trio.move_on_at(deadline) as scope:
                await changed.wait()  # the toxics changed: recompute
            if scope.cancelled_caught:
                self._stats.timer_closes += 1
                self._stats.timer_ms += after * 1000
                conn.close(rst=rst)
                return

    def _next_timer(self, conn: _Conn) -> tuple[float, bool, float]:
        """(deadline, reset?, its timeout in seconds) of the connection's earliest timer, or (inf, False, 0)."""
        earliest = (math.inf, False, 0.0)
        for toxic in self._toxics.values():
            state = conn.applied.get(toxic.uid)
            if state is None:
                continue
            timeout_s = toxic.attributes.get("timeout_ms", 0) / 1000
            if toxic.type == "reset_peer":
                earliest = min(earliest, (state.since + timeout_s, True, timeout_s))
            elif toxic.type == "timeout" and timeout_s > 0:
                earliest = min(earliest, (state.since + timeout_s, False, timeout_s))
        return earliest

    # ------------------------------------------------------------------ control
    # Synchronous; call them from the proxy's trio thread (ProxyThread does).

    def add_toxic(
        self,
        name: str,
        type: str,
        direction: str = "downstream",
        toxicity: float = 1.0,
        **attributes: Any,
    ) -> dict[str, Any]:
        """Add a toxic; it applies to new connections and, drawn now with its
        toxicity, to the open ones.  Types and attributes (times in ms unless
        named otherwise):

        * latency(latency_ms, jitter_ms=0): each chunk is delivered
          latency +- uniform jitter after it was read.
        * bandwidth(rate_kbps): at most rate_kbps * 1000 bytes per second.
        * slow_close(delay_ms): the EOF is passed on delay_ms late.
        * timeout(timeout_ms=0): data (and EOF) is read and dropped; if
          timeout_ms > 0 the connection is closed that long after the toxic
          started applying; with 0 it stays open until the toxic is removed,
          after which data flows again.
        * reset_peer(timeout_ms=0): both sockets are closed with a TCP RST
          timeout_ms after the toxic started applying (0: at once).
        * slicer(average_size, size_variation=0, delay_us=0): data is sent in
          pieces of average_size +- size_variation bytes, delay_us apart.
        * limit_data(bytes): the connection is closed once that many bytes have
          passed in the toxic's direction since it started applying.
        """
        if name in self._toxics:
            raise ValueError(f"a toxic named {name!r} already exists")
        values = _validate(type, direction, toxicity, attributes)
        toxic = Toxic(name, type, direction, float(toxicity), values, self._next_uid)
        self._next_uid += 1
        self._toxics[name] = toxic
        for conn in list(self._conns.values()):  # accept order: reproducible
            self._draw(conn, toxic)
        self._notify()
        return toxic.as_dict()

    def remove_toxic(self, name: str) -> None:
        toxic = self._toxics.pop(name)  # KeyError for an unknown name
        for conn in self._conns.values():
            conn.applied.pop(toxic.uid, None)
        self._notify()

    def toxics(self) -> list[dict[str, Any]]:
        return [t.as_dict() for t in self._toxics.values()]

    @property
    def enabled(self) -> bool:
        return self._listener is not None

    def disable(self) -> None:
        """Take the proxy down: close the listener (new connections are
        refused) and every open connection."""
        if self._listener is not None:
            listener, scope = self._listener
            self._listener = None
            scope.cancel()
            listener.socket.close()  # now, not when the accept task next runs
        for conn in list(self._conns.values()):
            conn.close()

    def enable(self) -> None:
        """Listen again, on the same port."""
        if self._nursery is None:
            raise RuntimeError("the proxy is not serving")
        if self._listener is None:
            self._open_listener()

    def reset(self) -> None:
        """Remove every toxic and enable the proxy."""
        for name in list(self._toxics):
            self.remove_toxic(name)
        self.enable()

    def stats(self) -> dict[str, float]:
        return asdict(self._stats)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class ProxyThread:
    """A ChaosProxy running in a background thread with its own trio loop.

    Control methods are thread-safe: each runs on the proxy's loop through
    ``trio.from_thread.run_sync``.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
        timeout: float = 10.0,
    ) -> None:
        self.proxy = ChaosProxy(
            upstream_host, upstream_port, listen_host=listen_host, listen_port=listen_port, seed=seed
        )
        self.host = listen_host
        self.port: int = 0
        self._timeout = timeout  # bound on start-up and on joining the thread
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> ProxyThread:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name=f"chaos-proxy-{self.proxy.upstream_port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout):
            raise RuntimeError("chaos proxy did not start in time")
        if self._error is not None:
            self._thread.join(self._timeout)
            raise RuntimeError("chaos proxy failed to start") from self._error
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to start(); the thread just ends
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                self.port = await nursery.start(self.proxy.serve)
                self._ready.set()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._scope is not None and self._token is not None:
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        thread.join(self._timeout)
        if thread.is_alive():
            raise RuntimeError("chaos proxy thread did not stop in time")

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._token is None:
            raise RuntimeError("the proxy thread is not running")
        return trio.from_thread.run_sync(functools.partial(fn, *args, **kwargs), trio_token=self._token)

    def add_toxic(
        self, name: str, type: str, direction: str = "downstream", toxicity: float = 1.0, **attributes: Any
    ) -> dict[str, Any]:
        return self._call(self.proxy.add_toxic, name, type, direction, toxicity, **attributes)

    def remove_toxic(self, name: str) -> None:
        self._call(self.proxy.remove_toxic, name)

    def toxics(self) -> list[dict[str, Any]]:
        return self._call(self.proxy.toxics)

    def disable(self) -> None:
        self._call(self.proxy.disable)

    def enable(self) -> None:
        self._call(self.proxy.enable)

    def reset(self) -> None:
        self._call(self.proxy.reset)

    def stats(self) -> dict[str, float]:
        return self._call(self.proxy.stats)

    @property
    def enabled(self) -> bool:
        return self._call(lambda: self.proxy.enabled)
