"""Every client-visible error from a real condition; framing errors never reach the backend;
no error leaks a file descriptor in the worker."""

from __future__ import annotations

import socket
import time

import pytest
from backends import RecordingBackend, Response
from client import Conn, exchange
from harness import wait_until


def config(port: int, extra: str = "", location: str = "") -> str:
    return f"""
[upstream.app]
servers = ["127.0.0.1:{port}"]

[[server]]
listen = ["127.0.0.1:0"]
client_header_timeout = "1s"
max_request_line = "1k"
max_head_size = "4k"
max_header_count = 20
{extra}

[[server.location]]
path = "/"
proxy_pass = "http://app"
proxy_read_timeout = "1s"
proxy_connect_timeout = "1s"
client_body_timeout = "1s"
client_max_body_size = "1k"
{location}
"""


def worker_fds(proxy) -> int:
    return sum(p.num_fds() for p in proxy.workers())


def settle_fds(proxy, baseline: int) -> None:
    wait_until(lambda: worker_fds(proxy) <= baseline, 5, f"worker fds back to {baseline}")


FRAMING_ERRORS = {
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    "two-lengths": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "bad-length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
    "te-not-chunked": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te-in-1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "control-byte": b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: t\n\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: t\rX: y\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-host": b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "bad-chunk-ext": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;a b\r\nabc\r\n0\r\n\r\n",
    "http09": b"GET /\r\n\r\n",
    "bad-version": b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One backend and one proxy (1 worker) for the many small error cases."""
    from harness import Proxy
    backend = RecordingBackend().start()
    proxy = Proxy(tmp_path_factory.mktemp("errors"), config(backend.port), workers=1).start()
    exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # warm the pool
    yield proxy, backend
    proxy.kill_all()
    backend.stop()


@pytest.mark.parametrize("name", sorted(FRAMING_ERRORS))
def test_framing_error_is_400_and_never_forwarded(shared, name):
    proxy, backend = shared
    baseline = worker_fds(proxy)
    before = backend.bytes_received.value
    r = exchange(proxy.port, FRAMING_ERRORS[name])
    assert r.status == 400 and r.header("connection") == "close"
    time.sleep(0.05)
    assert backend.bytes_received.value == before, "a rejected request reached the backend"
    settle_fds(proxy, baseline)
    assert "400:" in proxy.log()


def test_head_limits(shared):
    proxy, backend = shared
    baseline = worker_fds(proxy)
    assert exchange(proxy.port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: t\r\n\r\n").status == 414
    assert exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 5000 + b"\r\n\r\n").status == 431
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(30))
    assert exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n").status == 431
    r = exchange(proxy.port, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
    assert r.status == 413
    settle_fds(proxy, baseline)


def test_chunked_body_over_limit_is_413(shared):
    proxy, backend = shared
    with Conn(proxy.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(b"800\r\n" + b"x" * 0x800 + b"\r\n0\r\n\r\n")
        assert c.response().status == 413


def test_header_timeout_is_408(shared):
    proxy, _ = shared
    baseline = worker_fds(proxy)
    with Conn(proxy.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # never finished
        t0 = time.monotonic()
        r = c.response()
        assert r.status == 408
        assert 0.5 < time.monotonic() - t0 < 5
    settle_fds(proxy, baseline)


def test_body_timeout_is_408(shared):
    proxy, _ = shared
    with Conn(proxy.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        assert c.response().status == 408


def test_idle_keepalive_closes_cleanly(make_proxy):
    with RecordingBackend() as b:
        proxy = make_proxy(config(b.port, extra='keepalive_timeout = "1s"'))
        with Conn(proxy.port) as c:
            assert c.request().status == 200
            t0 = time.monotonic()
            assert c.closed_by_peer(10) == "eof"  # a lingering close: FIN, never RST
            assert time.monotonic() - t0 < 5


def test_dead_upstream_is_502(make_proxy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound but not listening: connections are refused
        proxy = make_proxy(config(dead), workers=1)
        baseline = worker_fds(proxy)
        r = exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 502
        assert "502:" in proxy.log()
        settle_fds(proxy, baseline)


def test_slow_upstream_is_504(make_proxy):
    with RecordingBackend(response_delay=3) as b:
        proxy = make_proxy(config(b.port), workers=1)
        baseline = worker_fds(proxy)
        t0 = time.monotonic()
        assert exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status == 504
        assert time.monotonic() - t0 < 2.9
        settle_fds(proxy, baseline)


@pytest.mark.parametrize("raw", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"",
], ids=["garbage", "te-and-cl", "bad-length", "101-unasked", "truncated-head", "closed-silently"])
def test_bad_upstream_response_is_502(make_proxy, raw):
    with RecordingBackend(raw_response=raw) as b:
        proxy = make_proxy(config(b.port), workers=1)
        baseline = worker_fds(proxy)
        r = exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 502
        settle_fds(proxy, baseline)


@pytest.mark.parametrize("then", ["close", "reset"])
def test_upstream_dying_mid_body_never_looks_complete(make_proxy, then):
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000
    with RecordingBackend(raw_response=raw, raw_then=then) as b:
        proxy = make_proxy(config(b.port), workers=1)
        with Conn(proxy.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            with pytest.raises((ConnectionResetError, EOFError)):
                c.response()
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        b.raw_response = chunked
        with Conn(proxy.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            with pytest.raises((ConnectionResetError, EOFError)):
                c.response()


def test_no_location_is_404(make_proxy):
    with RecordingBackend() as b:
        body = f"""
[upstream.app]
servers = ["127.0.0.1:{b.port}"]
[[server]]
listen = ["127.0.0.1:0"]
[[server.location]]
path = "/only/"
proxy_pass = "http://app"
"""
        proxy = make_proxy(body, workers=1)
        with Conn(proxy.port) as c:
            assert c.request("GET", "/elsewhere").status == 404
        assert b.bytes_received.value == 0


def test_retry_once_on_stale_pooled_connection(make_proxy):
    """A pooled connection that the backend reset is retried once, idempotent requests only."""
    with RecordingBackend() as b:
        proxy = make_proxy(config(b.port), workers=1)
        with Conn(proxy.port) as c:
            assert c.request().status == 200
            b.reset_all()
            time.sleep(0.2)
            assert c.request().status == 200
        assert "502" not in proxy.log().split("ready")[-1]


def test_client_reset_mid_response_frees_everything(make_proxy):
    with RecordingBackend(lambda r: Response(body=b"y" * (8 << 20)), throttle_write_bps=2 << 20) as b:
        proxy = make_proxy(config(b.port), workers=1)
        baseline = worker_fds(proxy)
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", proxy.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            s.recv(1000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        settle_fds(proxy, baseline)
        r = exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 200 and len(r.body) == 8 << 20


def test_client_leaving_before_the_response_frees_both_sides_at_once(make_proxy):
    """As nginx (499): a client that closes while its request waits on the upstream ends
    the exchange now, not when the upstream finally answers."""
    with RecordingBackend(response_delay=4) as b:
        proxy = make_proxy(config(b.port).replace('proxy_read_timeout = "1s"', 'proxy_read_timeout = "10s"'),
                           workers=1)
        baseline = worker_fds(proxy)
        s = socket.create_connection(("127.0.0.1", proxy.port))
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: worker_fds(proxy) >= baseline + 2, 5, "client and upstream sockets open")
        t0 = time.monotonic()
        s.close()
        settle_fds(proxy, baseline)
        assert time.monotonic() - t0 < 2.5, "the exchange outlived its client"
