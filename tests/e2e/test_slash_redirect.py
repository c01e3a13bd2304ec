"""nginx's slash redirect on the wire: a request for a location's name without its
trailing slash gets 301 to the name with it (absolute URL, query kept), never reaches the
backend, and the connection stays open when the client asked for keep-alive."""

from __future__ import annotations

import pytest
from backends import RecordingBackend
from client import Conn
from harness import wait_until

BODY = """
[upstream.app]
servers = ["127.0.0.1:{port}"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/ws/"
proxy_pass = "http://app"
websocket = true

[[server.location]]
path = "= /api"
proxy_pass = "http://app"

[[server.location]]
path = "/api/"
proxy_pass = "http://app"

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""


@pytest.fixture(scope="module")
def shared(tmp_path_factory):  # type: ignore[no-untyped-def]
    from harness import Proxy
    backend = RecordingBackend().start()
    proxy = Proxy(tmp_path_factory.mktemp("slash"), BODY.format(port=backend.port), workers=1,
                  master={"access_log": "access.log"}).start()
    yield proxy, backend
    proxy.kill_all()
    backend.stop()


def targets(backend: RecordingBackend) -> list[str]:
    return [r.target for r in backend.requests]


def test_301_with_the_slash_appended_then_the_next_request(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, backend = shared
    before = len(backend.requests)
    with Conn(proxy.port) as c:
        r = c.request("GET", "/ws", host="Example.com:1234")
        assert (r.status, r.version) == (301, "HTTP/1.1")
        # nginx's absolute_redirect: the request's host without its port, then the port
        # the connection was accepted on
        assert r.header("location") == f"http://example.com:{proxy.port}/ws/"
        assert r.header("connection") == "keep-alive"
        assert r.header("content-type") == "text/html"
        assert b"<h1>301 Moved Permanently</h1>" in r.body
        assert int(r.header("content-length") or 0) == len(r.body)
        r = c.request("GET", "/ws/")
        assert r.status == 200
    assert targets(backend)[before:] == ["/ws/"]  # the redirected request never went upstream
    wait_until(lambda: any('"GET /ws HTTP/1.1" 301' in line
                           for line in (proxy.dir / "access.log").read_text().splitlines()),
               5, "the 301 in the access log")


def test_the_query_string_is_kept(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("GET", "/ws?x=1&y=%20")
        assert r.status == 301 and r.header("location") == f"http://test:{proxy.port}/ws/?x=1&y=%20"


def test_the_normalised_path_is_what_matches(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("GET", "//x/..//ws")
        assert r.status == 301 and r.header("location") == f"http://test:{proxy.port}/ws/"
        r = c.request("POST", "/ws", body=b"a body that arrived whole")
        assert r.status == 301 and r.header("connection") == "keep-alive"


def test_head_gets_the_head_only(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("HEAD", "/ws")
        assert r.status == 301 and r.body == b"" and r.header("location") == f"http://test:{proxy.port}/ws/"
        r = c.request("GET", "/other")
        assert r.status == 200 and r.body == b"ok\n"


def test_an_exact_location_wins(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, backend = shared
    with Conn(proxy.port) as c:
        assert c.request("GET", "/api").status == 200
    assert targets(backend)[-1] == "/api"


def test_without_host_the_local_address_and_close(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        c.send(b"GET /ws HTTP/1.0\r\n\r\n")
        r = c.response()
        assert r.status == 301 and r.header("location") == f"http://127.0.0.1:{proxy.port}/ws/"
        assert r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"


def test_connection_close_is_honoured(shared) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = shared
    with Conn(proxy.port) as c:
        r = c.request("GET", "/ws", headers={"Connection": "close"})
        assert r.status == 301 and r.header("connection") == "close"
        assert c.closed_by_peer() == "eof"
