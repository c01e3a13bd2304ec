"""`python -m bench profile --instructions`: user-space CPU instructions per proxied request.

A timing on this kind of machine moves by tens of percent from one minute to the next;
an instruction count does not. This module drives one forkproxy ClientConnection in one
process, with real loopback sockets: a client sends a keep-alive GET, the worker's event
loop runs, an in-process backend (a blocking socket) answers with an nginx-like 200 with a
13-byte body, the loop runs again, the client reads the response. Nothing else runs in
the process, so the instructions executed per exchange are the same on every run.

With `unique=True` every response head is new (an `X-Request-Id` field differs), so the
worker's cache of repeated response heads (http/parser.py) never hits: the figure a
backend that stamps each response gets.

`count()` runs that loop under `valgrind --tool=cachegrind` (no cache simulation) for two
request counts and returns the difference divided by the difference of counts: start-up,
imports and warm-up cancel out. The figure includes the client's and backend's own socket
calls (a constant few thousand instructions) and excludes the kernel.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\nhello, bench\n")
CONFIG = """
[master]
workers = 1
access_log = "off"
error_log = "stderr"

[upstream.app]
servers = ["127.0.0.1:{port}"]
keepalive = 8

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""


def exchanges(n: int, warm: int = 200, unique: bool = False) -> int:
    """Proxy `warm` then `n` requests through one in-process ClientConnection; returns n.

    Raises AssertionError if a response does not arrive whole.
    """
    from forkproxy.config import load
    from forkproxy.conn import ClientConnection
    from forkproxy.context import WorkerContext
    from forkproxy.loop import EventLoop
    from forkproxy.netio import Listener
    from forkproxy.routes import Router
    from forkproxy.upstream import UpstreamPools

    backend = socket.create_server(("127.0.0.1", 0))
    listen = socket.create_server(("127.0.0.1", 0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forkproxy.toml"
        path.write_text(CONFIG.format(port=backend.getsockname()[1]))
        config = load(str(path))
    loop = EventLoop()
    ctx = WorkerContext(loop, config, Router(config), UpstreamPools(loop), None, None, None)
    client = socket.create_connection(listen.getsockname())
    accepted, addr = listen.accept()
    for s in (client, accepted):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    accepted.setblocking(False)
    conn = ClientConnection(ctx, accepted, addr, Listener(listen, ("127.0.0.1", 0)), config.servers[0])
    upstream: socket.socket | None = None
    try:
        for i in range(warm + n):
            client.send(REQUEST)
            loop.run_once(5)  # the request is read, routed and sent (or a connect starts)
            if conn.connecting:  # a new upstream connection (first request, keepalive_requests)
                if upstream is not None:
                    upstream.close()
                upstream, _ = backend.accept()
                loop.run_once(5)  # connected: the request goes out
            assert upstream is not None
            upstream.recv(65536)
            if unique:
                upstream.send(RESPONSE.replace(b"\r\n\r\n", b"\r\nX-Request-Id: %08d\r\n\r\n" % i, 1))
            else:
                upstream.send(RESPONSE)
            loop.run_once(5)  # the response is read and relayed
            got = client.recv(65536)
            assert got.endswith(b"hello, bench\n") and got.startswith(b"HTTP/1.1 200"), got[:200]
    finally:
        opened: list[socket.socket | None] = [client, upstream, backend, listen]
        for end in opened:
            if end is not None:
                end.close()
        loop.close()
    return n


def _instructions(n: int, unique: bool) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, "-m", "bench.instructions", str(n)] + (["unique"] if unique else []),
        capture_output=True, text=True, timeout=600, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"})  # the same start-up work in every run
    m = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def count(low: int = 500, high: int = 2500, unique: bool = False) -> float:
    """Instructions per request: (I(high) - I(low)) / (high - low), under cachegrind."""
    return (_instructions(high, unique) - _instructions(low, unique)) / (high - low)


if __name__ == "__main__":
    exchanges(int(sys.argv[1]), unique=sys.argv[2:] == ["unique"])
