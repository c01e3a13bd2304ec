"""Backends for end-to-end tests: raw-socket servers on 127.0.0.1, port 0, one thread each.

Every server is a context manager with `.port`, `.address`, `.connections` (TCP connections
accepted) and `.bytes_received` (every byte read from any connection), both `Counter`s.

  RecordingBackend   HTTP/1.1 keep-alive server that records each request (raw head and
                     body) and answers with a handler; knobs for idle close, delays, exact
                     raw responses, early final statuses and throttled reads and writes
  WsEchoServer       a `websockets` (sync) echo server that records handshakes and closes
  UpgradeBackend     answers Upgrade with 101, then a raw byte echo with half-close, or a
                     server-closes-first mode; can reset its tunnels on demand
  unused_port()      a port with nothing behind it (a dead upstream)

`stop()` and `reset_all()` wake a thread blocked in a receive at once (shutdown(SHUT_RD)); a
thread blocked in a send notices within TICK. An idle connection costs no CPU.
"""

from __future__ import annotations

import hashlib
import http
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from websockets.sync.server import serve

TICK = 0.25
NAP = 0.02  # granularity of sleeps (response_delay, throttles)
RECV = 256 * 1024
MAX_HEAD = 64 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


class Counter:
    """A thread-safe integer that tests can read or wait on."""

    def __init__(self) -> None:
        self._value = 0
        self._cond = threading.Condition()

    @property
    def value(self) -> int:
        return self._value

    def add(self, n: int = 1) -> None:
        with self._cond:
            self._value += n
            self._cond.notify_all()

    def wait_for(self, target: int, timeout: float = 5.0) -> bool:
        """Wait until value >= target; True if it got there in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._value >= target, timeout)

    def __repr__(self) -> str:
        return f"Counter({self._value})"


def unused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Abort(Exception):
    """The server is stopping or this connection was asked to reset."""


class _Idle(Exception):
    """No byte arrived before the idle deadline."""


class _Conn:
    """One accepted socket, polled every TICK so other threads can stop or reset it."""

    def __init__(self, server: _Server, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index
        self.reset_requested = False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _check(self) -> None:
        if self.reset_requested or self.server.stopping:
            raise _Abort

    def wake(self) -> None:
        """Make a blocked recv return now (nothing is sent to the peer)."""
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def recv(self, n: int = RECV, deadline: float | None = None) -> bytes:
        """Up to n bytes, b"" on EOF; _Idle past the deadline (time.monotonic())."""
        while True:
            self._check()
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise _Idle
            self.sock.settimeout(wait)  # blocking: wake() interrupts it
            try:
                data = self.sock.recv(n)
            except TimeoutError:
                continue
            self._check()  # an empty read may be our own wake()
            self.server.bytes_received.add(len(data))
            return data

    def send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.sock.settimeout(TICK)
        while view:
            self._check()
            try:
                sent = self.sock.send(view)
            except TimeoutError:
                continue
            view = view[sent:]

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._check()
            time.sleep(min(left, NAP))

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def linger_close(self, timeout: float = 2.0) -> None:
        """FIN, then read and drop until EOF (or timeout) so the peer never sees an RST."""
        self.shutdown_write()
        deadline = time.monotonic() + timeout
        try:
            while self.recv(RECV, deadline):
                pass
        except (OSError, _Idle, _Abort):
            pass

    def reset(self) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        self.sock.close()


class _Server:
    """Listener on port 0 plus a thread per connection; subclasses implement `handle`."""

    def __init__(self, host: str = "127.0.0.1", rcvbuf: int | None = None, sndbuf: int | None = None) -> None:
        self.stopping = False
        self.connections = Counter()
        self.bytes_received = Counter()
        self.live: set[_Conn] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:  # inherited by accepted sockets; set before listen so the window follows
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.listener.bind((host, 0))
        self.listener.listen(512)
        self.host = host
        self.port: int = self.listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Any:
        self._accepter.start()
        return self

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for conn in self.live:
                conn.wake()
        for thread in [self._accepter, *self._threads]:
            if thread.is_alive():
                thread.join(timeout)

    def reset_all(self) -> None:
        """Reset (RST) every open connection: at once, or within TICK if it is sending."""
        with self._lock:
            for conn in self.live:
                conn.reset_requested = True
                conn.wake()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self.live)

    def _accept_loop(self) -> None:
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                if self.stopping:
                    return
                time.sleep(TICK)
                continue
            self.connections.add()
            conn = _Conn(self, sock, self.connections.value)
            with self._lock:
                self.live.add(conn)
            if self.stopping:
                conn.wake()
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: _Conn) -> None:
        try:
            self.handle(conn)
        except _Abort:
            if conn.reset_requested:
                conn.reset()
        except (OSError, EOFError, ValueError, _Idle):
            pass  # a peer gone or sending garbage just ends the connection
        finally:
            with self._lock:
                self.live.discard(conn)
            conn.sock.close()

    def handle(self, conn: _Conn) -> None:
        raise NotImplementedError


class _Reader:
    """Buffered reads over a _Conn; `limit` caps one recv (throttled reads lower it)."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.limit = RECV

    def fill(self, deadline: float | None = None) -> bool:
        data = self.conn.recv(self.limit, deadline)
        self.buf += data
        return bool(data)

    def head(self, deadline: float | None = None) -> bytes | None:
        """The next head (blank line included), None on EOF before any byte of it."""
        while True:
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head = bytes(self.buf[: i + 4])
                del self.buf[: i + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise EOFError("head too large")
            if not self.fill(deadline if not self.buf else None):
                if self.buf:
                    raise EOFError("EOF inside a head")
                return None

    def some(self, n: int) -> bytes:
        if not self.buf and not self.fill():
            raise EOFError("EOF inside a body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def line(self) -> bytes:
        while (i := self.buf.find(b"\n")) < 0:
            if len(self.buf) > MAX_HEAD or not self.fill():
                raise EOFError("EOF or overlong line")
        data = bytes(self.buf[: i + 1])
        del self.buf[: i + 1]
        return data


class _Pace:
    """Sleeps so that bytes / elapsed stays under bps."""

    def __init__(self, conn: _Conn, bps: float) -> None:
        self.conn, self.bps, self.total, self.t0 = conn, bps, 0, time.monotonic()

    def step(self, n: int) -> None:
        self.total += n
        ahead = self.total / self.bps - (time.monotonic() - self.t0)
        if ahead > 0:
            self.conn.sleep(ahead)


@dataclass
class Request:
    """One request as the backend received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # in order and case, repeated fields kept
    head: bytes  # the raw head, blank line included
    connection: int  # 1-based index of the TCP connection it arrived on
    body: bytes = b""  # decoded body (empty when record_body=False or not read)
    wire_body: bytes = b""  # body bytes as on the wire, chunk framing included
    body_length: int = 0
    body_sha256: str = hashlib.sha256().hexdigest()
    body_read: bool = True  # False when the backend answered before reading it

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (case-insensitive)."""
        values = self.header_values(name)
        return values[0] if values else default

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def has_header(self, name: str) -> bool:
        return bool(self.header_values(name))


@dataclass
class Response:
    """What a handler returns. An iterable body without Content-Length is sent chunked."""

    status: int = 200
    body: bytes | Iterable[bytes] = b"ok\n"
    headers: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None
    chunked: bool = False
    close: bool = False  # add Connection: close and close after sending


Handler = Callable[[Request], "Response | bytes | None"]
RawThen = Literal["close", "reset", "keep", "hold"]


def _parse_head(head: bytes, index: int) -> Request:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    method, target, version = (parts + ["", "", ""])[:3]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return Request(method, target, version, headers, head, index)


class RecordingBackend(_Server):
    """HTTP/1.1 keep-alive backend recording every request; answers with `handler`.

    handler(request) returns a Response, raw bytes to send verbatim (then `raw_then`), or
    None for the default 200 "ok\\n". Requests are in `.requests` in arrival order.

    idle_close_after     close a keep-alive connection idle that long (seconds)
    response_delay       sleep before answering (after reading the body)
    raw_response         send these exact bytes instead of a response, then `raw_then`:
                         "close" (FIN), "reset" (RST), "keep" (next request), "hold"
                         (stay open, read nothing more, until stop)
    reject_early_status  answer a request carrying Expect: 100-continue with this final
                         status before reading its body, then close (lingering)
    send_continue        answer Expect: 100-continue with 100 before reading the body
    throttle_read_bps    read request bodies at about this rate
    throttle_write_bps   write response bodies at about this rate
    record_body          keep bodies in memory (the length and sha256 are always kept)
    rcvbuf, sndbuf       SO_RCVBUF / SO_SNDBUF of accepted sockets (smaller = earlier push-back)
    """

    def __init__(self, handler: Handler | None = None, *, idle_close_after: float | None = None,
                 response_delay: float = 0.0, raw_response: bytes | None = None, raw_then: RawThen = "close",
                 reject_early_status: int | None = None, send_continue: bool = True,
                 throttle_read_bps: float | None = None, throttle_write_bps: float | None = None,
                 record_body: bool = True, rcvbuf: int | None = None, sndbuf: int | None = None,
                 host: str = "127.0.0.1") -> None:
        super().__init__(host, rcvbuf, sndbuf)
        self.handler = handler
        self.idle_close_after = idle_close_after
        self.response_delay = response_delay
        self.raw_response = raw_response
        self.raw_then = raw_then
        self.reject_early_status = reject_early_status
        self.send_continue = send_continue
        self.throttle_read_bps = throttle_read_bps
        self.throttle_write_bps = throttle_write_bps
        self.record_body = record_body
        self.requests: list[Request] = []
        self.idle_closes = Counter()  # connections closed by idle_close_after

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def handle(self, conn: _Conn) -> None:
        reader = _Reader(conn)
        while True:
            deadline = None if self.idle_close_after is None else time.monotonic() + self.idle_close_after
            try:
                head = reader.head(deadline)
            except _Idle:
                self.idle_closes.add()
                return  # close(): FIN, like a server's keepalive timeout
            if head is None:
                return
            req = _parse_head(head, conn.index)
            expect = (req.header("expect") or "").lower() == "100-continue"
            if self.reject_early_status is not None and expect:
                req.body_read = False
                self.requests.append(req)
                conn.send(_response_head(self.reject_early_status, None, [("Content-Length", "0")], True))
                conn.linger_close()
                return
            if expect and self.send_continue:
                conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._read_body(conn, reader, req)
            self.requests.append(req)
            if self.response_delay:
                conn.sleep(self.response_delay)
            answer = self.handler(req) if self.handler else None
            if self.raw_response is not None and answer is None:
                answer = self.raw_response
            if isinstance(answer, (bytes, bytearray)):
                conn.send(answer)
                if self.raw_then == "keep":
                    continue
                if self.raw_then == "reset":
                    conn.reset_requested = True
                    raise _Abort
                if self.raw_then == "hold":
                    while not self.stopping:
                        conn.sleep(NAP * 10)
                    return
                conn.linger_close()
                return
            keep = self._respond(conn, req, answer or Response())
            if not keep:
                conn.linger_close()
                return

    def _read_body(self, conn: _Conn, reader: _Reader, req: Request) -> None:
        te = (req.header("transfer-encoding") or "").lower()
        cl = req.header("content-length")
        digest = hashlib.sha256()
        body: list[bytes] = []
        wire: list[bytes] = []
        pace = _Pace(conn, self.throttle_read_bps) if self.throttle_read_bps else None
        if pace:
            reader.limit = max(1024, int(self.throttle_read_bps or 0) // 20)

        def data(n: int) -> None:
            while n:
                piece = reader.some(min(n, reader.limit))
                n -= len(piece)
                digest.update(piece)
                req.body_length += len(piece)
                if self.record_body:
                    body.append(piece)
                    wire.append(piece)
                if pace:
                    pace.step(len(piece))

        if "chunked" in te:
            while True:
                line = reader.line()
                if self.record_body:
                    wire.append(line)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        trailer = reader.line()
                        if self.record_body:
                            wire.append(trailer)
                        if trailer in (b"\r\n", b"\n"):
                            break
                    break
                data(size)
                crlf = reader.line()
                if self.record_body:
                    wire.append(crlf)
        elif cl is not None and cl.strip().isdigit():
            data(int(cl))
        reader.limit = RECV
        req.body = b"".join(body)
        req.wire_body = b"".join(wire)
        req.body_sha256 = digest.hexdigest()

    def _respond(self, conn: _Conn, req: Request, resp: Response) -> bool:
        v11 = req.version == "HTTP/1.1"
        tokens = {t.strip().lower() for v in req.header_values("connection") for t in v.split(",")}
        keep = ("close" not in tokens if v11 else "keep-alive" in tokens) and not resp.close
        headers = list(resp.headers)
        names = {k.lower() for k, _ in headers}
        no_body = req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        if isinstance(resp.body, (bytes, bytearray)):
            pieces: Iterable[bytes] = [bytes(resp.body)] if resp.body else []
            chunked = resp.chunked
            if not chunked and "content-length" not in names and resp.status not in (204, 304):
                headers.append(("Content-Length", str(len(resp.body))))
        else:
            pieces = resp.body
            chunked = resp.chunked or "content-length" not in names
        if chunked and "transfer-encoding" not in names:
            headers.append(("Transfer-Encoding", "chunked"))
        if not keep and "connection" not in names:
            headers.append(("Connection", "close"))
        out = _response_head(resp.status, resp.reason, headers, False)  # sent with the first piece
        if no_body:
            conn.send(out)
            return keep
        pace = _Pace(conn, self.throttle_write_bps) if self.throttle_write_bps else None
        step = max(1024, int(self.throttle_write_bps or 0) // 20) if pace else 1 << 30
        for piece in pieces:
            for i in range(0, len(piece), step):
                part = piece[i : i + step]
                conn.send(out + (b"%x\r\n%s\r\n" % (len(part), part) if chunked else part))
                out = b""
                if pace:
                    pace.step(len(part))
        conn.send(out + b"0\r\n\r\n" if chunked else out)
        return keep


def _response_head(status: int, reason: str | None, headers: list[tuple[str, str]], close: bool) -> bytes:
    if reason is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class WsEchoServer:
    """A `websockets` sync server in a thread, echoing every message (or running `handler`).

    Records each handshake's request headers (`.handshakes`, lists of (name, value)), the
    paths, and the close codes the clients sent (`.close_codes`).
    """

    def __init__(self, handler: Callable[[Any], None] | None = None, *, max_size: int | None = None,
                 compression: str | None = None, host: str = "127.0.0.1", **serve_kwargs: Any) -> None:
        self.connections = Counter()
        self.messages = Counter()
        self.handshakes: list[list[tuple[str, str]]] = []
        self.paths: list[str] = []
        self.close_codes: list[int | None] = []
        self._handler = handler
        serve_kwargs.setdefault("ping_interval", None)
        serve_kwargs.setdefault("close_timeout", 2)
        self.server = serve(self._handle, host, 0, max_size=max_size, compression=compression, **serve_kwargs)
        self.host = host
        self.port: int = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, ws: Any) -> None:
        self.connections.add()
        self.handshakes.append(list(ws.request.headers.raw_items()))
        self.paths.append(ws.request.path)
        try:
            if self._handler is not None:
                self._handler(ws)
            else:
                for message in ws:
                    self.messages.add()
                    ws.send(message)
        except Exception:  # a closed connection ends the echo either way
            pass
        finally:
            rcvd = getattr(ws.protocol, "close_rcvd", None)
            self.close_codes.append(rcvd.code if rcvd is not None else None)


@dataclass
class Tunnel:
    """One upgraded connection of an UpgradeBackend."""

    head: bytes  # the request head that asked for it
    received: bytearray = field(default_factory=bytearray)  # first record_limit bytes
    received_bytes: int = 0
    ended: str = ""  # "eof", "reset", "stopped" or "error" once over
    eof: threading.Event = field(default_factory=threading.Event)  # the client's FIN arrived
    done: threading.Event = field(default_factory=threading.Event)  # the tunnel is over


class UpgradeBackend(_Server):
    """Answers a request with Upgrade by 101, then relays raw bytes.

    The 101 carries `Upgrade: <token>` (the first one offered unless `token` is given) and
    `Connection: upgrade`, plus `extra_headers`; `early_data` goes in the same send.
    mode "echo": echo every byte; on the client's FIN, shut down the write side.
    mode "server_first": send `server_data`, shut down the write side, then read (and
    record) until the client's FIN.
    `reset_after`: reset the tunnel once it has received that many bytes.
    `always_101`: answer 101 even to a request without Upgrade (a 101 nobody asked for).
    Requests without Upgrade get 200 "no upgrade\\n" on a keep-alive connection.
    """

    def __init__(self, *, token: str | None = None, early_data: bytes = b"",
                 mode: Literal["echo", "server_first"] = "echo", server_data: bytes = b"",
                 reset_after: int | None = None, always_101: bool = False,
                 extra_headers: Iterable[tuple[str, str]] = (), record_limit: int = 1 << 20,
                 host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.token = token
        self.early_data = early_data
        self.mode = mode
        self.server_data = server_data
        self.reset_after = reset_after
        self.always_101 = always_101
        self.extra_headers = list(extra_headers)
        self.record_limit = record_limit
        self.requests: list[Request] = []
        self.tunnels: list[Tunnel] = []

    def handle(self, conn: _Conn) -> None:
        reader = _Reader(conn)
        while (head := reader.head()) is not None:
            req = _parse_head(head, conn.index)
            self.requests.append(req)
            offered = [t.strip() for v in req.header_values("upgrade") for t in v.split(",") if t.strip()]
            if offered or self.always_101:
                token = self.token or (offered[0] if offered else "websocket")
                lines = ["HTTP/1.1 101 Switching Protocols", f"Upgrade: {token}", "Connection: upgrade"]
                lines += [f"{k}: {v}" for k, v in self.extra_headers]
                conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.early_data)
                tunnel = Tunnel(head)
                self.tunnels.append(tunnel)
                try:
                    self._tunnel(conn, tunnel, bytes(reader.buf))
                except _Abort:
                    tunnel.ended = "reset" if conn.reset_requested else "stopped"
                    raise
                except ConnectionResetError:
                    tunnel.ended = "reset"
                except OSError:
                    tunnel.ended = "error"
                finally:
                    tunnel.done.set()
                return
            cl = req.header("content-length")
            if cl and cl.isdigit():
                n = int(cl)
                while n:
                    n -= len(reader.some(n))
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nno upgrade\n")

    def _tunnel(self, conn: _Conn, tunnel: Tunnel, pending: bytes) -> None:
        def take(data: bytes) -> None:
            room = self.record_limit - len(tunnel.received)
            if room > 0:
                tunnel.received += data[:room]
            tunnel.received_bytes += len(data)
            if self.reset_after is not None and tunnel.received_bytes >= self.reset_after:
                conn.reset_requested = True

        if self.mode == "server_first":
            conn.send(self.server_data)
            conn.shutdown_write()
        data = pending
        while True:
            if data:
                take(data)
                if self.mode == "echo":
                    conn.send(data)
            data = conn.recv()
            if not data:
                break
        tunnel.eof.set()
        conn.shutdown_write()
        tunnel.ended = "eof"
