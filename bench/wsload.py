"""WebSocket load from raw sockets: handshakes, pre-masked frames, bulk, echo, idle tunnels.

Each load function runs in its own process (see `bench.workers`), so generators use
cores of their own and their CPU is counted when the process is reaped. Frames are built
once (masked with a fixed key), never per message. Every loop is bounded by a deadline.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import time
from array import array

HOST = "127.0.0.1"
MASK = b"\x5a\x3c\x96\xe1"
HANDSHAKE_TIMEOUT = 10.0


def masked_frame(payload: bytes) -> bytes:
    """A client binary frame carrying `payload`, masked with MASK."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0x80 | 127)) + n.to_bytes(8, "big")
    key = (MASK * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + MASK + body


def handshake(port: int, path: str, timeout: float = HANDSHAKE_TIMEOUT) -> socket.socket:
    """A connected socket past a 101 to `path`; raises on anything else."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        _read_101(s)
        return s
    except BaseException:
        s.close()
        raise


def _read_101(s: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("EOF before the 101")
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("oversized handshake answer")
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"no 101: {head.splitlines()[0]!r}")
    if rest:
        raise ConnectionError("bytes after the 101 before any frame was sent")


def bulk(port: int, path: str, frame_size: int, start: float, end: float) -> dict[str, float]:
    """One tunnel, sending `frame_size` frames as fast as the path takes them until `end` (monotonic
    clock); `bytes` and `seconds` count from the first send at or after `start`."""
    frame = masked_frame(bytes(frame_size))
    batch = frame * max(1, (1 << 20) // len(frame))
    s = handshake(port, path)
    s.settimeout(5.0)
    t0 = time.monotonic()
    sent = 0
    mark = None
    now = t0
    while now < end:
        sent += s.send(batch)
        now = time.monotonic()
        if mark is None and now >= start:
            mark = (sent, now)
    s.close()
    if mark is None:
        mark = (0, t0)
    return {"bytes": float(sent - mark[0]), "seconds": now - mark[1]}


def bulk_many(port: int, path: str, frame_size: int, tunnels: int, start: float, end: float) -> dict[str, float]:
    """`tunnels` tunnels in this process, each sent `frame_size` frames whenever it can take more (epoll),
    counted as `bulk` counts them.

    Each tunnel's stream stays whole frames: a partial send resumes where it stopped."""
    frame = masked_frame(bytes(frame_size))
    batch = memoryview(frame * max(1, (1 << 20) // len(frame)))
    socks = [handshake(port, path) for _ in range(tunnels)]
    ep = select.epoll()
    offset: dict[int, int] = {}
    by_fd: dict[int, socket.socket] = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLOUT)
        offset[s.fileno()] = 0
        by_fd[s.fileno()] = s
    t0 = time.monotonic()
    sent = 0
    mark = None
    now = t0
    try:
        while now < end:
            for fd, _ in ep.poll(0.2):
                off = offset[fd]
                try:
                    n = by_fd[fd].send(batch[off:])
                except (BlockingIOError, InterruptedError):
                    continue
                sent += n
                offset[fd] = (off + n) % len(batch)
            now = time.monotonic()
            if mark is None and now >= start:
                mark = (sent, now)
    finally:
        ep.close()
        for s in socks:
            s.close()
    if mark is None:
        mark = (0, t0)
    return {"bytes": float(sent - mark[0]), "seconds": now - mark[1]}


def echo(port: int, path: str, tunnels: int, size: int, start: float, end: float) -> dict[str, object]:
    """`tunnels` tunnels, each with one `size`-byte message in flight until `end` (monotonic clock);
    messages and RTTs count the replies from `start` on."""
    msg = masked_frame(bytes(size))
    reply_len = 2 + size if size < 126 else 4 + size
    socks = [handshake(port, path) for _ in range(tunnels)]
    ep = select.epoll()
    sent_at: dict[int, float] = {}
    have: dict[int, int] = {}
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    rtts = array("d")
    t0 = time.monotonic()
    for s in socks:
        sent_at[s.fileno()] = time.monotonic()
        have[s.fileno()] = 0
        s.send(msg)
    done = 0
    errors = 0
    now = t0
    while now < end:
        for fd, _ in ep.poll(0.2):
            s = by_fd[fd]
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            now = time.monotonic()
            if not data:
                errors += 1
                ep.unregister(fd)
                continue
            got = have[fd] + len(data)
            if got < reply_len:
                have[fd] = got
                continue
            have[fd] = got - reply_len
            if now >= start:
                rtts.append(now - sent_at[fd])
                done += 1
            sent_at[fd] = now
            s.send(msg)
        now = time.monotonic()
    for s in socks:
        s.close()
    ep.close()
    return {"messages": float(done), "seconds": end - start, "rtts": rtts.tobytes(), "errors": float(errors)}


def hold_idle(port: int, path: str, warm: int, count: int, conn, batch: int = 100) -> None:  # type: ignore[no-untyped-def]
    """Open `warm` tunnels, report, open `count` more on the parent's word, report, hold until told."""
    held: list[socket.socket] = []
    try:
        _open_many(port, path, warm, batch, held)
        conn.send(("warm", len(held)))
        if conn.recv() != "go":
            return
        _open_many(port, path, count, batch, held)
        conn.send(("open", len(held)))
        conn.recv()  # "close"
    except Exception as e:  # reported to the parent as an error
        conn.send(("error", f"{type(e).__name__}: {e} after {len(held)} tunnels"))
    finally:
        for s in held:
            s.close()


def _open_many(port: int, path: str, n: int, batch: int, held: list[socket.socket]) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    left = n
    while left > 0:
        group = []
        for _ in range(min(batch, left)):
            s = socket.create_connection((HOST, port), timeout=HANDSHAKE_TIMEOUT)
            s.sendall(req)
            group.append(s)
        for s in group:
            _read_101(s)
            held.append(s)
        left -= len(group)
