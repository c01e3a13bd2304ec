"""HTTP/1.1 load from raw sockets: an open-loop generator and a careful reload client.

`open_loop` sends on a schedule (request k of this process is due at t0 + k/rate) over a
fixed set of keep-alive connections, one request in flight per connection; a request that
finds every connection busy waits in a queue, and its latency counts from its *scheduled*
time, so a stalled server cannot hide its stall (no coordinated omission). Requests still
unanswered at the end count with the time they have waited so far (a lower bound) and are
reported as `late`.

`careful` is the reload-test client: closed loop with a random think time, never retries,
checks an idle connection for EOF (MSG_PEEK) before reusing it, honours `Connection:
close`, and counts as failed any request that meets an error, EOF or reset before its
complete response.

Both run in their own process and are bounded by a deadline.
"""

from __future__ import annotations

import random
import select
import socket
import time
from array import array
from collections import deque

HOST = "127.0.0.1"


class _Conn:
    __slots__ = ("sock", "buf", "due", "need", "close_after")

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf = b""
        self.due = -1.0  # when the request in flight was due; -1 while idle
        self.need = -1
        self.close_after = False


# Response heads seen and their framing (Content-Length, Connection: close): a backend
# repeats its heads, so each is read once per process (bounded; cleared when full).
_HEADS: dict[bytes, tuple[int, bool]] = {}


def _framing(head: bytes) -> tuple[int, bool]:
    known = _HEADS.get(head)
    if known is None:
        low = head.lower()
        i = low.find(b"content-length:")
        if i >= 0:
            eol = low.find(b"\r\n", i)
            length = int(low[i + 15:eol if eol > 0 else None])
        else:
            length = 0
        known = (length, b"connection: close" in low)
        if len(_HEADS) >= 64:
            _HEADS.clear()
        _HEADS[head] = known
    return known


def _complete(c: _Conn) -> bool:
    """True when c.buf holds a whole response (Content-Length framing); keeps the rest."""
    if c.need < 0:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        length, c.close_after = _framing(c.buf[:end])
        c.need = end + 4 + length
    if len(c.buf) < c.need:
        return False
    c.buf = c.buf[c.need:]
    c.need = -1
    return True


def open_loop(port: int, path: str, rate: float, conns: int, start: float, end: float) -> dict[str, object]:
    """Requests at `rate` until `end` (monotonic clock); those due from `start` on are measured."""
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    ep = select.epoll()
    free: deque[_Conn] = deque()
    by_fd: dict[int, _Conn] = {}
    for _ in range(conns):
        c = _Conn(port)
        by_fd[c.sock.fileno()] = c
        ep.register(c.sock.fileno(), select.EPOLLIN)
        free.append(c)
    queue: deque[float] = deque()  # due times waiting for a free connection, oldest first
    lat = array("d")
    errors = 0
    t0 = time.monotonic() + 0.01
    k = 0
    interval = 1.0 / rate
    inflight = 0  # connections with a request out (their `due` is that request's)
    monotonic = time.monotonic
    poll = ep.poll

    while True:
        now = monotonic()
        due = t0 + k * interval
        while due <= now and due < end:
            if free and not queue:
                c = free.popleft()
                c.due = due
                c.sock.send(req)
                inflight += 1
            else:
                queue.append(due)
            k += 1
            due = t0 + k * interval
        while queue and free:
            c = free.popleft()
            c.due = queue.popleft()
            c.sock.send(req)
            inflight += 1
        if now >= end and not inflight:
            break
        if now >= end + 2.0:
            break
        timeout = max(0.0, min(due - now, 0.05)) if now < end else 0.05
        for fd, _ in poll(timeout):
            c = by_fd[fd]
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                errors += 1
                if c.due >= 0:
                    inflight -= 1
                ep.unregister(fd)
                del by_fd[fd]
                c.sock.close()
                try:
                    nc = _Conn(port)
                except OSError:
                    continue
                by_fd[nc.sock.fileno()] = nc
                ep.register(nc.sock.fileno(), select.EPOLLIN)
                free.append(nc)
                continue
            c.buf = c.buf + data if c.buf else data
            if _complete(c):
                if c.due >= start:
                    lat.append(monotonic() - c.due)
                c.due = -1.0
                inflight -= 1
                free.append(c)
    now = time.monotonic()
    late = 0
    for c in by_fd.values():
        if c.due >= start:
            lat.append(now - c.due)
            late += 1
    for due in queue:
        if due >= start:
            lat.append(now - due)
            late += 1
    for c in by_fd.values():
        c.sock.close()
    ep.close()
    scheduled = sum(1 for i in range(k) if t0 + i * interval >= start)
    return {"latencies": lat.tobytes(), "late": float(late), "errors": float(errors),
            "scheduled": float(scheduled), "seconds": end - start}


def careful(port: int, path: str, conns: int, duration: float, think: float, seed: int) -> dict[str, float]:
    """Closed loop over `conns` keep-alive connections; counts failed and completed requests."""
    rng = random.Random(seed)
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    ep = select.epoll()
    by_fd: dict[int, _Conn] = {}
    wake: list[tuple[float, _Conn | None]] = [(0.0, None)] * conns  # (when, idle connection or None)
    ok = failed = reconnects = idle_eof = idle_reset = 0
    t_end = time.monotonic() + duration

    def start(slot: int, c: _Conn | None) -> _Conn | None:
        nonlocal reconnects, idle_eof, idle_reset, failed
        if c is not None:
            try:
                peek = c.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass  # still open and quiet: reuse it
            except OSError:
                idle_reset += 1
                c.sock.close()
                c = None
            else:  # EOF, or bytes nobody asked for: the connection is unusable
                if peek == b"":
                    idle_eof += 1
                else:
                    idle_reset += 1
                c.sock.close()
                c = None
        if c is None:
            try:
                c = _Conn(port)
            except OSError:
                failed += 1
                return None
            reconnects += 1
        by_fd[c.sock.fileno()] = c
        c.due = float(slot)
        try:
            c.sock.send(req)
        except OSError:
            failed += 1
            del by_fd[c.sock.fileno()]
            c.sock.close()
            return None
        ep.register(c.sock.fileno(), select.EPOLLIN)
        return c

    while True:
        now = time.monotonic()
        for slot, (when, c) in enumerate(wake):
            if when <= now and when >= 0:
                wake[slot] = (-1.0, None)
                if now < t_end:
                    if start(slot, c) is None:
                        wake[slot] = (now + think, None)
        if now >= t_end and not by_fd:
            break
        if now >= t_end + 5.0:
            failed += len(by_fd)
            break
        for fd, _ in ep.poll(0.005):
            c = by_fd[fd]
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            slot = int(c.due)
            if not data:
                failed += 1
                ep.unregister(fd)
                del by_fd[fd]
                c.sock.close()
                wake[slot] = (time.monotonic() + think * rng.random(), None)
                continue
            c.buf += data
            if _complete(c):
                ok += 1
                ep.unregister(fd)
                del by_fd[fd]
                keep: _Conn | None = c
                if c.close_after or c.buf:
                    c.sock.close()
                    keep = None
                wake[slot] = (time.monotonic() + think * rng.random(), keep)
    for _, c in wake:
        if c is not None:
            c.sock.close()
    ep.close()
    return {"ok": float(ok), "failed": float(failed), "reconnects": float(reconnects),
            "idle_eof": float(idle_eof), "idle_reset": float(idle_reset)}
