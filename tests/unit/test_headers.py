# Invariants: lookups take lowercase names and never join repeated fields except in
# combined(); end_to_end never lets a hop-by-hop field or a field named in
# Connection through, and keeps everything else in order and case.
"""Headers, token lists and hop-by-hop removal."""

from __future__ import annotations

from forkproxy.http.headers import (
    HOP_BY_HOP,
    Headers,
    end_to_end,
    list_tokens,
)

ITEMS = [
    (b"Host", b"example.com"),
    (b"Set-Cookie", b"a=1; Path=/"),
    (b"Connection", b"keep-alive, X-Secret"),
    (b"set-cookie", b"b=2, c=3"),
    (b"X-Secret", b"s"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Accept", b"*/*"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Proxy-Connection", b"keep-alive"),
]


def test_lookups() -> None:
    h = Headers(ITEMS)
    assert h.get(b"host") == b"example.com"
    assert h.get(b"set-cookie") == b"a=1; Path=/"  # first value
    assert h.get(b"missing") is None
    assert h.get_all(b"set-cookie") == [b"a=1; Path=/", b"b=2, c=3"]  # never joined
    assert h.get_all(b"missing") == []
    assert b"x-secret" in h and b"X-Secret" not in h and b"missing" not in h
    assert h.count(b"connection") == 2
    assert len(h) == len(ITEMS) and list(h) == ITEMS
    assert h.items is not None and h.items == ITEMS


def test_combined_and_tokens() -> None:
    h = Headers(ITEMS)
    assert h.combined(b"connection") == b"keep-alive, X-Secret, Upgrade"
    assert h.combined(b"host") == b"example.com"
    assert h.combined(b"missing") is None
    assert list_tokens(h.combined(b"connection") or b"") == (b"keep-alive", b"x-secret", b"upgrade")
    assert list_tokens(h.combined(b"missing") or b"") == ()


def test_token_helpers() -> None:
    assert list_tokens(b" Keep-Alive ") == (b"keep-alive",)
    assert list_tokens(b",, a ,\tB,") == (b"a", b"b")
    assert list_tokens(b"") == () and list_tokens(b" \t ") == ()
    assert list_tokens(b"WebSocket, h2c ,, x/1") == (b"websocket", b"h2c", b"x/1")
    assert list_tokens(b"") == ()


def test_empty_headers() -> None:
    h = Headers()
    assert h.items == [] and h.get(b"a") is None and h.combined(b"connection") is None
    assert end_to_end(h) == []


def test_hop_by_hop_set() -> None:
    assert HOP_BY_HOP == {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade",
    }


def test_end_to_end() -> None:
    h = Headers(ITEMS)
    assert end_to_end(h) == [
        (b"Host", b"example.com"),
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"set-cookie", b"b=2, c=3"),
        (b"Accept", b"*/*"),
    ]
    assert end_to_end(h, frozenset({b"host", b"set-cookie"})) == [(b"Accept", b"*/*")]


def test_end_to_end_without_connection_field() -> None:
    h = Headers([(b"A", b"1"), (b"Upgrade", b"x"), (b"B", b"2")])
    assert end_to_end(h) == [(b"A", b"1"), (b"B", b"2")]
    assert end_to_end(h, frozenset({b"b"})) == [(b"A", b"1")]


def test_list_tokens_caches_only_short_values() -> None:
    from forkproxy.http import headers

    assert list_tokens(b"Keep-Alive") == (b"keep-alive",)
    assert list_tokens(b"Keep-Alive") is list_tokens(b"Keep-Alive")  # split once
    long = b"a, " * 40
    assert list_tokens(long) == (b"a",) * 40
    assert long not in headers._TOKENS  # a client cannot pin big values in the worker
