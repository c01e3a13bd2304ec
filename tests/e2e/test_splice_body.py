"""Large response bodies of known length go upstream -> pipe -> client with splice.

The copy path (splice_pipes = 0) must give the same bytes; a pipe lent for a body goes
back to the worker's pool once the body is out, and is closed if the body is cut short.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket

import pytest
from backends import RecordingBackend, Response
from client import Conn
from harness import wait_until

BODY = random.Random(7).randbytes(3 << 20)


def config(port: int) -> str:
    return f"""
[upstream.app]
servers = ["127.0.0.1:{port}"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""


def pipe_fds(proxy) -> int:  # type: ignore[no-untyped-def]
    """Pipe fds held by the workers (each has one wake-up pipe of its own too)."""
    n = 0
    for p in proxy.workers():
        fd_dir = f"/proc/{p.pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                n += os.readlink(f"{fd_dir}/{fd}").startswith("pipe:")
            except OSError:
                continue
    return n


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
    with RecordingBackend(lambda r: Response(body=BODY[: int(r.target.rsplit("/", 1)[1])])) as b:
        yield b


@pytest.mark.parametrize("pipes", [1024, 0], ids=["splice", "copy"])
def test_large_bodies_arrive_whole_on_a_kept_connection(make_proxy, backend, pipes):  # type: ignore[no-untyped-def]
    proxy = make_proxy(config(backend.port), workers=1, master={"splice_pipes": pipes})
    before = pipe_fds(proxy)
    with Conn(proxy.port) as c:
        for size in (3 << 20, 70_000, 1000, 1 << 20):  # spliced, spliced, copied, spliced
            r = c.request("GET", f"/body/{size}")
            assert r.status == 200 and len(r.body) == size
            assert hashlib.sha256(r.body).digest() == hashlib.sha256(BODY[:size]).digest()
    # spliced: one pipe was lent for each body and went back to the idle pool; copied: none
    assert pipe_fds(proxy) == before + (2 if pipes else 0)


def test_spliced_body_then_close(make_proxy, backend):  # type: ignore[no-untyped-def]
    """Connection: close and HTTP/1.0: the whole body, then an orderly close."""
    proxy = make_proxy(config(backend.port), workers=1)
    for request in (b"GET /body/2000000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    b"GET /body/2000000 HTTP/1.0\r\n\r\n"):
        with Conn(proxy.port) as c:
            c.send(request)
            r = c.response()
            assert r.status == 200 and r.body == BODY[:2000000]
            assert c.closed_by_peer() == "eof"


def test_client_leaving_mid_body_closes_the_pipe(make_proxy, backend):  # type: ignore[no-untyped-def]
    proxy = make_proxy(config(backend.port), workers=1)
    with Conn(proxy.port) as c:  # a pipe in the idle pool first, so the count below is steady
        assert len(c.request("GET", "/body/1000000").body) == 1000000
    baseline = sum(p.num_fds() for p in proxy.workers())
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        s.sendall(b"GET /body/3000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        s.recv(1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST with most of the body still in the pipe or the backend
    wait_until(lambda: sum(p.num_fds() for p in proxy.workers()) <= baseline, 5, "worker fds back to baseline")
    with Conn(proxy.port) as c:
        assert c.request("GET", "/body/3000000").body == BODY[:3000000]
