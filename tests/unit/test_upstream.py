"""The upstream keep-alive pool: what acquire hands out (real loopback sockets)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from forkproxy.loop import EventLoop
from forkproxy.upstream import PEEK_AFTER, UpstreamConn, UpstreamPools


def _pooled(pools: UpstreamPools, upstream: SimpleNamespace) -> tuple[UpstreamConn, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setblocking(False)
    conn = UpstreamConn(client, upstream.name, "127.0.0.1:0", pools)
    pools.loop.add(conn.fd, 0, lambda events: None)
    pools.release(conn, upstream)  # type: ignore[arg-type]
    return conn, server


def test_a_connection_idle_longer_than_peek_after_is_checked_before_reuse() -> None:
    loop = EventLoop()
    pools = UpstreamPools(loop)
    upstream = SimpleNamespace(name="app", keepalive=4, keepalive_requests=100, keepalive_timeout=60.0)
    conn, backend = _pooled(pools, upstream)
    backend.close()  # the backend's FIN arrives; the loop has not seen it yet
    loop.now += PEEK_AFTER + 0.1
    assert pools.acquire(upstream) is None  # type: ignore[arg-type]
    assert not loop.watching(conn.fd) and conn.sock.fileno() == -1

    fresh, backend = _pooled(pools, upstream)
    loop.now += PEEK_AFTER + 0.1
    assert pools.acquire(upstream) is fresh  # type: ignore[arg-type]  # open: handed out, marked reused
    assert fresh.reused
    fresh.close()
    backend.close()
    loop.close()


def test_a_connection_just_released_is_handed_out_without_a_syscall() -> None:
    # Under load a connection idles for milliseconds: no MSG_PEEK. A FIN that raced in is
    # the retry's business (an idempotent request is replayed once on a fresh connection).
    loop = EventLoop()
    pools = UpstreamPools(loop)
    upstream = SimpleNamespace(name="app", keepalive=4, keepalive_requests=100, keepalive_timeout=60.0)
    conn, backend = _pooled(pools, upstream)
    backend.close()
    assert pools.acquire(upstream) is conn  # type: ignore[arg-type]
    conn.close()
    loop.close()


def test_idle_connections_expire_oldest_first_and_the_pool_is_bounded() -> None:
    loop = EventLoop()
    pools = UpstreamPools(loop)
    upstream = SimpleNamespace(name="app", keepalive=2, keepalive_requests=100, keepalive_timeout=10.0)
    start = loop.now
    first, b1 = _pooled(pools, upstream)
    loop.now = start + 4
    second, b2 = _pooled(pools, upstream)
    loop.now = start + 6
    third, b3 = _pooled(pools, upstream)  # over keepalive = 2: the oldest goes
    assert first.sock.fileno() == -1 and not loop.watching(first.fd)
    assert second.sock.fileno() != -1 and third.sock.fileno() != -1

    loop.now = start + 15  # second's 10 s are up (it idled since 4), third's are not
    loop._run_timers()
    assert second.sock.fileno() == -1 and third.sock.fileno() != -1
    loop.now = start + 16.5
    loop._run_timers()
    assert third.sock.fileno() == -1
    assert pools.acquire(upstream) is None  # type: ignore[arg-type]

    again, b4 = _pooled(pools, upstream)  # an emptied pool arms its timer again
    loop.now += 10.5
    loop._run_timers()
    assert again.sock.fileno() == -1
    for s in (b1, b2, b3, b4):
        s.close()
    loop.close()


def test_a_connection_taken_and_returned_keeps_its_place_by_age() -> None:
    loop = EventLoop()
    pools = UpstreamPools(loop)
    upstream = SimpleNamespace(name="app", keepalive=4, keepalive_requests=100, keepalive_timeout=10.0)
    start = loop.now
    old, b1 = _pooled(pools, upstream)
    loop.now = start + 5
    busy, b2 = _pooled(pools, upstream)
    assert pools.acquire(upstream) is busy  # type: ignore[arg-type]  # LIFO: the newest
    loop.now = start + 9
    pools.release(busy, upstream)  # type: ignore[arg-type]  # idle again since 9
    loop.now = start + 12
    loop._run_timers()
    assert old.sock.fileno() == -1 and busy.sock.fileno() != -1
    loop.now = start + 19.5
    loop._run_timers()
    assert busy.sock.fileno() == -1
    pools.close_all()
    b1.close()
    b2.close()
    loop.close()
