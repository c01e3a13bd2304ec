"""A backend that outruns the proxies: raw epoll, several processes, no frame unmasking.

  python -m bench.rawbackend [--listen HOST:PORT] [--workers N]

Per connection, after the request head:
  Upgrade (any path but /ws/echo)  101, then every byte read is dropped unparsed (bulk sink,
                                   idle tunnels)
  Upgrade to /ws/echo              101, then each client frame gets one unmasked frame of the
                                   same length back (zeros: the payload is never unmasked)
  a request with Content-Length    the body is read and dropped, then `200 ok` (uploads)
  GET /1m                          `200` with 1 MiB (the fallback HTTP backend without nginx)
  anything else                    `200` with a short fixed body

Invariants: one epoll loop per process over a shared non-blocking listener; reads go
through one 1 MiB scratch buffer per process; a connection keeps bytes only while a head
or frame is incomplete or the kernel pushed back on a write. Prints `listening on
HOST:PORT` on stderr when ready; children die with the parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import os
import select
import signal
import socket
import sys
import traceback

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SCRATCH = 1 << 20
SMALL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, bench\n"
BIG = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n" + bytes(1 << 20)
UPLOADED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
IN, OUT, ERRS = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR | select.EPOLLHUP
HEAD, BODY, SINK, ECHO = 0, 1, 2, 3


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame(n: int) -> bytes:
    """An unmasked binary frame of n zero bytes (server to client)."""
    if n < 126:
        head = bytes((0x82, n))
    elif n < 65536:
        head = bytes((0x82, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 127)) + n.to_bytes(8, "big")
    return head + bytes(n)


class Conn:
    __slots__ = ("sock", "state", "buf", "left", "out", "replies")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = HEAD
        self.buf = bytearray()
        self.left = 0
        self.out = b""
        self.replies: dict[int, bytes] = {}


def _head(c: Conn) -> bool:
    """Handle one complete head in c.buf, if any; False when more bytes are needed."""
    end = c.buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(c.buf[:end]).decode("latin-1")
    del c.buf[: end + 4]
    lines = head.split("\r\n")
    target = lines[0].split(" ")[1] if " " in lines[0] else "/"
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if "upgrade" in fields:
        key = fields.get("sec-websocket-key", "").encode()
        c.out += (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")
        c.state = ECHO if target.startswith("/ws/echo") else SINK
        if c.state == SINK:
            c.buf.clear()
        return True
    length = int(fields.get("content-length", "0") or 0)
    if length:
        c.left = length
        c.state = BODY
        take = min(len(c.buf), length)
        del c.buf[:take]
        c.left -= take
        if c.left == 0:
            c.state = HEAD
            c.out += UPLOADED
        return True
    c.out += BIG if target == "/1m" else SMALL
    return True


def _frames(c: Conn) -> bool:
    """Answer every complete frame in c.buf; False on a close frame."""
    buf = c.buf
    pos = 0
    total = len(buf)
    while total - pos >= 2:
        op = buf[pos] & 0x0F
        b1 = buf[pos + 1]
        n = b1 & 0x7F
        hl = 2
        if n == 126:
            if total - pos < 4:
                break
            n = int.from_bytes(buf[pos + 2:pos + 4], "big")
            hl = 4
        elif n == 127:
            if total - pos < 10:
                break
            n = int.from_bytes(buf[pos + 2:pos + 10], "big")
            hl = 10
        if b1 & 0x80:
            hl += 4
        if total - pos < hl + n:
            break
        pos += hl + n
        if op == 8:
            c.out += b"\x88\x00"
            return False
        reply = c.replies.get(n)
        if reply is None:
            reply = c.replies[n] = frame(n)
        c.out += reply
    if pos:
        del buf[:pos]
    return True


def serve(lsock: socket.socket) -> None:
    ep = select.epoll()
    lfd = lsock.fileno()
    ep.register(lfd, IN)
    conns: dict[int, Conn] = {}
    scratch = bytearray(SCRATCH)
    view = memoryview(scratch)

    def close(fd: int) -> None:
        c = conns.pop(fd, None)
        if c is not None:
            ep.unregister(fd)
            c.sock.close()

    def flush(fd: int, c: Conn) -> None:
        if c.out:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                n = 0
            c.out = c.out[n:]
        ep.modify(fd, IN | OUT if c.out else IN)

    while True:
        for fd, ev in ep.poll(1.0):
            if fd == lfd:
                for _ in range(64):
                    try:
                        s, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[s.fileno()] = Conn(s)
                    ep.register(s.fileno(), IN)
                continue
            c = conns.get(fd)
            if c is None:
                continue
            try:
                if ev & OUT:
                    flush(fd, c)
                if ev & (IN | ERRS):
                    if not _read(c, view):
                        flush(fd, c)
                        close(fd)
                        continue
                    if c.out:
                        flush(fd, c)
            except (ConnectionError, OSError):
                close(fd)
            except Exception:  # a bug here must show, and cost one connection, not the process
                traceback.print_exc()
                close(fd)


def _read(c: Conn, view: memoryview) -> bool:
    """Read what is there; False on EOF or a close frame."""
    sock = c.sock
    for _ in range(16):
        try:
            n = sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return True
        if n == 0:
            return False
        if c.state == SINK:
            continue
        if c.state == BODY:
            if n <= c.left:
                c.left -= n
                if c.left:
                    continue
                c.state = HEAD
                c.out += UPLOADED
                continue
            c.buf += view[c.left:n]
            c.left = 0
            c.state = HEAD
            c.out += UPLOADED
        else:
            c.buf += view[:n]
        while c.state == HEAD and _head(c):
            pass
        if c.state == ECHO and not _frames(c):
            return False
    return True


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rawbackend", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, int(port)))
    lsock.listen(4096)
    lsock.setblocking(False)
    kids = []
    for _ in range(max(1, args.workers)):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                serve(lsock)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        kids.append(pid)
    h, p = lsock.getsockname()[:2]
    print(f"listening on {h}:{p}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for _ in kids:
            os.wait()
    finally:
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
