"""Demo backend: a stdlib-only HTTP/1.1 + WebSocket echo server, one thread per connection.

Used by `make run`, by end-to-end tests and by the bench. Every route takes any method;
HEAD gets the same head without a body. Every response names its backend in X-Backend.

  /                 a short page saying which backend answered
  /size/<n>         n bytes (Content-Length); the bytes are `payload(n)`
  /chunked/<n>      the same n bytes, chunked (`?chunk=<k>` sets the chunk size)
  /echo             the request body back, streamed: read the response while sending
  /sha256           sha256 hex of the request body (+ X-Body-SHA256, X-Body-Length)
  /headers          the request head exactly as received (text/plain)
  /sleep/<secs>     answers after that delay
  /status/<code>    that status (200..599)

A valid RFC 6455 upgrade on any path becomes a WebSocket echo (each frame echoed once it is
complete, fragments as fragments, frames over 64 MiB streamed; pings get pongs; the close
frame is echoed) or, with --ws-discard, a sink that reads and drops bytes unparsed. `--workers N` forks N processes sharing
the listening sockets. Prints `listening on HOST:PORT` on stderr per listener when ready;
exits 2 if an address is in use.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import errno
import hashlib
import http
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Self

RECV = 256 * 1024
MAX_HEAD = 64 * 1024
UNMASK_SLICE = 256 * 1024
WS_WHOLE_FRAME = 64 << 20  # WebSocket frames up to this size are echoed once complete
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LINE = b"forkproxy demo backend payload: 0123456789 abcdefghijklmnopqr\n"
BLOCK = LINE * 1024  # 64 KiB of 64-byte lines
_LOG_LOCK = threading.Lock()


def payload(n: int) -> bytes:
    """The n bytes that /size/<n> and /chunked/<n> send: LINE repeated, cut at n."""
    q, r = divmod(n, len(BLOCK))
    return BLOCK * q + BLOCK[:r]


def _payload_pieces(n: int, size: int = len(BLOCK)) -> Iterator[bytes]:
    """payload(n) in pieces of `size` bytes, without building it whole (it is 64-periodic)."""
    src = BLOCK if size <= len(BLOCK) - len(LINE) else payload(size + len(LINE))
    pos = 0
    while pos < n:
        k = min(size, n - pos)
        off = pos % len(LINE)
        yield src[off : off + k]
        pos += k


class BadRequest(Exception):
    """The client sent something this backend cannot frame; answered with 400 and closed."""


class Stream:
    """Buffered reads over a blocking socket; bytes past one request stay for the next."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def read_head(self) -> bytes | None:
        """The next head, blank line included; None on EOF between requests."""
        start = 0
        while True:
            while self.buf[:2] == b"\r\n":  # empty lines before a request line
                del self.buf[:2]
                start = 0
            i = self.buf.find(b"\r\n\r\n", start)
            if i >= 0:
                head = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("head too large")
            start = max(0, len(self.buf) - 3)
            data = self.sock.recv(RECV)
            if not data:
                if self.buf:
                    raise BadRequest("connection closed inside a head")
                return None
            self.buf += data

    def read_some(self, n: int) -> bytes:
        """Up to n bytes (at least one), b"" on EOF."""
        if self.buf:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        return self.sock.recv(min(n, 1 << 20))

    def read_exact(self, n: int) -> bytes | bytearray:
        if len(self.buf) >= n:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        out = bytearray(n)  # received in place: no copies for a large frame
        have = len(self.buf)
        out[:have] = self.buf
        self.buf.clear()
        view = memoryview(out)
        while have < n:
            got = self.sock.recv_into(view[have:], min(n - have, 1 << 20))
            if not got:
                raise EOFError
            have += got
        return out

    def read_line(self, limit: int = 8192) -> bytes:
        while (i := self.buf.find(b"\n")) < 0:
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            data = self.sock.recv(RECV)
            if not data:
                raise EOFError
            self.buf += data
        line = bytes(self.buf[: i + 1])
        del self.buf[: i + 1]
        return line


class Request:
    """A parsed request head; `headers` maps lowercase names to their values in order."""

    __slots__ = ("head", "headers", "method", "target", "version")

    def __init__(self, head: bytes) -> None:
        lines = head[:-4].split(b"\r\n")
        try:
            self.method, self.target, self.version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise BadRequest("bad request line") from None
        if self.version not in ("HTTP/1.1", "HTTP/1.0"):
            raise BadRequest("unsupported version")
        self.head = head
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name:
                raise BadRequest("bad header line")
            key = name.strip().lower().decode("latin-1")
            self.headers.setdefault(key, []).append(value.strip().decode("latin-1"))

    def header(self, name: str, default: str = "") -> str:
        values = self.headers.get(name)
        return values[0] if values else default

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.headers.get(name, ()) for t in v.split(",")}

    def content_length(self) -> int:
        value = self.header("content-length", "0")
        if not value.isdigit():
            raise BadRequest("bad Content-Length")
        return int(value)

    def body_pieces(self, stream: Stream) -> Iterator[bytes]:
        """The request body, decoded, in pieces as they arrive."""
        if "transfer-encoding" in self.headers:
            if self.tokens("transfer-encoding") != {"chunked"}:
                raise BadRequest("unsupported Transfer-Encoding")
            yield from _chunked_pieces(stream)
            return
        n = self.content_length()
        while n > 0:
            data = stream.read_some(min(n, RECV))
            if not data:
                raise EOFError
            n -= len(data)
            yield data


def _chunked_pieces(stream: Stream) -> Iterator[bytes]:
    while True:
        line = stream.read_line()
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            while stream.read_line() not in (b"\r\n", b"\n"):
                pass  # trailers
            return
        while size:
            data = stream.read_some(min(size, RECV))
            if not data:
                raise EOFError
            size -= len(data)
            yield data
        if stream.read_exact(2) != b"\r\n":
            raise BadRequest("chunk not followed by CRLF")


def unmask(data: bytes | bytearray | memoryview, mask: bytes | bytearray, offset: int = 0) -> bytes:
    """XOR data with the 4-byte WebSocket mask, starting `offset` bytes into the payload.

    One big-integer XOR per 256 KiB slice (about 250 MB/s; a per-byte loop is 100x slower).
    """
    n = len(data)
    if offset & 3:
        mask = mask[offset & 3 :] + mask[: offset & 3]
    if n <= UNMASK_SLICE:
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    key_int = int.from_bytes(mask * (UNMASK_SLICE >> 2), "little")
    view = memoryview(data)
    whole = n - n % UNMASK_SLICE
    parts = [(int.from_bytes(view[i : i + UNMASK_SLICE], "little") ^ key_int).to_bytes(UNMASK_SLICE, "little")
             for i in range(0, whole, UNMASK_SLICE)]
    parts.append(unmask(view[whole:], mask))
    return b"".join(parts)


def frame_head(b0: int, n: int) -> bytes:
    """An unmasked (server-to-client) frame header for an n-byte payload."""
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return bytes((b0, 126)) + n.to_bytes(2, "big")
    return bytes((b0, 127)) + n.to_bytes(8, "big")


def _log(line: str) -> None:
    with _LOG_LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class Backend:
    """The server: bind, then `start()` accept threads (or use it as a context manager)."""

    def __init__(self, listen: Iterable[tuple[str, int]] = (("127.0.0.1", 0),), *,
                 ws_discard: bool = False, verbose: bool = False) -> None:
        self.addresses = list(listen)
        self.ws_discard = ws_discard
        self.verbose = verbose
        self.listeners: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def bind(self) -> list[tuple[str, int]]:
        for host, port in self.addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            sock.listen(1024)
            self.listeners.append(sock)
        return self.bound

    @property
    def bound(self) -> list[tuple[str, int]]:
        return [(s.getsockname()[0], s.getsockname()[1]) for s in self.listeners]

    @property
    def port(self) -> int:
        return self.bound[0][1]

    def start(self) -> Self:
        if not self.listeners:
            self.bind()
        for sock in self.listeners:
            threading.Thread(target=self._accept_loop, args=(sock,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped = True
        with self._lock:
            socks = self.listeners + list(self._conns)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for sock in self.listeners:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self, lsock: socket.socket) -> None:
        host, port = lsock.getsockname()[:2]
        name = f"{host}:{port}"
        while not self._stopped:
            try:
                sock, peer = lsock.accept()
            except OSError as e:
                if self._stopped or e.errno in (errno.EINVAL, errno.EBADF):
                    return
                time.sleep(0.01)  # EMFILE and the like: back off
                continue
            with self._lock:
                self._conns.add(sock)
            threading.Thread(target=self._serve, args=(sock, peer, name), daemon=True).start()

    def _serve(self, sock: socket.socket, peer: tuple[str, int], name: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = Stream(sock)
        linger = False
        try:
            while True:
                head = stream.read_head()
                if head is None:
                    break
                t0 = time.monotonic()
                req = Request(head)
                if (req.version == "HTTP/1.1" and "websocket" in req.tokens("upgrade")
                        and "upgrade" in req.tokens("connection") and req.header("sec-websocket-key")):
                    self._websocket(stream, req, name, peer, t0)
                    break
                status, sent, keep = _respond(stream, req, name)
                if self.verbose:
                    ms = (time.monotonic() - t0) * 1000
                    _log(f'{peer[0]}:{peer[1]} "{req.method} {req.target} {req.version}" {status} {sent} {ms:.1f}ms')
                if not keep:
                    linger = True
                    break
        except BadRequest as e:
            body = f"bad request: {e}\n".encode()
            try:
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                linger = True
            except OSError:
                pass
        except (OSError, EOFError):
            pass
        finally:
            if linger:
                _lingering_close(sock)
            with self._lock:
                self._conns.discard(sock)
            sock.close()

    def _websocket(self, stream: Stream, req: Request, name: str, peer: tuple[str, int], t0: float) -> None:
        key = req.header("sec-websocket-key").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\nX-Backend: " + name.encode() + b"\r\n")
        protocols = req.header("sec-websocket-protocol")
        if protocols:
            head += b"Sec-WebSocket-Protocol: " + protocols.split(",")[0].strip().encode() + b"\r\n"
        stream.sock.sendall(head + b"\r\n")
        counts = [0, 0]  # bytes in, messages (frames when discarding)
        try:
            if self.ws_discard:
                counts[0] = _ws_discard(stream)
            else:
                _ws_echo(stream, counts)
        finally:
            if self.verbose:
                mode = "discard" if self.ws_discard else "echo"
                _log(f'{peer[0]}:{peer[1]} "{req.method} {req.target} {req.version}" 101 websocket {mode}: '
                     f"{counts[0]} bytes in, {counts[1]} frames, {time.monotonic() - t0:.1f}s")


def _lingering_close(sock: socket.socket) -> None:
    """FIN first, then drain what the client still sends, so it never meets an RST."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        while sock.recv(RECV):
            pass
    except OSError:
        pass


def _respond(stream: Stream, req: Request, name: str) -> tuple[int, int, int]:
    """Answer one request; returns (status, body bytes sent, keep the connection)."""
    v11 = req.version == "HTTP/1.1"
    conn = req.tokens("connection")
    keep = "close" not in conn if v11 else "keep-alive" in conn
    target = req.target
    if target.startswith(("http://", "https://")):
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    path, _, query = target.partition("?")
    parts = path.split("/")
    route, arg = (parts[1] if len(parts) > 1 else ""), (parts[2] if len(parts) > 2 else "")
    head_only = req.method == "HEAD"
    reads_body = route in ("echo", "sha256")
    if reads_body and v11 and req.header("expect").lower() == "100-continue":
        stream.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    body_in = req.body_pieces(stream)
    if not reads_body:
        for _ in body_in:  # framing: the body must be consumed before the next request
            pass
    status, extra = 200, []
    length: int | None = None
    pieces: Iterable[bytes] = ()
    chunked = False
    try:
        if path == "/":
            text = f"Hello from the forkproxy demo backend at {name} (pid {os.getpid()}).\n".encode()
            pieces, length = (text,), len(text)
        elif route == "size" and arg.isdigit():
            length = int(arg)
            pieces = _payload_pieces(length)
        elif route == "chunked" and arg.isdigit():
            size = int(query.partition("chunk=")[2].partition("&")[0] or len(BLOCK))
            pieces, chunked = _payload_pieces(int(arg), max(1, size)), True
        elif route == "echo":
            if "transfer-encoding" in req.headers:
                chunked = True
            else:
                length = req.content_length()
            pieces = body_in
        elif route == "sha256":
            digest, total = hashlib.sha256(), 0
            for piece in body_in:
                digest.update(piece)
                total += len(piece)
            hexd = digest.hexdigest()
            extra = [("X-Body-SHA256", hexd), ("X-Body-Length", str(total))]
            text = (hexd + "\n").encode()
            pieces, length = (text,), len(text)
        elif route == "headers":
            pieces, length = (req.head,), len(req.head)
        elif route == "sleep":
            time.sleep(float(arg))
            text = f"slept {float(arg)}s\n".encode()
            pieces, length = (text,), len(text)
        elif route == "status" and arg.isdigit() and 200 <= int(arg) <= 599:
            status = int(arg)
            if status in (204, 304):
                length = None
            else:
                text = f"status {status}\n".encode()
                pieces, length = (text,), len(text)
        else:
            status = 404
            text = f"no route for {path}; try /, /size/N, /chunked/N, /echo, /sha256, /headers, /sleep/S, /status/N\n".encode()
            pieces, length = (text,), len(text)
    except ValueError:
        status, keep = 400, False
        pieces, length = (b"bad argument\n",), 13
    if chunked and not v11:
        chunked, keep = False, False  # HTTP/1.0: close-delimited
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {status} {reason}", f"X-Backend: {name}", "Content-Type: text/plain"]
    lines += [f"{k}: {v}" for k, v in extra]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    elif status not in (204, 304):
        keep = False
    if not keep:
        lines.append("Connection: close")
    elif not v11:
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    sock, sent = stream.sock, 0
    if head_only:
        sock.sendall(head)
        for _ in pieces if pieces is body_in else ():
            pass
        return status, 0, keep
    first = True
    for piece in pieces:
        out = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        sock.sendall(head + out if first else out)
        first = False
        sent += len(piece)
    if first:
        sock.sendall(head + b"0\r\n\r\n" if chunked else head)
    elif chunked:
        sock.sendall(b"0\r\n\r\n")
    return status, sent, keep


def _ws_discard(stream: Stream) -> int:
    total = len(stream.buf)
    stream.buf.clear()
    scratch = bytearray(1 << 20)
    while n := stream.sock.recv_into(scratch):
        total += n
    return total


def _ws_echo(stream: Stream, counts: list[int]) -> None:
    sock = stream.sock
    while True:
        try:
            b0, b1 = stream.read_exact(2)
        except EOFError:
            return
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(stream.read_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(stream.read_exact(8), "big")
        mask = stream.read_exact(4) if b1 & 0x80 else b""
        counts[0] += n
        counts[1] += 1
        opcode = b0 & 0x0F
        if opcode >= 8:  # control frame: close, ping, pong
            data = stream.read_exact(n)
            if mask:
                data = unmask(data, mask)
            if opcode == 8:
                sock.sendall(frame_head(0x88, len(data)) + data)
                _lingering_close(sock)
                return
            if opcode == 9:
                sock.sendall(frame_head(0x8A, len(data)) + data)
            continue
        out = frame_head(b0, n)
        if n <= WS_WHOLE_FRAME:  # whole frame first: a client may send it all before it reads
            data = stream.read_exact(n)
            sock.sendall(out + (unmask(data, mask) if mask else data))
            continue
        done = 0
        while done < n:
            data = stream.read_some(min(n - done, 1 << 20))
            if not data:
                raise EOFError
            if mask:
                data = unmask(data, mask, done)
            done += len(data)
            sock.sendall(out + data if out else data)
            out = b""
        if out:
            sock.sendall(out)


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a bare port (loopback) to (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    return host.strip("[]") or "127.0.0.1", int(port)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", action="append", metavar="HOST:PORT",
                    help="address to serve (repeatable; default 127.0.0.1:8080)")
    ap.add_argument("--ws-discard", action="store_true", help="drop WebSocket bytes instead of echoing")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the listeners")
    ap.add_argument("-v", "--verbose", action="store_true", help="one log line per request on stderr")
    args = ap.parse_args(argv)
    addresses = [parse_address(a) for a in args.listen or ["127.0.0.1:8080"]]
    backend = Backend(addresses, ws_discard=args.ws_discard, verbose=args.verbose)
    try:
        backend.bind()
    except OSError as e:
        host, port = addresses[len(backend.listeners)]
        why = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
        print(f"backend: cannot listen on {host}:{port}: {why}", file=sys.stderr)
        return 2 if e.errno == errno.EADDRINUSE else 1
    # Every thread inherits this mask, so the main thread's sigwait is the one that sees them.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    children: list[int] = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            children = []
            break
        children.append(pid)
    backend.start()
    if children or args.workers == 1:
        for host, port in backend.bound:
            print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        backend.stop()
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
