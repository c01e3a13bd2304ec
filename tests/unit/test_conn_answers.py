"""ClientConnection's own answers over real loopback sockets and a real EventLoop, in one
process: a kept error whose bytes the kernel cannot take at once is finished before the
requests pipelined after it are read, in order, with nothing lost or duplicated."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkproxy.config import load
from forkproxy.conn import HEAD, ClientConnection
from forkproxy.context import WorkerContext
from forkproxy.http.writer import error_response
from forkproxy.loop import EventLoop
from forkproxy.netio import Listener
from forkproxy.routes import Router
from forkproxy.upstream import UpstreamPools

CONFIG = """
[master]
workers = 1
error_log = "stderr"
log_level = "crit"

[upstream.app]
servers = ["127.0.0.1:9"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/ws/"
proxy_pass = "http://app"
"""


class Rig:
    def __init__(self, tmp: Path) -> None:
        path = tmp / "forkproxy.toml"
        path.write_text(CONFIG)
        config = load(str(path))
        self.loop = EventLoop()
        ctx = WorkerContext(self.loop, config, Router(config), UpstreamPools(self.loop), None, None, None)
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.client = socket.socket()
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        self.client.connect(self.listen.getsockname())
        inner, addr = self.listen.accept()
        inner.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # no autotuning: push-back comes early
        inner.setblocking(False)
        self.port = self.listen.getsockname()[1]
        self.conn = ClientConnection(ctx, inner, addr, Listener(self.listen, ("127.0.0.1", 0)), config.servers[0])

    def exchange(self, raw: bytes) -> bytes:
        """Send `raw` (the client is non-blocking by now) and run the loop until one small
        page of the proxy's own is back."""
        self.client.sendall(raw)
        reply = b""
        deadline = time.monotonic() + 5
        while b"</html>\r\n" not in reply and time.monotonic() < deadline:
            self.loop.run_once(0.01)
            try:
                reply += self.client.recv(8192)
            except BlockingIOError:
                pass
        return reply

    def close(self) -> None:
        for s in (self.client, self.listen):
            s.close()
        self.loop.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_pipelined_errors_behind_a_full_socket_buffer(rig: Rig) -> None:
    n = 400
    rig.client.sendall(b"".join(b"GET /nowhere/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(n)))
    rig.client.setblocking(False)
    one = error_response(404, keep_alive=True)
    want = len(one) * n
    got = bytearray()
    waited_with_pending = False
    deadline = time.monotonic() + 10
    while len(got) < want and time.monotonic() < deadline:
        rig.loop.run_once(0.01)
        conn = rig.conn
        if conn.state == HEAD and conn.c_out is not None and conn.pipelined:
            waited_with_pending = True  # an answer still being written, requests queued behind it
            time.sleep(0.005)  # let the kernel buffers fill before reading some
        try:
            got += rig.client.recv(8192)
        except BlockingIOError:
            pass
    assert waited_with_pending, "the socket buffer never pushed back; the test proves nothing"
    assert bytes(got) == one * n  # every answer whole, in order, each once
    assert rig.conn.state == HEAD and not rig.conn.pipelined
    # the connection is still open and serves the next request
    reply = rig.exchange(b"GET /nowhere/last HTTP/1.1\r\nHost: t\r\n\r\n")
    assert reply == one


def test_slash_redirect_answer(rig: Rig) -> None:
    rig.client.setblocking(False)
    reply = rig.exchange(b"GET /ws?a=1 HTTP/1.1\r\nHost: Example.COM:8443\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    # nginx: the request's host without its port, then the port the connection came in on
    assert b"\r\nLocation: http://example.com:%d/ws/?a=1\r\n" % rig.port in reply
    assert b"\r\nConnection: keep-alive\r\n" in reply
    assert rig.conn.state == HEAD
    reply = rig.exchange(b"GET //ws HTTP/1.0\r\n\r\n")  # no Host: the address reached
    assert b"\r\nLocation: http://127.0.0.1:%d/ws/\r\n" % rig.port in reply
    assert b"\r\nConnection: close\r\n" in reply


def test_a_bug_answers_500_closes_that_connection_and_spares_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(tmp_path)
    ctx = rig.conn.ctx
    other_client = socket.create_connection(rig.listen.getsockname())
    inner, addr = rig.listen.accept()
    inner.setblocking(False)
    other = ClientConnection(ctx, inner, addr, Listener(rig.listen, ("127.0.0.1", 0)), ctx.config.servers[0])
    resolve = Router.resolve

    def buggy(self: Router, server: object, target: bytes) -> object:
        if target == b"/bug":
            raise RuntimeError("a bug")
        return resolve(self, server, target)  # type: ignore[arg-type]
    monkeypatch.setattr(Router, "resolve", buggy)

    reply = rig.exchange(b"GET /bug HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 500 ") and b"Connection: close" in reply
    rig.client.settimeout(5)
    assert rig.client.recv(100) == b""  # an orderly close after the answer
    rig.client.close()
    deadline = time.monotonic() + 5
    while rig.conn in ctx.live and time.monotonic() < deadline:
        rig.loop.run_once(0.01)
    assert rig.conn not in ctx.live and other in ctx.live

    other_client.sendall(b"GET /none HTTP/1.1\r\nHost: a\r\n\r\n")
    other_client.setblocking(False)
    got = b""
    while b"</html>\r\n" not in got and time.monotonic() < deadline + 5:
        rig.loop.run_once(0.01)
        try:
            got += other_client.recv(8192)
        except BlockingIOError:
            pass
    assert got.startswith(b"HTTP/1.1 404 ") and other in ctx.live
    other_client.close()


@pytest.mark.parametrize("draining", [False, True])
def test_a_request_that_crosses_the_idle_close_is_served(tmp_path: Path, draining: bool) -> None:
    # the client checked the idle connection and sent; the worker's idle timer fires before
    # it looked at the socket again: the request is answered, not met with a FIN
    rig = Rig(tmp_path)
    if draining:
        rig.conn.drain()
    rig.client.sendall(b"GET /none HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.05)  # the bytes are in the proxy's socket; no loop turn has seen them
    rig.conn._on_timeout()
    reply = b""
    rig.client.settimeout(5)
    while b"</html>\r\n" not in reply:
        chunk = rig.client.recv(8192)
        if not chunk:
            break
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 404 ")
    assert (b"Connection: close" in reply) == draining
