"""Answers of the proxy's own keep the connection where nginx's would: after the whole
request was read, for 404, 502 and 504 (and the slash redirect), when the client asked
for keep-alive; framing errors, unread bodies and clients that did not ask still close."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from backends import RecordingBackend, Response
from client import Conn
from harness import wait_until

BODY = """
[upstream.app]
servers = ["127.0.0.1:{port}"]

[upstream.dead]
servers = ["127.0.0.1:{dead}"]

[[server]]
listen = ["127.0.0.1:0"]
client_header_timeout = "2s"
keepalive_timeout = "10s"

[[server.location]]
path = "/app/"
proxy_pass = "http://app"
proxy_read_timeout = "1s"
client_body_timeout = "1s"
client_max_body_size = "1k"

[[server.location]]
path = "/dead/"
proxy_pass = "http://dead"
"""


def worker_fds(proxy) -> int:  # type: ignore[no-untyped-def]
    return sum(p.num_fds() for p in proxy.workers())


def free_port() -> tuple[socket.socket, int]:
    """A bound socket that does not listen yet: connections to it are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A backend answering /app/slow after 3 s, a dead upstream, one worker."""
    from harness import Proxy

    def handler(req):  # type: ignore[no-untyped-def]
        if req.target.startswith("/app/slow"):
            time.sleep(3)
        return Response(body=b"ok " + req.target.encode())

    backend = RecordingBackend(handler).start()
    dead_sock, dead = free_port()
    proxy = Proxy(tmp_path_factory.mktemp("kept"), BODY.format(port=backend.port, dead=dead), workers=1,
                  master={"access_log": "access.log"}).start()
    yield proxy, backend
    proxy.kill_all()
    backend.stop()
    dead_sock.close()


def access_lines(proxy) -> list[str]:  # type: ignore[no-untyped-def]
    path = proxy.dir / "access.log"
    return path.read_text().splitlines() if path.exists() else []


def test_404_then_200_on_the_same_connection(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, backend = shared
    before = len(access_lines(proxy))
    with Conn(proxy.port) as c:
        r = c.request("GET", "/nowhere")
        assert r.status == 404 and r.header("connection") == "keep-alive"
        page = len(r.body)
        r = c.request("GET", "/app/x")
        assert r.status == 200 and r.body == b"ok /app/x"
        assert c.request("HEAD", "/nowhere").status == 404
    wait_until(lambda: len(access_lines(proxy)) >= before + 3, 5, "three access log lines")
    time.sleep(0.2)  # a fourth line (a duplicate) would have been written by now
    lines = access_lines(proxy)[before:]
    assert len(lines) == 3, lines  # one line per request, the 404s included
    # the body bytes sent, as nginx's $body_bytes_sent: the error page's, none for HEAD
    assert f'"GET /nowhere HTTP/1.1" 404 {page} ' in lines[0] and page > 0
    assert '"GET /app/x HTTP/1.1" 200 9 ' in lines[1]
    assert '"HEAD /nowhere HTTP/1.1" 404 0 ' in lines[2]


def test_502_from_a_dead_upstream_then_200_on_the_same_connection(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("GET", "/dead/x")
        assert r.status == 502 and r.header("connection") == "keep-alive"
        r = c.request("POST", "/dead/x", body=b"a whole body")  # read entirely: still kept
        assert r.status == 502 and r.header("connection") == "keep-alive"
        assert c.request("GET", "/app/y").status == 200


def test_502_then_the_same_upstream_once_it_is_up(make_proxy) -> None:  # type: ignore[no-untyped-def]
    sock, port = free_port()
    with sock:
        proxy = make_proxy(f'[[server]]\nlisten = ["127.0.0.1:0"]\n[[server.location]]\npath = "/"\n'
                           f'proxy_pass = "http://127.0.0.1:{port}"\n', workers=1)
        with Conn(proxy.port) as c:
            r = c.request("GET", "/first")
            assert r.status == 502 and r.header("connection") == "keep-alive"
            sock.listen(1)  # the backend comes up

            def serve() -> None:
                conn, _ = sock.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nup")

            t = threading.Thread(target=serve, daemon=True)
            t.start()
            r = c.request("GET", "/second")
            assert (r.status, r.body) == (200, b"up")
            t.join(5)


def test_504_then_200_on_the_same_connection(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("GET", "/app/slow")
        assert r.status == 504 and r.header("connection") == "keep-alive"
        assert c.request("GET", "/app/z").status == 200


def test_head_request_gets_only_the_head_and_the_connection_stays(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("HEAD", "/nowhere")
        assert r.status == 404 and r.header("connection") == "keep-alive"
        assert int(r.header("content-length") or 0) > 0
        r = c.request("GET", "/app/h")
        assert r.status == 200 and r.body == b"ok /app/h"  # no stray 404 body in between


def test_pipelined_requests_after_an_error_are_served(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        c.send(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /app/p1 HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /also-nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /app/p2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.response().status == 404
        r = c.response()
        assert (r.status, r.body) == (200, b"ok /app/p1")
        assert c.response().status == 404
        r = c.response()
        assert (r.status, r.body) == (200, b"ok /app/p2")


def test_many_pipelined_errors_are_answered_in_order(shared) -> None:  # type: ignore[no-untyped-def]
    """Two thousand 404s in one write (over a thousand per read): answered one after the
    other by a loop, not by recursion, and the connection still serves afterwards."""
    proxy, _ = shared
    n = 2000
    with Conn(proxy.port, timeout=20) as c:
        sender = threading.Thread(target=c.send, args=(b"".join(
            b"GET /nowhere/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(n)),), daemon=True)
        sender.start()
        time.sleep(0.2)
        for _ in range(n):
            r = c.response()
            assert r.status == 404 and r.header("connection") == "keep-alive"
        sender.join(10)
        assert c.request("GET", "/app/last").status == 200
    assert "recursion" not in proxy.log()


def test_404_with_a_body_that_arrived_whole_keeps_the_connection(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("POST", "/nowhere", body=b"x" * 100)
        assert r.status == 404 and r.header("connection") == "keep-alive"
        r = c.request("POST", "/nowhere", body=b"3\r\nabc\r\n0\r\n\r\n", headers={"Transfer-Encoding": "chunked"})
        assert r.status == 404 and r.header("connection") == "keep-alive"
        assert c.request("GET", "/app/b").status == 200


def test_404_with_an_unread_body_closes(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        c.send(b"POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        r = c.response()
        assert r.status == 404 and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"


def test_502_while_the_body_is_still_unread_closes(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        c.send(b"POST /dead/x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        r = c.response()
        assert r.status == 502 and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"


def test_malformed_request_still_closes(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        assert c.request("GET", "/app/ok").status == 200
        c.send(b"GET /app/x HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n")
        r = c.response()
        assert r.status == 400 and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"
    with Conn(proxy.port) as c:
        c.send(b"GET /app/x HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n")
        r = c.response()
        assert r.status == 400 and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"


@pytest.mark.parametrize("body_sent", [False, True])
def test_413_still_closes(shared, body_sent: bool) -> None:  # type: ignore[no-untyped-def]
    proxy, backend = shared
    before = len(backend.requests)
    with Conn(proxy.port) as c:
        body = b"x" * 5000 if body_sent else b""
        c.send(b"POST /app/big HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + body)
        r = c.response()
        assert r.status == 413 and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"
    assert len(backend.requests) == before


@pytest.mark.parametrize("raw", [
    b"GET /nowhere HTTP/1.0\r\n\r\n",
    b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /dead/x HTTP/1.0\r\nHost: t\r\n\r\n",
    b"GET /dead/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
], ids=["404-http10", "404-connection-close", "502-http10", "502-connection-close"])
def test_clients_that_did_not_ask_for_keep_alive_are_closed(shared, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        c.send(raw)
        r = c.response()
        assert r.status in (404, 502) and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"


def test_http10_keep_alive_is_kept(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        c.send(b"GET /nowhere HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.response()
        assert r.status == 404 and r.header("connection") == "keep-alive"
        c.send(b"GET /app/k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert c.response().status == 200


def test_a_kept_connection_still_times_out_when_idle(make_proxy) -> None:  # type: ignore[no-untyped-def]
    with RecordingBackend() as b:
        proxy = make_proxy(f'[upstream.app]\nservers = ["127.0.0.1:{b.port}"]\n'
                           '[[server]]\nlisten = ["127.0.0.1:0"]\nkeepalive_timeout = "1s"\n'
                           '[[server.location]]\npath = "/app/"\nproxy_pass = "http://app"\n', workers=1)
        with Conn(proxy.port) as c:
            assert c.request("GET", "/nowhere").status == 404
            t0 = time.monotonic()
            assert c.closed_by_peer(10) == "eof"
            assert 0.5 < time.monotonic() - t0 < 5


def test_kept_errors_leak_no_fd(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    baseline = worker_fds(proxy)
    conns = [Conn(proxy.port) for _ in range(5)]
    for c in conns:
        assert c.request("GET", "/nowhere").status == 404
        assert c.request("GET", "/dead/").status == 502
        assert c.request("HEAD", "/nowhere").status == 404
    for c in conns:
        c.close()
    wait_until(lambda: worker_fds(proxy) <= baseline, 5, f"worker fds back to {baseline}")
