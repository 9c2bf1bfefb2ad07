"""Tests for the trio chaos proxy (musicfs_test_utils.chaos_proxy).

Upstream is a small threaded loopback server; clients are plain blocking
sockets.  Waits are bounded by socket timeouts and queue/event timeouts, never
by sleeping.  Timing assertions are lower bounds only.
"""

from __future__ import annotations

import queue
import random
import socket
import threading

import pytest
import trio

from musicfs_test_utils.chaos_proxy import ChaosProxy, ProxyThread

MB = 1 << 20
TIMEOUT = 5.0  # bound on every blocking socket call


class Upstream:
    """A loopback TCP server: sends ``greeting`` on connect, then echoes (or,
    with ``echo=False``, only records) until EOF.  Each connection's received
    bytes are put on ``finished`` when it ends."""

    def __init__(self, *, greeting: bytes = b"", echo: bool = True, close_after_greeting: bool = False):
        self.greeting = greeting
        self.echo = echo
        self.close_after_greeting = close_after_greeting
        self.finished: queue.Queue[bytes] = queue.Queue()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by close()
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        received = bytearray()
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                conn.sendall(self.greeting)
                if self.close_after_greeting:
                    return
                while data := conn.recv(65536):
                    received += data
                    if self.echo:
                        conn.sendall(data)
            except OSError:
                pass
            finally:
                self.finished.put(bytes(received))

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        for thread in self._threads:
            thread.join(TIMEOUT)


@pytest.fixture
def echo():
    server = Upstream()
    yield server
    server.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(65536, n - len(buf)))
        if not data:
            break
        buf += data
    return bytes(buf)


def recv_until_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while data := sock.recv(65536):
        buf += data
    return bytes(buf)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload))


def echo_1mb(port: int) -> bytes:
    """Send 1 MB through the echo server while reading it back; half-close and
    expect the EOF to come back through the proxy too."""
    payload = random.Random(1).randbytes(MB)
    with connect(port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        back = recv_exactly(sock, MB)
        sender.join(TIMEOUT)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""
    assert back == payload
    return back


# ------------------------------------------------------------------ trio core


async def test_trio_core_passes_1mb_both_ways(echo):
    proxy = ChaosProxy("127.0.0.1", echo.port)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        assert port == proxy.port != 0
        await trio.to_thread.run_sync(echo_1mb, port)
        nursery.cancel_scope.cancel()
    stats = proxy.stats()
    assert stats["connections_accepted"] == 1
    assert stats["bytes_upstream"] == MB
    assert stats["bytes_downstream"] == MB
    assert stats["connections_active"] == 0


async def test_trio_core_shutdown_with_open_blackholed_connection(echo):
    proxy = ChaosProxy("127.0.0.1", echo.port)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(proxy.serve)
            proxy.add_toxic("hole", "timeout", timeout_ms=0)
            sock = await trio.to_thread.run_sync(connect, port)
            with sock:
                await trio.to_thread.run_sync(sock.sendall, b"lost")
                nursery.cancel_scope.cancel()  # must not hang on the held connection


# ------------------------------------------------------------- ProxyThread


def test_pass_through_1mb_via_thread(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        echo_1mb(proxy.port)
        stats = proxy.stats()
    assert stats["bytes_upstream"] == stats["bytes_downstream"] == MB


def test_toxic_listing_and_validation(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        proxy.add_toxic("slow", "latency", latency_ms=10)
        proxy.add_toxic("cap", "limit_data", direction="upstream", toxicity=0.5, bytes=10)
        assert proxy.toxics() == [
            {"name": "slow", "type": "latency", "direction": "downstream", "toxicity": 1.0,
             "attributes": {"latency_ms": 10, "jitter_ms": 0}},
            {"name": "cap", "type": "limit_data", "direction": "upstream", "toxicity": 0.5,
             "attributes": {"bytes": 10}},
        ]
        with pytest.raises(ValueError):
            proxy.add_toxic("slow", "latency", latency_ms=1)  # duplicate name
        with pytest.raises(ValueError):
            proxy.add_toxic("x", "nonsense")
        with pytest.raises(ValueError):
            proxy.add_toxic("x", "latency", direction="sideways", latency_ms=1)
        with pytest.raises(TypeError):
            proxy.add_toxic("x", "latency")  # latency_ms is required
        with pytest.raises(TypeError):
            proxy.add_toxic("x", "bandwidth", rate=5)  # wrong attribute name
        with pytest.raises(KeyError):
            proxy.remove_toxic("nope")
        proxy.reset()
        assert proxy.toxics() == []
        with connect(proxy.port) as sock:
            assert roundtrip(sock) == b"ping"


def test_latency_delays_new_and_existing_connections(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        with connect(proxy.port) as existing:
            assert roundtrip(existing) == b"ping"
            proxy.add_toxic("slow", "latency", latency_ms=200, jitter_ms=20)
            assert roundtrip(existing) == b"ping"
            held = proxy.stats()
            assert held["delayed_chunks"] == 1 and 180 <= held["latency_ms"] <= 220  # the echo, held 200 +- 20 ms
        with connect(proxy.port) as fresh:
            assert roundtrip(fresh) == b"ping"
            held = proxy.stats()
            assert held["delayed_chunks"] == 2 and 360 <= held["latency_ms"] <= 440
        proxy.remove_toxic("slow")


def test_latency_upstream_direction(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        proxy.add_toxic("slow-up", "latency", direction="upstream", latency_ms=150)
        with connect(proxy.port) as sock:
            assert roundtrip(sock) == b"ping"
            held = proxy.stats()
            assert (held["delayed_chunks"], held["latency_ms"]) == (1, 150)  # the ping, on its way up


def test_bandwidth_throttles():
    payload = random.Random(2).randbytes(MB)
    server = Upstream(greeting=payload)
    try:
        with ProxyThread("127.0.0.1", server.port) as proxy:
            proxy.add_toxic("thin", "bandwidth", rate_kbps=2000)
            with connect(proxy.port) as sock:
                assert recv_exactly(sock, MB) == payload
            assert proxy.stats()["paced_ms"] == pytest.approx(MB / 2_000_000 * 1000)  # 1 MiB at 2000 KB/s
    finally:
        server.close()


def test_timeout_zero_blackholes_until_removed(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        with connect(proxy.port) as sock:
            proxy.add_toxic("hole", "timeout", timeout_ms=0)
            sock.sendall(b"ping")
            sock.settimeout(0.3)
            with pytest.raises(socket.timeout):
                sock.recv(100)
            assert proxy.stats()["bytes_dropped"] == 4  # the echo was swallowed
            proxy.remove_toxic("hole")
            sock.settimeout(TIMEOUT)
            assert roundtrip(sock, b"pong") == b"pong"  # flows again, "ping" stays lost


def test_timeout_closes_connection_after_delay(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        proxy.add_toxic("cut", "timeout", timeout_ms=500)
        with connect(proxy.port) as sock:
            sock.sendall(b"ping")
            assert sock.recv(100) == b""  # nothing got through, then EOF
        fired = proxy.stats()
        assert (fired["timer_closes"], fired["timer_ms"], fired["bytes_dropped"]) == (1, 500, 4)


def test_reset_peer_on_accept(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        proxy.add_toxic("rst", "reset_peer")
        # The RST may beat connect() itself (it reports SO_ERROR), or hit recv.
        with pytest.raises(ConnectionResetError):
            with connect(proxy.port) as sock:
                sock.recv(100)


def test_reset_peer_added_to_existing_connection(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        with connect(proxy.port) as sock:
            assert roundtrip(sock) == b"ping"
            proxy.add_toxic("rst", "reset_peer", timeout_ms=100)
            with pytest.raises(ConnectionResetError):
                sock.recv(100)


def test_slicer_delivers_identical_data_in_pieces():
    payload = random.Random(3).randbytes(20_000)
    server = Upstream(greeting=payload)
    try:
        with ProxyThread("127.0.0.1", server.port) as proxy:
            proxy.add_toxic("slices", "slicer", average_size=500, size_variation=200, delay_us=100)
            with connect(proxy.port) as sock:
                assert recv_exactly(sock, len(payload)) == payload
            assert proxy.stats()["writes_downstream"] >= 20_000 // 700
    finally:
        server.close()


def test_limit_data_downstream_gives_exact_bytes_then_eof():
    payload = random.Random(4).randbytes(5000)
    server = Upstream(greeting=payload)
    try:
        with ProxyThread("127.0.0.1", server.port) as proxy:
            proxy.add_toxic("cap", "limit_data", bytes=1000)
            with connect(proxy.port) as sock:
                assert recv_until_eof(sock) == payload[:1000]
    finally:
        server.close()


def test_limit_data_upstream_limits_what_server_receives():
    server = Upstream(echo=False)
    payload = random.Random(5).randbytes(5000)
    try:
        with ProxyThread("127.0.0.1", server.port) as proxy:
            proxy.add_toxic("cap", "limit_data", direction="upstream", bytes=1000)
            with connect(proxy.port) as sock:
                sock.sendall(payload)
                try:
                    assert sock.recv(100) == b""
                except ConnectionResetError:
                    pass  # also fine: the proxy closed with our bytes unread
            assert server.finished.get(timeout=TIMEOUT) == payload[:1000]
    finally:
        server.close()


def test_slow_close_delays_eof():
    server = Upstream(greeting=b"bye", close_after_greeting=True)
    try:
        with ProxyThread("127.0.0.1", server.port) as proxy:
            proxy.add_toxic("lingering", "slow_close", delay_ms=300)
            with connect(proxy.port) as sock:
                assert recv_until_eof(sock) == b"bye"
            assert proxy.stats()["close_delay_ms"] == 300
    finally:
        server.close()


def test_disable_refuses_and_drops_then_enable_on_same_port(echo):
    with ProxyThread("127.0.0.1", echo.port) as proxy:
        port = proxy.port
        with connect(port) as existing:
            assert roundtrip(existing) == b"ping"
            proxy.disable()
            assert not proxy.enabled
            try:
                assert existing.recv(100) == b""
            except ConnectionResetError:
                pass
        with pytest.raises(ConnectionRefusedError):
            connect(port)
        proxy.enable()
        assert proxy.enabled and proxy.port == port
        with connect(port) as fresh:
            assert roundtrip(fresh) == b"ping"
        proxy.disable()
        proxy.reset()  # reset also re-enables
        with connect(port) as fresh:
            assert roundtrip(fresh) == b"ping"


def _reset_pattern(upstream_port: int, seed: int, n: int = 40) -> list[bool]:
    """Which of n sequential connections a 50% reset_peer hit."""
    pattern = []
    with ProxyThread("127.0.0.1", upstream_port, seed=seed) as proxy:
        proxy.add_toxic("flaky", "reset_peer", toxicity=0.5)
        for _ in range(n):
            try:  # a reset at accept may surface in connect() already
                with connect(proxy.port) as sock:
                    hit = roundtrip(sock, b"x") != b"x"
            except ConnectionError:
                hit = True
            pattern.append(hit)
        assert proxy.stats()["connections_accepted"] == n
    return pattern


def test_toxicity_is_partial_and_reproducible_with_seed(echo):
    first = _reset_pattern(echo.port, seed=7)
    assert 0 < sum(first) < len(first)
    assert _reset_pattern(echo.port, seed=7) == first


def test_exit_stops_thread_promptly(echo):
    proxy = ProxyThread("127.0.0.1", echo.port)
    with proxy:
        proxy.add_toxic("hole", "timeout", timeout_ms=0)
        sock = connect(proxy.port)
        sock.sendall(b"held")
        thread = proxy._thread
    sock.close()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy.port)


def test_unreachable_upstream_closes_client():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]  # closed again below: refuses
    with ProxyThread("127.0.0.1", dead_port) as proxy:
        with connect(proxy.port) as sock:
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
        assert proxy.stats()["bytes_upstream"] == 0
