"""Upstream connections: choosing a server, connecting, and the keep-alive pools (layer 3).

Invariants:
- A connection enters a pool only after a complete request and a complete,
  length-delimited response without `Connection: close` (the caller decides that).
- An idle pooled connection stays registered for readability: EOF or any byte the
  backend sends while idle closes it at once, so a pool never hands out a socket the
  backend already closed when the kernel knows it. `acquire` checks again with
  MSG_PEEK when the connection idled longer than PEEK_AFTER: a backend's idle close
  comes after seconds, so a FIN that arrived since the last epoll_wait is possible
  then; under load connections idle for milliseconds and skip that syscall.
- Idle connections expire after `keepalive_timeout`, chosen below common backends'
  own idle timeouts so the backend is rarely the one to close first. One timer per pool
  follows its oldest connection (the front of the list), so taking and returning a
  connection touches no timer.
- At most `keepalive` idle connections per upstream and worker; the oldest goes first.
  Reuse is LIFO: the most recently used socket is the least likely to be stale.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from . import netio
from .loop import IN, EventLoop, Timer

PEEK_AFTER = 0.5  # seconds idle after which acquire re-checks the socket with MSG_PEEK

if TYPE_CHECKING:
    from .config import Upstream


class UpstreamConn:
    __slots__ = ("sock", "fd", "name", "addr_text", "requests", "reused", "idle_since", "_pools")

    def __init__(self, sock: socket.socket, name: str, addr_text: str, pools: UpstreamPools) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.addr_text = addr_text
        self.requests = 0
        self.reused = False
        self.idle_since = 0.0
        self._pools = pools

    def close(self) -> None:
        self._leave_loop()
        self.sock.close()

    def abort(self) -> None:
        self._leave_loop()
        netio.abort(self.sock)

    def _leave_loop(self) -> None:
        self._pools.loop.remove(self.fd)

    def _on_idle_event(self, events: int) -> None:
        """EOF, an error or unexpected bytes while idle in a pool: close it."""
        self._pools.discard(self)


class _Pool:
    """The idle connections to one upstream, oldest first, and the timer of the oldest."""

    __slots__ = ("idle", "timer", "upstream", "_loop")

    def __init__(self, upstream: Upstream, loop: EventLoop) -> None:
        self.idle: list[UpstreamConn] = []
        self.upstream = upstream
        self.timer = Timer(self._expire)
        self._loop = loop

    def _expire(self) -> None:
        idle = self.idle
        timeout = self.upstream.keepalive_timeout
        now = self._loop.now
        while idle and idle[0].idle_since + timeout <= now:
            idle.pop(0).close()
        if idle:
            self._loop.arm(self.timer, idle[0].idle_since + timeout)


class UpstreamPools:
    """Per-worker idle pools and round-robin choice, one pool per upstream name."""

    __slots__ = ("loop", "_pools", "_next")

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self._pools: dict[str, _Pool] = {}
        self._next: dict[str, int] = {}

    def acquire(self, upstream: Upstream) -> UpstreamConn | None:
        """A pooled connection that still looks open, or None.

        It stays registered in the loop (mask IN); the caller swaps in its handler."""
        pool = self._pools.get(upstream.name)
        if pool is None:
            return None
        idle = pool.idle
        while idle:
            conn = idle.pop()
            if self.loop.now - conn.idle_since > PEEK_AFTER and netio.input_pending(conn.sock):  # EOF, or bytes nobody asked for
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def connect(self, upstream: Upstream, skip: int = 0) -> UpstreamConn:
        """Start a connect to the next server in round-robin order (raises OSError)."""
        servers = upstream.servers
        i = self._next.get(upstream.name, 0)
        self._next[upstream.name] = i + 1
        host, port = servers[(i + skip) % len(servers)]
        sock = netio.start_connect(host, port)
        return UpstreamConn(sock, upstream.name, f"{host}:{port}", self)

    def release(self, conn: UpstreamConn, upstream: Upstream) -> None:
        """Keep a connection that just finished a clean exchange, or close it."""
        if upstream.keepalive <= 0 or conn.requests >= upstream.keepalive_requests:
            conn.close()
            return
        loop = self.loop
        pool = self._pools.get(upstream.name)
        if pool is None:
            pool = self._pools[upstream.name] = _Pool(upstream, loop)
        idle = pool.idle
        if len(idle) >= upstream.keepalive:
            idle.pop(0).close()
        loop.set_handler(conn.fd, conn._on_idle_event)
        loop.modify(conn.fd, IN)
        conn.idle_since = now = loop.now
        idle.append(conn)
        if pool.timer.deadline is None:
            loop.arm(pool.timer, now + upstream.keepalive_timeout)

    def discard(self, conn: UpstreamConn) -> None:
        pool = self._pools.get(conn.name)
        if pool is not None and conn in pool.idle:
            pool.idle.remove(conn)
        conn.close()

    def close_all(self) -> None:
        for pool in self._pools.values():
            self.loop.disarm(pool.timer)
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()
