"""One client connection: head -> route -> upstream -> body both ways -> response (layer 3).

State table (a connection is in exactly one state):

    HEAD      reading a request head           -> EXCHANGE (head parsed), LINGER (error/close)
    EXCHANGE  request and response in flight   -> HEAD (keep-alive, also after an answer of
                                                  the proxy's own, see 7), tunnel (101), LINGER, closed
    LINGER    orderly close: FIN sent, discard input until EOF or a short timeout -> closed

Rules:
1. Write first: every send is tried at once; only the unsent rest is kept (in
   `c_out`/`up_out`) and only then is EVENT_WRITE registered.
2. Back-pressure: while bytes wait for the upstream, the client is not read, and
   while bytes wait for the client, the upstream is not read. So each direction holds
   at most one receive's worth of bytes, however big the body or slow the peer.
3. Bytes are received into the worker's one scratch buffer; a connection owns a
   buffer only while bytes are pending. An idle keep-alive connection holds none.
4. Masks and the timer are recomputed in `_refresh()` after every event; epoll is
   touched only when a mask changes. One timer per connection; the timeout it
   enforces follows from the state (see `_timeout`).
5. An upstream that dies mid-response aborts the client (RST): an aborted response
   never looks complete. Every orderly close of the client is a lingering close.
   A response body of known length with at least SPLICE_MIN bytes still to come moves
   upstream -> pipe -> client with os.splice (no copy through Python); while the pipe
   holds bytes, `c_out` is PIPED, so rules 1 and 2 read the same for both paths.
6. A request that fails on a reused upstream connection before any response byte is
   retried once on a fresh connection if it is idempotent and fully in memory.
7. An answer of the proxy's own (an error, or nginx's slash redirect) keeps the
   connection where nginx's would: the head was parsed, the body is entirely read, the
   client asked for keep-alive, the worker is not draining and the status is in
   KEEP_AFTER. Otherwise it is followed by a lingering close. The pipelined requests
   after a kept answer are served in turn, in a loop (never by recursion).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from . import netio
from .errors import BadGateway, BadRequest, BodyTooLarge, HttpError, NotFound
from .http.chunked import ChunkedDecoder
from .http.parser import CHUNKED, CLOSE, LENGTH, NONE, RequestParser, ResponseParser
from .http.writer import error_response, redirect_response
from .log import time_local
from .loop import ERR, IN, OUT, Timer
from .respond import interim_head, response_head, switching_head
from .routes import RequestVars, SlashRedirect, target_host
from .uri import normalize_host
from .tunnel import Tunnel

if TYPE_CHECKING:
    from .config import Server
    from .context import WorkerContext
    from .http.parser import Head
    from .netio import Listener
    from .routes import Route
    from .upstream import UpstreamConn

log = logging.getLogger("forkproxy")

HEAD, EXCHANGE, LINGER, CLOSED = 0, 1, 2, 3
LINGER_TIMEOUT = 2.0
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
RECV_HEAD = 65536
READ_AHEAD = 65536  # bytes kept from a client that sends on before its response (pipelining)
# Answers of the proxy's own after which the connection may stay open (rule 7): nginx's
# ngx_http_special_response_handler drops keep-alive for 400, 413, 414, 500 and 501;
# a 408, or a head it could not parse (431, 505), closes before that.
KEEP_AFTER = frozenset((301, 404, 405, 417, 502, 503, 504))


SPLICE_MIN = 65536  # smaller bodies are copied: one recv/send, no pipe taken
_SPLICE_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)


class _Piped(bytes):
    """The type of PIPED: an empty bytes object with an identity of its own."""


PIPED: bytes = _Piped()  # c_out while the pending bytes are in the splice pipe, not in memory

# Host values seen by this worker and their routing form: clients repeat a handful of
# them, and normalize_host is a regex match. Bounded; cleared when full.
_HOSTS: dict[bytes, bytes] = {}


class ClientConnection:
    __slots__ = (
        "ctx", "sock", "fd", "listener", "servers", "server", "remote", "remote_port", "peer_vars", "parser",
        "state", "timer", "closing", "c_out", "up_out", "pipelined",
        # the current exchange
        "head", "route", "vars", "up", "connecting", "req_left", "req_total", "req_chunks", "req_done",
        "replay", "retried", "rparser", "rhead", "resp_left", "resp_chunks", "dechunk",
        "resp_started", "resp_done", "keep_alive", "status", "sent", "t0", "up_addr", "attempt",
        "pipe", "piped", "up_clean",
    )

    def __init__(self, ctx: WorkerContext, sock: socket.socket, addr: tuple[str, int],
                 listener: Listener, server: Server) -> None:
        self.ctx = ctx
        self.sock = sock
        self.fd = sock.fileno()
        self.listener = listener
        self.servers = ctx.router.servers_at(listener.address)
        self.server = server
        self.remote = addr[0]
        self.remote_port = addr[1]
        # $remote_addr, $remote_port, $server_port: fixed for the connection, encoded once
        self.peer_vars = (addr[0].encode(), b"%d" % addr[1], b"%d" % listener.bound[1])
        self.parser = RequestParser(server.max_request_line, server.max_head_size, server.max_header_count)
        self.state = HEAD
        self.timer = Timer(self._on_timeout)
        self.closing = ctx.draining
        self.c_out: bytes | memoryview | None = None
        self.up_out: bytes | memoryview | None = None
        self.pipelined = b""
        self.up: UpstreamConn | None = None
        self.route: Route | None = None
        self.vars: RequestVars | None = None
        self.head: Head | None = None
        self.rhead: Head | None = None
        self.rparser: ResponseParser | None = None
        self.attempt = 0
        self.connecting = False
        self.req_done = True
        self.resp_done = False
        self.resp_started = False
        self.req_chunks: ChunkedDecoder | None = None
        self.resp_chunks: ChunkedDecoder | None = None
        self.pipe: tuple[int, int] | None = None  # lent by ctx.pipes while a body is spliced
        self.piped = 0  # bytes in that pipe
        ctx.live.add(self)
        ctx.stats.connections += 1
        ctx.loop.add(self.fd, IN, self._on_client)
        ctx.loop.arm(self.timer, ctx.loop.now + server.client_header_timeout)

    # -- events ------------------------------------------------------------------

    def _on_client(self, events: int) -> None:
        try:
            if events & ERR and self.state == EXCHANGE and (self.req_done or self.up_out is not None or self.connecting):
                # epoll reports errors even for fds we do not read: the client reset or vanished
                raise ConnectionResetError("client reset the connection")
            if events & OUT and self.c_out is not None:
                self._flush_client()
            if events & (IN | ERR) and self.state != CLOSED:
                if self.state == HEAD:
                    self._read_head()
                elif self.state == EXCHANGE:
                    if self.req_done:
                        self._read_ahead()
                    elif self.up_out is None and not self.connecting:
                        self._read_body()
                elif self.state == LINGER:
                    self._discard()
        except HttpError as e:
            self._refuse(e)
        except OSError as e:
            self._client_gone(e)
        except Exception:
            self._internal_error()
        if self.state != CLOSED:
            self._refresh()

    def _on_upstream(self, events: int) -> None:
        try:
            if self.connecting:
                err = netio.connect_error(self.up.sock)  # type: ignore[union-attr]
                if err:
                    raise ConnectionRefusedError(err, f"connect to {self.up.addr_text}: {os.strerror(err)}")  # type: ignore[union-attr]
                self.connecting = False
            if events & OUT and self.up_out is not None:
                self._flush_upstream()
            if events & (IN | ERR) and self.state == EXCHANGE and not self.resp_done:
                if self.c_out is None:
                    self._read_response()
                elif events & ERR:
                    raise ConnectionResetError("upstream reset the connection")
        except HttpError as e:
            self._refuse(e)
        except OSError as e:
            self._upstream_failed(e)
        except Exception:
            self._internal_error()
        if self.state != CLOSED:
            self._refresh()

    def _on_timeout(self) -> None:
        state = self.state
        if state == HEAD and not self.parser.buffered and self.c_out is None and netio.input_pending(self.sock):
            # an idle close (keepalive_timeout, the drain grace) crossed by a request already
            # in the kernel (the client checked the connection and sent while this worker was
            # busy): handle the readable event the loop has not delivered yet, not a FIN
            self._on_client(IN)
            return
        try:
            if state == HEAD:
                if self.parser.buffered:
                    self._fail(408, "client_header_timeout reading the request head")
                else:
                    self._linger()
            elif state == EXCHANGE:
                what = self._waiting_for()
                if what == "client_body_timeout":
                    self._fail(408, f"{what} expired")
                elif what == "send_timeout":
                    self._abort(f"{what} expired writing to the client")
                else:
                    self._fail(504, f"{what} expired ({self.up.addr_text if self.up else '-'})")
            elif state == LINGER:
                self._close()
        except Exception:
            self._internal_error()
        if self.state != CLOSED:
            self._refresh()

    def _internal_error(self) -> None:
        """A bug costs this connection, never the worker and all it serves: a 500 if no
        response byte went out yet, else an abort; the connection is not kept either way."""
        log.exception("internal error, client %s", self.remote)
        if self.state == CLOSED:
            return
        self.keep_alive = False
        try:
            self._fail(500, "internal error")
        except Exception:  # the state is too broken to answer: reset
            log.exception("internal error answering client %s", self.remote)
            if self.state != CLOSED:
                self._abort("internal error")

    # -- masks and timer ---------------------------------------------------------

    def _waiting_for(self) -> str:
        if self.c_out is not None:
            return "send_timeout"
        if self.connecting:
            return "proxy_connect_timeout"
        if self.up_out is not None:
            return "proxy_send_timeout"
        if not self.req_done:
            return "client_body_timeout"
        return "proxy_read_timeout"

    def _refresh(self) -> None:
        loop = self.ctx.loop
        state = self.state
        if state == EXCHANGE:
            if self.c_out is not None:
                cmask = OUT
            elif self.req_done:
                # keep reading: pipelined requests and a client that goes away are seen now,
                # and the mask stays as it was in HEAD (no epoll_ctl per request)
                cmask = IN if len(self.pipelined) < READ_AHEAD else 0
            else:
                cmask = IN if self.up_out is None and not self.connecting else 0
            loop.modify(self.fd, cmask)
            up = self.up
            if up is not None:
                umask = OUT if (self.connecting or self.up_out is not None) else 0
                if not self.resp_done and self.c_out is None:
                    umask |= IN
                loop.modify(up.fd, umask)
            loop.arm(self.timer, loop.now + getattr(self.route.location, self._waiting_for()))  # type: ignore[union-attr]
        elif state == HEAD:
            loop.modify(self.fd, OUT if self.c_out is not None else IN)
        elif state == LINGER:
            loop.modify(self.fd, OUT | IN if self.c_out is not None else IN)

    # -- request head ------------------------------------------------------------

    def _read_head(self) -> None:
        try:
            data = self.sock.recv(RECV_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            if self.parser.buffered:
                log.info("client %s closed the connection mid-head", self.remote)
            self._close()
            return
        self._feed_head(data)

    def _feed_head(self, data: bytes) -> None:
        parser = self.parser
        head = parser.feed(data)
        if head is None:
            held = parser.buffered
            if held and held <= len(data):  # a head began in these bytes: its timeout starts
                loop = self.ctx.loop
                loop.arm(self.timer, loop.now + self.server.client_header_timeout)
            return
        self._start(head)

    def _start(self, head: Head) -> None:
        ctx = self.ctx
        ctx.stats.requests += 1
        self.t0 = ctx.loop.now  # monotonic, read once per loop iteration
        self.head = head
        self.state = EXCHANGE
        # route, vars, rhead and up are None here (__init__, _next_request)
        self.connecting = False
        self.req_done = False
        self.req_chunks = None
        self.req_left = 0
        self.req_total = 0
        self.replay = None
        self.retried = False
        self.resp_left = 0
        self.resp_chunks = None
        self.dechunk = False
        self.resp_started = False
        self.resp_done = False
        self.status = 0
        self.sent = 0
        self.up_addr = "-"
        self.keep_alive = head.keep_alive and not self.closing

        host = self._host(head)
        server = self.servers.find(host or None)
        self.server = server
        try:
            route, path, args = ctx.router.resolve(server, head.target)
        except SlashRedirect as e:
            self.route = e.route  # its keepalive_timeout and send_timeout apply, as in nginx
            e.url = self._absolute(e.target, host, head.target.partition(b"?")[2])
            raise
        if route is None:
            raise NotFound(f"no location matches {path[:200]!r}")
        self.route = route
        loc = route.location
        if not loc.keepalive_timeout:
            self.keep_alive = False  # keepalive_timeout 0 disables client keep-alive, as in nginx
        if loc.client_max_body_size and head.framing == LENGTH and head.length > loc.client_max_body_size:
            raise BodyTooLarge(f"body of {head.length} bytes exceeds client_max_body_size {loc.client_max_body_size}")

        remote_addr, remote_port, server_port = self.peer_vars
        v = self.vars = RequestVars(head, host, remote_addr, remote_port, server_port,
                                    route.server_name, b"http", path, args, head.target)
        chunked = head.framing == CHUNKED
        if chunked and loc.proxy_http_version == "1.0":
            raise BadRequest("a chunked request body cannot be sent to an HTTP/1.0 upstream")
        up_head = route.request_head(v, chunked)

        rest = self.parser.take_rest()
        framing = head.framing
        if framing == NONE:
            body = b""
            self.pipelined = rest
            self.req_done = True
        elif framing == LENGTH:
            body = rest[: head.length]
            self.pipelined = rest[head.length:]
            self.req_left = head.length - len(body)
            self.req_done = self.req_left == 0
        else:
            dec = self.req_chunks = ChunkedDecoder()
            consumed, _spans, done = dec.feed(rest)
            self._count_chunked(consumed)
            body = rest[:consumed]
            self.pipelined = rest[consumed:]
            self.req_done = done
        if self.req_done and head.method in IDEMPOTENT:
            self.replay = up_head + body if body else up_head
        self._connect_and_send(up_head + body if body else up_head)

    def _count_chunked(self, n: int) -> None:
        """client_max_body_size for chunked bodies, counted on the wire (framing included)."""
        self.req_total += n
        limit = self.route.location.client_max_body_size  # type: ignore[union-attr]
        if limit and self.req_total > limit:
            raise BodyTooLarge(f"chunked body exceeds client_max_body_size {limit}")

    def _host(self, head: Head) -> bytes:
        headers = head.headers
        lnames = headers.lnames
        count = lnames.count(b"host")
        if count > 1:
            raise BadRequest("several Host fields")
        if not count and head.version == 11:
            raise BadRequest("HTTP/1.1 request without Host")
        host = headers.items[lnames.index(b"host")][1] if count else b""
        if head.target[0] != 0x2F:  # not origin-form: an absolute-form authority wins
            authority = target_host(head.target)
            if authority is not None:
                host = authority
        if not host:
            return b""
        known = _HOSTS.get(host)
        if known is None:
            known = normalize_host(host)
            if len(host) <= 255:  # a DNS name's length: a client cannot pin big values
                if len(_HOSTS) >= 1024:
                    _HOSTS.clear()
                _HOSTS[host] = known
        return known

    def _absolute(self, path: bytes, host: bytes, args: bytes) -> bytes:
        """nginx's absolute_redirect (on by default): http://HOST[:PORT]PATH[?ARGS], HOST
        the request's host (port removed; without one, the address the client reached),
        PORT the port the connection was accepted on, left out when it is 80."""
        if not host:
            local = self.sock.getsockname()[0]
            host = (f"[{local}]" if ":" in local else local).encode()
        port = self.peer_vars[2]
        url = b"http://" + host + (b"" if port == b"80" else b":" + port) + path
        return url + b"?" + args if args else url

    def _read_ahead(self) -> None:
        """The request is complete: keep what the client sends next for later (pipelined
        requests, or the first bytes of an upgraded protocol), and notice if it leaves."""
        try:
            data = self.sock.recv(RECV_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise ConnectionAbortedError("client closed the connection before the response")
        self.pipelined += data

    # -- upstream ----------------------------------------------------------------

    def _connect_and_send(self, data: bytes) -> None:
        route = self.route
        pools = self.ctx.pools
        loop = self.ctx.loop
        up = pools.acquire(route.upstream)  # type: ignore[union-attr]
        if up is not None:
            loop.set_handler(up.fd, self._on_upstream)
            self.connecting = False
        else:
            try:
                up = pools.connect(route.upstream, self.attempt)  # type: ignore[union-attr]
            except OSError as e:
                raise BadGateway(f"upstream {route.upstream.name}: {e}") from e  # type: ignore[union-attr]
            loop.add(up.fd, OUT, self._on_upstream)
            self.connecting = True
        self.up = up
        up.requests += 1
        self.up_addr = up.addr_text
        rparser = self.rparser
        if rparser is None:
            rparser = self.rparser = ResponseParser()  # kept for the connection's next exchanges
        rparser.start(self.head.method)  # type: ignore[union-attr]
        if self.connecting:
            self.up_out = data
            return
        try:
            self._send_upstream(data)
        except OSError as e:  # a pooled connection the backend reset: retry or 502, not "client gone"
            self._upstream_failed(e)

    def _send_upstream(self, data: bytes | memoryview) -> None:
        try:
            n = self.up.sock.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            n = 0
        self.up_out = data[n:] if n < len(data) else None

    def _flush_upstream(self) -> None:
        self._send_upstream(self.up_out)  # type: ignore[arg-type]

    def _read_body(self) -> None:
        view = self.ctx.scratch_view
        size = len(view)
        if self.req_chunks is None:
            size = min(size, self.req_left)
        try:
            n = self.sock.recv_into(view, size)
        except (BlockingIOError, InterruptedError):
            return
        if n == 0:
            raise BadRequest("client closed the connection mid-body")
        data = view[:n]
        if self.req_chunks is None:
            self.req_left -= n
            self.req_done = self.req_left == 0
        else:
            consumed, _spans, done = self.req_chunks.feed(data)
            if consumed < n:
                self.pipelined = bytes(data[consumed:])
                data = data[:consumed]
            self.req_done = done
            self._count_chunked(len(data))
        try:
            self._send_upstream(data)
        except OSError as e:  # the upstream's fault, not the client's
            self._upstream_failed(e)
            return
        if self.up_out is not None:
            self.up_out = bytes(self.up_out)  # the scratch buffer is reused by the next recv

    # -- response ----------------------------------------------------------------

    def _read_response(self) -> None:
        up = self.up
        if self.rhead is None:
            try:
                data = up.sock.recv(RECV_HEAD)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self._upstream_eof()
                return
            self._feed_response(data)
            return
        view = self.ctx.scratch_view
        size = len(view)
        if self.rhead.framing == LENGTH:
            if self.pipe is not None or (self.resp_left >= SPLICE_MIN and self._take_pipe()):
                self._splice_response()
                return
            size = min(size, self.resp_left)
        try:
            n = up.sock.recv_into(view, size)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        if n == 0:
            self._upstream_eof()
            return
        self._relay_response_body(view[:n])

    def _take_pipe(self) -> bool:
        pipes = self.ctx.pipes
        if pipes is None:
            return False
        self.pipe = pipes.get()
        return self.pipe is not None

    def _splice_response(self) -> None:
        """Upstream -> pipe, then write first: pipe -> client (rule 5)."""
        pipe = self.pipe
        try:
            n = os.splice(self.up.fd, pipe[1], min(self.resp_left, self.ctx.pipes.pipe_size),  # type: ignore[union-attr,index]
                          flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        if n == 0:
            self._upstream_eof()
            return
        self.resp_left -= n
        self.resp_done = self.resp_left == 0
        self.sent += n
        self.piped = n
        self.c_out = PIPED
        self._flush_pipe()
        if self.resp_done:
            self._finish()

    def _flush_pipe(self) -> None:
        """Pipe -> client; once the pipe is empty, c_out is None (and the pipe goes back
        to the pool when the body is complete)."""
        try:
            m = os.splice(self.pipe[0], self.fd, self.piped, flags=_SPLICE_FLAGS)  # type: ignore[index]
        except (BlockingIOError, InterruptedError):
            return
        self.piped -= m
        if self.piped == 0:
            self.c_out = None
            if self.resp_done:
                self.ctx.pipes.put(self.pipe)  # type: ignore[union-attr,arg-type]
                self.pipe = None

    def _feed_response(self, data: bytes) -> None:
        rparser = self.rparser
        try:
            head = rparser.feed(data)  # type: ignore[union-attr]
            while head is not None and head.status < 200 and head.status != 101:
                if self.head.version == 11:  # type: ignore[union-attr]
                    self._send_client(interim_head(head))
                head = rparser.feed(b"")  # type: ignore[union-attr]  # the next head, if its bytes are here
        except HttpError as e:
            raise BadGateway(f"bad response from {self.up.addr_text}: {e}") from e  # type: ignore[union-attr]
        if head is None:
            return
        if head.status == 101:
            self._switch(head)
            return
        self.rhead = head
        self.status = head.status
        rest = rparser.take_rest()  # type: ignore[union-attr]
        client_version = self.head.version  # type: ignore[union-attr]
        framing = head.framing
        self.dechunk = framing == CHUNKED and client_version == 10
        self.up_clean = head.keep_alive  # the upstream connection may be pooled after this response
        if framing == CLOSE or self.dechunk or not head.keep_alive or not self.req_done:
            self.keep_alive = False
        if self.closing:
            self.keep_alive = False
        out = response_head(head, client_version, self.keep_alive, self.dechunk, self.route.rewrite, self.vars)  # type: ignore[union-attr]
        self.resp_started = True
        if framing == NONE:
            self.resp_done = True
        elif framing == LENGTH:
            self.resp_left = head.length
            self.resp_done = head.length == 0
        elif framing == CHUNKED:
            self.resp_chunks = ChunkedDecoder()
        if rest and not self.resp_done:
            out += self._body_part(rest)  # head and first body bytes in one send
        self._send_client(out)
        if self.resp_done:
            self._finish()

    def _relay_response_body(self, data: memoryview) -> None:
        self._send_client(self._body_part(data))
        if self.c_out is not None and isinstance(self.c_out, memoryview):
            self.c_out = bytes(self.c_out)  # the scratch buffer is reused by the next recv
        if self.resp_done:
            self._finish()

    def _body_part(self, data: bytes | memoryview) -> bytes | memoryview:
        """The bytes of `data` to forward to the client; advances the response framing."""
        head = self.rhead
        framing = head.framing  # type: ignore[union-attr]
        if framing == LENGTH:
            n = len(data)
            if n > self.resp_left:
                data = data[: self.resp_left]  # bytes beyond the declared length: never forwarded
                self.up_clean = False
                n = self.resp_left
            self.resp_left -= n
            self.resp_done = self.resp_left == 0
        elif framing == CHUNKED:
            consumed, spans, done = self.resp_chunks.feed(data)  # type: ignore[union-attr]
            self.resp_done = done
            if consumed < len(data):
                self.up_clean = False
            data = data[:consumed]
            if self.dechunk:
                out = b"".join([data[a:b] for a, b in spans])
                self.sent += len(out)
                return out
        self.sent += len(data)
        return data

    def _upstream_eof(self) -> None:
        rhead = self.rhead
        if rhead is None:
            if self.rparser.buffered:  # type: ignore[union-attr]
                raise BadGateway(f"upstream {self.up.addr_text} closed mid-head")  # type: ignore[union-attr]
            if self._retry():
                return
            raise BadGateway(f"upstream {self.up.addr_text} closed the connection before responding")  # type: ignore[union-attr]
        if rhead.framing == CLOSE:
            self.resp_done = True
            self._finish()
            return
        self._abort(f"upstream {self.up.addr_text} closed mid-body")  # type: ignore[union-attr]

    def _upstream_failed(self, e: BaseException) -> None:
        if self.state != EXCHANGE or self.up is None:
            return
        if self.rhead is None and not self.resp_started:
            if self._retry():
                return
            if self.connecting:
                self._fail(502, f"{e}")
            else:
                self._fail(502, f"upstream {self.up.addr_text}: {e}")
            return
        self._abort(f"upstream {self.up.addr_text}: {e}")

    def _retry(self) -> bool:
        """Once, for an idempotent request fully in memory that failed on a reused connection."""
        up = self.up
        if self.retried or self.replay is None or up is None or not (up.reused or self.connecting):
            return False
        if self.connecting:
            # a refused connect: try the next server of the group, once per server
            if self.attempt + 1 >= len(self.route.upstream.servers):  # type: ignore[union-attr]
                return False
            self.attempt += 1
        else:
            self.retried = True
        up.close()
        self.up = None
        self.up_out = None
        self._connect_and_send(self.replay)
        return True

    def _switch(self, head: Head) -> None:
        """A 101: tunnel if the client asked for that protocol and the location allows it."""
        req = self.head
        offered = req.upgrade  # type: ignore[union-attr]
        chosen = head.upgrade
        loc = self.route.location  # type: ignore[union-attr]
        if not offered or not chosen:
            raise BadGateway(f"upstream {self.up.addr_text} sent 101 to a request that did not ask to upgrade")  # type: ignore[union-attr]
        token = chosen[0]
        name = token.split(b"/", 1)[0]
        if token not in offered and name not in {t.split(b"/", 1)[0] for t in offered}:
            raise BadGateway(f"upstream {self.up.addr_text} switched to {token!r}, which the client did not offer")  # type: ignore[union-attr]
        if name.decode("latin-1") not in loc.upgrade_protocols or name == b"h2c":
            raise BadGateway(f"upgrade to {token!r} is not in upgrade_protocols of location {loc.path!r}")
        self.status = 101
        out = switching_head(head)
        to_client = out + self.rparser.take_rest()  # type: ignore[union-attr]
        to_upstream = self.pipelined
        if self.up_out is not None:
            to_upstream = bytes(self.up_out) + to_upstream
        ctx = self.ctx
        up = self.up
        self.up = None
        ctx.loop.remove(up.fd)  # type: ignore[union-attr]
        self._detach()
        self._access_log()
        Tunnel(ctx, self.sock, up.sock, location=loc.path, client_addr=f"{self.remote}:{self.remote_port}",  # type: ignore[union-attr]
               upstream_addr=up.addr_text, protocol=name.decode("latin-1"),  # type: ignore[union-attr]
               idle_timeout=loc.tunnel_timeout or loc.proxy_read_timeout, fin_timeout=loc.tunnel_fin_timeout,
               send_timeout=loc.send_timeout, proxy_send_timeout=loc.proxy_send_timeout,
               to_upstream=to_upstream, to_client=to_client)

    # -- to the client -----------------------------------------------------------

    def _send_client(self, data: bytes | memoryview) -> None:
        if self.c_out is not None:
            self.c_out = bytes(self.c_out) + bytes(data)
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        self.c_out = data[n:] if n < len(data) else None

    def _flush_client(self) -> None:
        data = self.c_out
        if data is PIPED:
            self._flush_pipe()
        else:
            try:
                n = self.sock.send(data)  # type: ignore[arg-type]
            except (BlockingIOError, InterruptedError):
                n = 0  # the kernel's buffer is full: the rest stays pending
            self.c_out = data[n:] if n < len(data) else None  # type: ignore[index,arg-type]
        if self.c_out is None:
            if self.state == EXCHANGE and self.resp_done:
                self._finish()
            elif self.state == LINGER:
                self._linger()
            elif self.pipelined and self.state == HEAD:
                # a kept answer of the proxy's own is out: now the requests sent after it
                data, self.pipelined = self.pipelined, b""
                self._feed_head(data)

    def _finish(self) -> None:
        """The response is complete (it may still be in c_out): settle both sides."""
        up = self.up
        if up is not None:
            rhead = self.rhead
            clean = (self.req_done and rhead is not None and self.up_clean
                     and rhead.framing != CLOSE and self.up_out is None)
            self.up = None
            if clean:
                self.ctx.pools.release(up, self.route.upstream)  # type: ignore[union-attr]
            else:
                up.close()
        if self.c_out is not None:
            return  # wait for the client to take the rest; _flush_client calls back
        if self.ctx.access_log is not None:
            self._access_log()
        if not self.keep_alive:
            self._linger()
            return
        idle = self.ctx.config.master.drain_idle_grace if self.closing else self.route.location.keepalive_timeout  # type: ignore[union-attr]
        self._next_request(idle)

    def _next_request(self, idle: float) -> None:
        """Back to HEAD for the next request on this connection, closed after `idle`
        without one; requests already pipelined are parsed now (and may raise)."""
        self.state = HEAD
        self.head = None
        self.rhead = None
        self.route = None
        self.vars = None
        loop = self.ctx.loop
        loop.arm(self.timer, loop.now + idle)
        if self.pipelined and self.c_out is None:  # else _flush_client feeds them once it is out
            data, self.pipelined = self.pipelined, b""
            self._feed_head(data)

    # -- errors and closing --------------------------------------------------------

    def _refuse(self, e: HttpError) -> None:
        """An HttpError ends the exchange: answer it (a SlashRedirect carries its URL)."""
        self._fail(e.status, str(e) or type(e).__name__, e.url if isinstance(e, SlashRedirect) else b"")

    def _fail(self, status: int, why: str, location: bytes = b"") -> None:
        """Answer with a small response of the proxy's own (an error, or a 301 to
        `location`) if nothing was sent yet, else abort. When the connection stays open
        (rule 7), the requests pipelined after this one are served, and those that fail
        at once are answered here in turn."""
        while True:
            try:
                self._answer(status, why, location)
                return
            except HttpError as e:
                status, why = e.status, str(e) or type(e).__name__
                location = e.url if isinstance(e, SlashRedirect) else b""
            except OSError as e:  # sending a pipelined request upstream failed at once
                self._upstream_failed(e)
                return

    def _answer(self, status: int, why: str, location: bytes) -> None:
        if self.state in (LINGER, CLOSED):
            return
        if self.state == EXCHANGE and self.resp_started:
            self._abort(why)
            return
        head = self.head
        if status != 301:
            log.error("%d: %s, client %s, request %r", status, why, self.remote,
                      head.method + b" " + head.target[:200] if head is not None else b"-")
        if self.up is not None:
            self.up.close()
            self.up = None
        self.status = status
        self.state = EXCHANGE
        keep = head is not None and self._keeps(status)
        out = redirect_response(location, keep_alive=keep) if location else error_response(status, keep_alive=keep)
        body_at = out.index(b"\r\n\r\n") + 4
        if head is not None and head.method == b"HEAD":
            out = out[:body_at]
        self.sent = len(out) - body_at  # the access log's body bytes
        try:
            self._send_client(out)  # after any interim (1xx) head still pending
        except OSError:
            self._close()
            return
        if head is not None:
            self._access_log()
        if not keep:
            self._linger()
            return
        route = self.route
        # a failure of the next pipelined request raises here: _fail answers it in turn
        self._next_request((route.location if route is not None else self.server).keepalive_timeout)

    def _keeps(self, status: int) -> bool:
        """Rule 7: whether the connection stays open after answering `status` ourselves."""
        if not self.keep_alive or self.closing or status not in KEEP_AFTER:
            return False
        route = self.route
        if not (route.location if route is not None else self.server).keepalive_timeout:
            return False  # keepalive_timeout 0 disables client keep-alive
        if self.req_done:
            return True
        if self.vars is not None:
            return False  # the body is being relayed and some of it is still unread
        # answered before the body was looked at (404, 301): the request's framing is
        # known, so a body that has arrived whole is skipped; what follows it is kept
        head = self.head
        rest = self.parser.take_rest()
        framing = head.framing  # type: ignore[union-attr]
        if framing == NONE:
            end = 0
        elif framing == LENGTH:
            end = head.length  # type: ignore[union-attr]
            if len(rest) < end:
                return False
        else:
            try:
                end, _spans, done = ChunkedDecoder().feed(rest)
            except HttpError:
                return False
            if not done:
                return False
        self.pipelined = rest[end:]
        return True

    def _abort(self, why: str) -> None:
        log.error("aborting client %s: %s", self.remote, why)
        if self.up is not None:
            self.up.abort()
            self.up = None
        self._detach()
        netio.abort(self.sock)

    def _client_gone(self, e: BaseException) -> None:
        log.info("client %s: %s", self.remote, e)
        if self.up is not None:
            self.up.abort()  # do not pool a connection with an unfinished exchange
            self.up = None
        self._close()

    def _linger(self) -> None:
        """Orderly close: FIN after the pending output, then read and discard until EOF."""
        self.state = LINGER
        loop = self.ctx.loop
        if self.c_out is not None:
            # the rest of the output first (bounded by send_timeout), then the FIN
            loop.arm(self.timer, loop.now + (self.route.location.send_timeout if self.route else LINGER_TIMEOUT))
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close()
            return
        loop.arm(self.timer, loop.now + LINGER_TIMEOUT)

    def _discard(self) -> None:
        if self.c_out is not None:
            return  # still flushing; EVENT_IN only tells the client sent more
        view = self.ctx.scratch_view
        try:
            n = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if n == 0:
            self._close()

    def _detach(self) -> None:
        """Leave the loop and the live set without closing the socket (abort/tunnel)."""
        ctx = self.ctx
        if self.pipe is not None:  # a body cut short: the pipe may hold bytes of it
            ctx.pipes.kill(self.pipe)  # type: ignore[union-attr]
            self.pipe = None
        ctx.loop.remove(self.fd)
        ctx.loop.disarm(self.timer)
        ctx.live.discard(self)
        ctx.stats.connections -= 1
        self.state = CLOSED

    def _close(self) -> None:
        if self.state == CLOSED:
            return
        if self.up is not None:
            self.up.close()
            self.up = None
        self._detach()
        self.sock.close()

    def _access_log(self) -> None:
        alog = self.ctx.access_log
        head = self.head
        if alog is None or head is None:
            return
        h = head.headers
        alog.write(
            f'{self.remote} - - [{time_local()}] "{head.method.decode("latin-1")} {head.target.decode("latin-1")} '
            f'HTTP/{head.version // 10}.{head.version % 10}" {self.status} {self.sent} '
            f'"{(h.get(b"referer") or b"-").decode("latin-1")}" "{(h.get(b"user-agent") or b"-").decode("latin-1")}" '
            f'{self.up_addr} {time.monotonic() - self.t0:.3f}\n'
        )

    # -- worker hooks ------------------------------------------------------------

    def drain(self) -> None:
        """The worker drains: finish the exchange with Connection: close; idle ones go after a grace."""
        self.closing = True
        if self.state == EXCHANGE and not self.resp_started:
            self.keep_alive = False
        if self.state == HEAD and not self.parser.buffered and self.c_out is None:
            loop = self.ctx.loop
            loop.arm(self.timer, loop.now + self.ctx.config.master.drain_idle_grace)

    def shutdown(self, reason: str) -> None:
        if self.state == EXCHANGE and self.resp_started:
            self._abort(reason)
        else:
            self._close()


