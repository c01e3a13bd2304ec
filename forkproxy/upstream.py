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
  own idle timeouts so the backend is rarely the one to close first.
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
    __slots__ = ("sock", "fd", "name", "addr_text", "requests", "reused", "timer", "idle_since", "_pools")

    def __init__(self, sock: socket.socket, name: str, addr_text: str, pools: UpstreamPools) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.addr_text = addr_text
        self.requests = 0
        self.reused = False
        self.timer: Timer | None = None
        self.idle_since = 0.0
        self._pools = pools

    def close(self) -> None:
        self._leave_loop()
        self.sock.close()

    def abort(self) -> None:
        self._leave_loop()
        netio.abort(self.sock)

    def _leave_loop(self) -> None:
        loop = self._pools.loop
        loop.remove(self.fd)
        if self.timer is not None:
            loop.disarm(self.timer)  # the wheel lets go of this connection at once

    # while idle in a pool
    def _on_idle_event(self, events: int) -> None:
        self._pools.discard(self)

    def _on_idle_timeout(self) -> None:
        self._pools.discard(self)


class UpstreamPools:
    """Per-worker idle pools and round-robin choice, one pool per upstream name."""

    __slots__ = ("loop", "_idle", "_next")

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self._idle: dict[str, list[UpstreamConn]] = {}
        self._next: dict[str, int] = {}

    def acquire(self, upstream: Upstream) -> UpstreamConn | None:
        """A pooled connection that still looks open, or None.

        It stays registered in the loop (mask IN); the caller swaps in its handler."""
        idle = self._idle.get(upstream.name)
        while idle:
            conn = idle.pop()
            if conn.timer is not None:
                conn.timer.deadline = None  # the wheel skips it; release() re-arms it in place
            if self.loop.now - conn.idle_since > PEEK_AFTER and netio.peer_closed(conn.sock):
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
        idle = self._idle.setdefault(upstream.name, [])
        if len(idle) >= upstream.keepalive:
            self.discard(idle[0])
        loop = self.loop
        loop.set_handler(conn.fd, conn._on_idle_event)
        loop.modify(conn.fd, IN)
        if conn.timer is None:
            conn.timer = Timer(conn._on_idle_timeout)
        loop.arm(conn.timer, loop.now + upstream.keepalive_timeout)
        conn.idle_since = loop.now
        idle.append(conn)

    def discard(self, conn: UpstreamConn) -> None:
        idle = self._idle.get(conn.name)
        if idle and conn in idle:
            idle.remove(conn)
        conn.close()

    def close_all(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                self.discard(conn)
