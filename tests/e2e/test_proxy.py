"""End-to-end proxying through the real master (2 workers) to real backends on port 0."""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import signal
import socket
import threading
import time

import pytest
from backends import RecordingBackend, Response
from client import Conn, exchange
from harness import wait_until


def config(port: int, locations: str = "", upstream: str = "", server: str = "") -> str:
    return f"""
[upstream.app]
servers = ["127.0.0.1:{port}"]
{upstream}

[[server]]
listen = ["127.0.0.1:0"]
{server}
{locations}

[[server.location]]
path = "/"
proxy_pass = "http://app"
set_header = {{ X-Forwarded-For = "$proxy_add_x_forwarded_for", X-Real-IP = "$remote_addr" }}
"""


@pytest.fixture
def backend():
    with RecordingBackend() as b:
        yield b


def test_get_post_head_and_rebuilt_head(make_proxy, backend):
    proxy = make_proxy(config(backend.port))
    with Conn(proxy.port) as c:
        r = c.request("GET", "/a?x=1", {"Connection": "keep-alive, X-Private", "X-Private": "secret",
                                         "Keep-Alive": "300", "Set-Me": "1", "set-me": "2"}, host="example.test")
        assert r.status == 200 and r.body == b"ok\n"
        r = c.request("POST", "/form", body=b"a=1&b=2", host="example.test")
        assert r.status == 200
        r = c.request("HEAD", "/h", host="example.test")
        assert r.status == 200 and r.body == b"" and r.header("content-length") == "3"
    get, post, head = backend.requests
    assert (get.method, get.target, get.version) == ("GET", "/a?x=1", "HTTP/1.1")
    assert get.header("host") == "example.test"
    # hop-by-hop fields and the ones Connection names never reach the backend
    for name in ("connection", "keep-alive", "x-private"):
        assert not get.has_header(name), name
    assert get.header_values("set-me") == ["1", "2"]  # repeated fields stay repeated, order and case kept
    assert b"Set-Me: 1\r\nset-me: 2\r\n" in get.head
    assert get.header("x-forwarded-for") == "127.0.0.1" and get.header("x-real-ip") == "127.0.0.1"
    assert post.body == b"a=1&b=2" and head.method == "HEAD"


def test_keepalive_reuse_on_both_sides(make_proxy, backend):
    proxy = make_proxy(config(backend.port), workers=1)
    with Conn(proxy.port) as c:
        for i in range(20):
            assert c.request("GET", f"/{i}").status == 200
    assert len(backend.requests) == 20
    assert backend.connections.value < 20
    assert {r.connection for r in backend.requests} == {1}


def test_chunked_both_ways(make_proxy):
    def handler(req):
        return Response(body=iter([req.body[:10], req.body[10:]]), chunked=True)

    with RecordingBackend(handler) as b:
        proxy = make_proxy(config(b.port))
        with Conn(proxy.port) as c:
            body = b"5;ext=1\r\nhello\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nTrailer-A: 1\r\n\r\n"
            r = c.request("POST", "/up", {"Transfer-Encoding": "chunked"}, body)
            assert r.status == 200 and r.header("transfer-encoding") == "chunked"
            assert r.body == b"hello" + b"x" * 16
        req = b.requests[0]
        assert req.body == b"hello" + b"x" * 16
        assert req.header("transfer-encoding") == "chunked"
        # an HTTP/1.0 client gets the chunked response de-chunked and close-delimited
        r = exchange(proxy.port, b"POST /x HTTP/1.0\r\nContent-Length: 12\r\n\r\nhello world!")
        assert r.body == b"hello world!" and r.header("transfer-encoding") is None
        assert r.header("connection") == "close"


def test_pipelining(make_proxy, backend):
    proxy = make_proxy(config(backend.port))
    with Conn(proxy.port) as c:
        c.send(b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5))
               + b"POST /p5 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
               + b"GET /p6 HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(7):
            assert c.response().status == 200
    assert [r.target for r in backend.requests] == [f"/p{i}" for i in range(7)]
    assert backend.requests[5].body == b"abc"


def test_expect_continue_is_relayed(make_proxy, backend):
    proxy = make_proxy(config(backend.port))
    with Conn(proxy.port) as c:
        c.send(b"PUT /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        interim = c.response()
        assert interim.status == 100
        c.send(b"hello")
        assert c.response().status == 200
    assert backend.requests[0].body == b"hello"
    # an HTTP/1.0 client never sees the interim response
    r = exchange(proxy.port, b"PUT /up HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")
    assert r.status == 200


def test_upstream_final_status_before_body(make_proxy):
    with RecordingBackend(reject_early_status=413) as b:
        proxy = make_proxy(config(b.port))
        with Conn(proxy.port) as c:
            c.send(b"PUT /big HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
            r = c.response()
            assert r.status == 413 and r.header("connection") == "close"
            assert c.closed_by_peer() == "eof"
        assert b.requests[0].body_read is False


def test_virtual_hosts_and_default_server(make_proxy):
    with RecordingBackend(lambda r: Response(body=b"A")) as a, RecordingBackend(lambda r: Response(body=b"B")) as b:
        body = f"""
[upstream.a]
servers = ["127.0.0.1:{a.port}"]
[upstream.b]
servers = ["127.0.0.1:{b.port}"]

[[server]]
listen = ["127.0.0.1:0"]
server_name = ["a.test", "*.a.test"]
[[server.location]]
path = "/"
proxy_pass = "http://a"
"""
        proxy = make_proxy(body)
        port = proxy.port
        # a second server on the same address, made default: add it via reload-free config
        proxy.stop()
        body2 = body.replace('listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]') + f"""
[[server]]
listen = [{{ address = "127.0.0.1:{port}", default_server = true }}]
server_name = ["b.test"]
[[server.location]]
path = "/"
proxy_pass = "http://b"
"""
        proxy = make_proxy(body2)
        assert exchange(port, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").body == b"A"
        assert exchange(port, b"GET / HTTP/1.1\r\nHost: www.a.test:80\r\n\r\n").body == b"A"
        assert exchange(port, b"GET / HTTP/1.1\r\nHost: B.test\r\n\r\n").body == b"B"
        assert exchange(port, b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n").body == b"B"  # default_server
        # an absolute-form target overrides Host
        assert exchange(port, b"GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n").body == b"A"


def test_location_precedence_and_uri_replacement(make_proxy, backend):
    locations = """
[[server.location]]
path = "= /exact"
proxy_pass = "http://app/was-exact"
[[server.location]]
path = "^~ /static/"
proxy_pass = "http://app/files/"
[[server.location]]
path = "~* \\\\.(png|jpg)$"
proxy_pass = "http://app"
set_header = { X-Loc = "regex" }
[[server.location]]
path = "/images/"
proxy_pass = "http://app/img/"
[[server.location]]
path = "/name/"
proxy_pass = "http://app/remote/"
"""
    proxy = make_proxy(config(backend.port, locations))
    cases = [
        ("/exact", "/was-exact", None),
        ("/static/a.png", "/files/a.png", None),        # ^~ beats the regex
        ("/images/a.PNG", "/images/a.PNG", "regex"),     # the regex beats a plain prefix; no URI part
        ("/images/a.gif", "/img/a.gif", None),
        ("/name/x/../y?q=1", "/remote/y?q=1", None),     # normalised, prefix replaced, args kept
        ("/other//path?z", "/other//path?z", None),      # no URI part: target passed unchanged
    ]
    for target, upstream_target, loc in cases:
        assert exchange(proxy.port, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode()).status == 200
        got = backend.requests[-1]
        assert got.target == upstream_target, target
        assert got.header("x-loc") == loc, target


def test_proxy_redirect_default(make_proxy):
    with RecordingBackend(lambda r: Response(302, b"", [("Location", f"http://127.0.0.1:{b.port}/remote/next")])) as b:
        locations = """
[[server.location]]
path = "/name/"
proxy_pass = "http://app/remote/"
"""
        proxy = make_proxy(config(b.port, locations))
        r = exchange(proxy.port, b"GET /name/x HTTP/1.1\r\nHost: front.test\r\n\r\n")
        assert r.status == 302
        assert r.header("location") == "http://front.test/name/next"


def _big_body_roundtrip(port: int, size: int) -> tuple[str, str]:
    """POST `size` random-ish bytes to /echo; returns (sent sha256, received sha256)."""
    block = random.randbytes(1 << 20)
    sent, got = hashlib.sha256(), hashlib.sha256()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)

    def writer() -> None:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        left = size
        while left:
            piece = block[: min(left, len(block))]
            sock.sendall(piece)
            sent.update(piece)
            left -= len(piece)

    t = threading.Thread(target=writer)
    t.start()
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    got.update(rest)
    n = len(rest)
    while n < length:
        data = sock.recv(1 << 20)
        assert data, "EOF mid-body"
        got.update(data)
        n += len(data)
    t.join()
    sock.close()
    return sent.hexdigest(), got.hexdigest()


def _worker_rss(proxy) -> int:
    return sum(p.memory_info().rss for p in proxy.workers())


def test_200mib_each_way_bounded_memory(make_proxy):
    # the demo backend streams /echo (it echoes as it reads), so memory stays flat on its side too
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bport = s.getsockname()[1]
    backend = subprocess.Popen([sys.executable, "-m", "bench.backend", "--listen", f"127.0.0.1:{bport}"])
    try:
        wait_until(lambda: _can_connect(bport), 10, "the backend")
        proxy = make_proxy(config(bport), workers=1)
        exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        before = _worker_rss(proxy)
        sent, got = _big_body_roundtrip(proxy.port, 200 << 20)
        assert sent == got
        assert _worker_rss(proxy) - before < 20 << 20
    finally:
        backend.kill()
        backend.wait()


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_slow_receivers_hold_back_senders(make_proxy):
    size = 20 << 20
    with RecordingBackend(throttle_read_bps=1 << 20, record_body=False, rcvbuf=64 << 10,
                          handler=lambda r: Response(body=r.body_sha256.encode())) as b:
        proxy = make_proxy(config(b.port), workers=1)
        exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        before = _worker_rss(proxy)
        block = random.randbytes(size)
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=60)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        t0 = time.monotonic()
        sock.settimeout(0.5)
        sent = 0
        peak = 0
        while sent < size:
            try:
                sent += sock.send(block[sent: sent + (1 << 20)])
            except TimeoutError:
                pass
            peak = max(peak, _worker_rss(proxy) - before)
        elapsed = time.monotonic() - t0
        sock.settimeout(60)
        buf = b""
        while not buf.endswith(hashlib.sha256(block).hexdigest().encode()):
            data = sock.recv(65536)
            assert data, buf
            buf += data
        sock.close()
        # the sender was held back (a fast backend takes 20 MiB in well under a second; kernel
        # socket buffers on loopback can hold several MiB, so the bound is loose), and the
        # worker's memory stayed flat
        assert elapsed > 2, elapsed
        assert peak < 20 << 20, peak

    # the other way: a slow client reading a 20 MiB response
    with RecordingBackend(lambda r: Response(body=block)) as b:
        proxy = make_proxy(config(b.port), workers=1)
        exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        before = _worker_rss(proxy)
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=60)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        digest = hashlib.sha256()
        got = 0
        t0 = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        _, _, rest = head.partition(b"\r\n\r\n")
        digest.update(rest)
        got = len(rest)
        peak = 0
        while got < size:
            data = sock.recv(64 << 10)
            assert data
            digest.update(data)
            got += len(data)
            want = got / (1 << 20)  # ~1 MiB/s
            ahead = want - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
                peak = max(peak, _worker_rss(proxy) - before)
        sock.close()
        assert digest.hexdigest() == hashlib.sha256(block).hexdigest()
        assert peak < 20 << 20, peak


def test_stale_upstream_connections_give_no_502(make_proxy):
    with RecordingBackend(idle_close_after=1.0) as b:
        proxy = make_proxy(config(b.port))
        statuses: list[int] = []

        def client(n: int) -> None:
            rnd = random.Random(n)
            with Conn(proxy.port) as c:
                for _ in range(11):
                    statuses.append(c.request("GET", "/").status)
                    time.sleep(rnd.uniform(0.85, 1.15))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(statuses) == 55
        assert statuses.count(200) == 55, statuses
        assert b.idle_closes.value > 0  # the backend really did close idle connections under us


def test_http10_and_keepalive_header(make_proxy, backend):
    proxy = make_proxy(config(backend.port))
    with Conn(proxy.port) as c:
        c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.header("connection") == "keep-alive"
        c.send(b"GET /b HTTP/1.0\r\n\r\n")
        r = c.response()
        assert r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"
    assert backend.requests[0].version == "HTTP/1.1"  # proxy_http_version 1.1 upstream


def test_http_client_library_roundtrip(make_proxy, backend):
    proxy = make_proxy(config(backend.port))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/lib")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"ok\n"
    conn.close()


def test_keepalive_timeout_zero_disables_client_keepalive(make_proxy, backend):
    proxy = make_proxy(config(backend.port, server='keepalive_timeout = "0"'))
    with Conn(proxy.port) as c:
        r = c.request("GET", "/")
        assert r.status == 200 and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"


def _per_worker(proxy) -> list[int]:
    """Established client connections held by each worker, fewest first."""
    return sorted(len([k for k in p.net_connections("tcp") if k.laddr.port == proxy.port
                       and k.status == "ESTABLISHED"]) for p in proxy.workers())


def test_long_lived_connections_spread_over_workers(make_proxy, backend):
    proxy = make_proxy(config(backend.port), workers=2)
    conns = []
    try:
        for _ in range(8):  # opened one after another, each idle-waiting ones kept open
            c = Conn(proxy.port)
            assert c.request().status == 200
            conns.append(c)
            time.sleep(0.05)
        counts = _per_worker(proxy)
        assert sum(counts) == 8 and min(counts) >= 2, counts
    finally:
        for c in conns:
            c.close()


def test_a_burst_of_connections_spreads_over_workers(make_proxy, backend):
    """48 connections opened at once are all queued before a second worker would wake;
    the worker that has more steps aside for its sibling (without it: 48/0 most times)."""
    proxy = make_proxy(config(backend.port), workers=2)  # a burst right after start: siblings not seen yet
    socks = []
    try:
        for _ in range(48):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", proxy.port))
            socks.append(s)
        wait_until(lambda: sum(_per_worker(proxy)) == 48, 10, "48 accepted connections")
        counts = _per_worker(proxy)
        assert min(counts) >= 16, counts
    finally:
        for s in socks:
            s.close()


def test_a_stopped_worker_does_not_hold_up_accepts(make_proxy, backend):
    """A sibling that stops (SIGSTOP, a stall) never answers when asked to take the queued
    connections: the other worker takes them after a short wait, not after the stall."""
    proxy = make_proxy(config(backend.port), workers=2)
    time.sleep(1.0)
    conns = [Conn(proxy.port) for _ in range(4)]
    stopped = proxy.workers()[0].pid
    try:
        for c in conns:
            assert c.request().status == 200
        os.kill(stopped, signal.SIGSTOP)
        waits = []
        for _ in range(10):
            start = time.monotonic()
            c = Conn(proxy.port)
            conns.append(c)
            assert c.request().status == 200
            waits.append(time.monotonic() - start)
        # stepping aside costs ~0.1 s once per tick; the stall would last the heartbeat limit (1.5 s)
        assert max(waits) < 1.0, waits
    finally:
        os.kill(stopped, signal.SIGCONT)
        for c in conns:
            c.close()
