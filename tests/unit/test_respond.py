"""Client response heads rebuilt from upstream heads, and the reuse of repeated ones."""

from __future__ import annotations

import pytest

from forkproxy.errors import HeadTooLarge
from forkproxy.http import parser as p
from forkproxy.http.parser import CHUNKED, LENGTH, NONE, Head, ResponseParser
from forkproxy.respond import response_head

NGINX_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n"
              b"Content-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n")


def parse(raw: bytes, method: bytes = b"GET", max_headers: int = 100) -> Head:
    parser = ResponseParser(max_headers=max_headers)
    parser.start(method)
    head = parser.feed(raw)
    assert head is not None
    return head


def test_hop_by_hop_fields_are_replaced_by_the_proxys_own() -> None:
    head = parse(NGINX_HEAD)
    assert response_head(head, 11, True, False, None, None) == (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n"
        b"Content-Length: 5\r\n\r\n")
    assert response_head(head, 11, False, False, None, None).endswith(b"Content-Length: 5\r\nConnection: close\r\n\r\n")
    assert response_head(head, 10, True, False, None, None).endswith(b"Connection: keep-alive\r\n\r\n")


def test_a_repeated_head_is_parsed_and_rebuilt_once() -> None:
    first = parse(NGINX_HEAD)
    again = parse(NGINX_HEAD)
    assert again is first  # one Head per distinct head bytes in a worker
    out = response_head(first, 11, True, False, None, None)
    assert response_head(again, 11, True, False, None, None) is out
    # other choices build another head (and the first one is built again afterwards)
    closing = response_head(again, 11, False, False, None, None)
    assert closing != out and b"Connection: close" in closing
    assert response_head(first, 11, True, False, None, None) == out


def test_framing_that_depends_on_the_request_method_is_never_shared() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"
    assert parse(raw, b"GET").framing == LENGTH
    assert parse(raw, b"HEAD").framing == NONE  # not the GET's cached head
    assert parse(raw, b"GET").framing == LENGTH
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert parse(chunked, b"HEAD").framing == NONE
    assert parse(chunked, b"GET").framing == CHUNKED
    assert parse(b"HTTP/1.1 200 Connection established\r\n\r\n", b"CONNECT").framing == NONE


def test_a_cached_head_still_meets_the_parsers_limits() -> None:
    parse(NGINX_HEAD)
    with pytest.raises(HeadTooLarge):
        parse(NGINX_HEAD, max_headers=3)


def test_the_cache_is_bounded() -> None:
    for i in range(3 * p.CACHED_HEADS):
        parse(b"HTTP/1.1 200 OK\r\nX-Request-Id: %d\r\nContent-Length: 0\r\n\r\n" % i)
        assert len(p._RESPONSES) <= p.CACHED_HEADS
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * p.CACHED_HEAD_MAX + b"\r\nContent-Length: 0\r\n\r\n"
    assert parse(big) is not parse(big)


def test_rewritten_locations_are_never_reused() -> None:
    head = parse(b"HTTP/1.1 302 Found\r\nLocation: http://backend/x\r\nContent-Length: 0\r\n\r\n")

    def rewrite(value: bytes, host: bytes) -> bytes:
        return value.replace(b"backend", host)

    one = response_head(head, 11, True, False, rewrite, b"one.example")
    two = response_head(head, 11, True, False, rewrite, b"two.example")
    assert b"Location: http://one.example/x" in one and b"Location: http://two.example/x" in two
    assert b"Location: http://backend/x" in response_head(head, 11, True, False, None, None)
