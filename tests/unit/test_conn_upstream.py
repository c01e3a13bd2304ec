"""A pooled upstream connection that the backend reset before it was reused: the request
is retried on a fresh connection (it is idempotent and in memory), and the client, who did
nothing wrong, gets its response. Real loopback sockets and EventLoop, in one process."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from forkproxy.config import load
from forkproxy.conn import ClientConnection
from forkproxy.context import WorkerContext
from forkproxy.loop import IN, EventLoop
from forkproxy.netio import Listener
from forkproxy.routes import Router
from forkproxy.upstream import UpstreamPools

CONFIG = """
[master]
workers = 1
error_log = "stderr"
log_level = "crit"

[upstream.app]
servers = ["127.0.0.1:{port}"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""
REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_reset_pooled_connection_is_retried_not_blamed_on_the_client(tmp_path: Path) -> None:
    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(5)
    path = tmp_path / "forkproxy.toml"
    path.write_text(CONFIG.format(port=backend.getsockname()[1]))
    config = load(str(path))
    loop = EventLoop()
    ctx = WorkerContext(loop, config, Router(config), UpstreamPools(loop), None, None, None)
    listen = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listen.getsockname())
    client.settimeout(5)
    inner, addr = listen.accept()
    inner.setblocking(False)
    conn = ClientConnection(ctx, inner, addr, Listener(listen, ("127.0.0.1", 0)), config.servers[0])

    client.sendall(REQUEST)
    loop.run_once(5)  # connect starts
    first, _ = backend.accept()
    loop.run_once(5)  # request out
    assert first.recv(1000).startswith(b"GET /x")
    first.sendall(RESPONSE)
    loop.run_once(5)
    assert client.recv(1000).endswith(b"ok")  # and the upstream connection is pooled

    first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    first.close()  # RST: the pooled socket is dead, and the loop has not looked yet
    client.sendall(REQUEST)
    conn._on_client(IN)  # the request is handled before the pool's own event is seen
    second, _ = backend.accept()  # retried on a fresh connection
    loop.run_once(5)
    assert second.recv(1000).startswith(b"GET /x")
    second.sendall(RESPONSE)
    loop.run_once(5)
    assert client.recv(1000).endswith(b"ok")
    for s in (client, second, backend, listen):
        s.close()
    loop.close()
