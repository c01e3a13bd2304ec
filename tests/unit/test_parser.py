# Invariants: every message is fed whole, byte by byte and split at every position,
# and all three give the same head, the same leftover bytes and the same error (h11's
# style); every strict rule of DESIGN.md "HTTP rules" has a rejecting test here.
"""RequestParser and ResponseParser."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkproxy.errors import BadRequest, HeadTooLarge, HttpError, UriTooLong
from forkproxy.http.parser import (
    CHUNKED,
    CLOSE,
    LENGTH,
    NONE,
    Head,
    RequestParser,
    ResponseParser,
)
from forkproxy.http.writer import request_head, response_head

Parser = RequestParser | ResponseParser


def summary(head: Head) -> tuple[Any, ...]:
    return (
        head.method, head.target, head.version, head.status, head.reason,
        head.headers.items, head.framing, head.length, head.keep_alive, head.upgrade,
        head.expect_continue, head.size,
    )


def run(parser: Parser, pieces: list[bytes]) -> tuple[Any, ...]:
    """Feed pieces; (summary of the first head, bytes after it) or the error type."""
    head = None
    rest = b""
    try:
        for piece in pieces:
            if head is None:
                head = parser.feed(piece)
                if head is not None:
                    rest = parser.take_rest()
            else:
                rest += piece
        if head is None:
            parser.eof()
            return ("no head",)
    except HttpError as e:
        return (type(e),)
    return summary(head), rest


def every_split(make: Any, raw: bytes) -> tuple[Any, ...]:
    """The result of feeding raw whole; asserts bytewise and two-piece feeds agree."""
    whole = run(make(), [raw])
    assert run(make(), [raw[i:i + 1] for i in range(len(raw))]) == whole
    for i in range(1, len(raw)):
        assert run(make(), [raw[:i], raw[i:]]) == whole, i
    return whole


def req(raw: bytes, **kw: int) -> Head:
    result = every_split(lambda: RequestParser(**kw), raw)
    assert len(result) == 2, result
    parser = RequestParser(**kw)
    head = parser.feed(raw)
    assert head is not None
    return head


def req_error(raw: bytes, **kw: int) -> type[HttpError]:
    result = every_split(lambda: RequestParser(**kw), raw)
    assert len(result) == 1 and result[0] != "no head", result
    error: type[HttpError] = result[0]
    return error


def resp(raw: bytes, method: bytes = b"GET") -> Head:
    def make() -> ResponseParser:
        p = ResponseParser()
        p.start(method)
        return p

    result = every_split(make, raw)
    assert len(result) == 2, result
    head = make().feed(raw)
    assert head is not None
    return head


def resp_error(raw: bytes, method: bytes = b"GET") -> type[HttpError]:
    def make() -> ResponseParser:
        p = ResponseParser()
        p.start(method)
        return p

    result = every_split(make, raw)
    assert len(result) == 1 and result[0] != "no head", result
    error: type[HttpError] = result[0]
    return error


GET = (
    b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1.0\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip, br\r\nCookie: a=1\r\nCookie: b=2\r\n"
    b"Connection: keep-alive\r\nX-Empty:\r\n\r\n"
)


# --- the basic request ---------------------------------------------------------------


def test_get_fields() -> None:
    h = req(GET)
    assert (h.method, h.target, h.version, h.status, h.reason) == (
        b"GET", b"/index.html?q=1", 11, 0, b""
    )
    assert h.headers.items[0] == (b"Host", b"example.com")
    assert h.headers.get_all(b"cookie") == [b"a=1", b"b=2"]
    assert h.headers.get(b"x-empty") == b""
    assert (h.framing, h.length, h.keep_alive, h.upgrade, h.expect_continue) == (
        NONE, 0, True, (), False
    )
    assert h.size == len(GET)


def test_rest_and_buffer_lifecycle() -> None:
    p = RequestParser()
    assert p.buffered == 0
    assert p.feed(GET[:10]) is None
    assert p.buffered == 10
    head = p.feed(GET[10:] + b"BODY")
    assert head is not None and p.buffered == 4
    assert p.take_rest() == b"BODY"
    assert p.buffered == 0
    assert p.take_rest() == b""
    p.eof()  # idle: fine


def test_pipelined_requests_from_one_buffer() -> None:
    p = RequestParser()
    first = p.feed(GET + GET.replace(b"/index.html", b"/two"))
    assert first is not None and first.target == b"/index.html?q=1"
    second = p.feed(p.take_rest())
    assert second is not None and second.target == b"/two?q=1"
    assert p.take_rest() == b"" and p.buffered == 0


def test_feeding_again_parses_the_held_bytes() -> None:
    p = RequestParser()
    assert p.feed(GET + GET[:5]) is not None
    assert p.feed(GET[5:]) is not None  # held bytes are the start of the next head
    assert p.buffered == 0


def test_field_values_lose_surrounding_ows_only() -> None:
    h = req(b"GET / HTTP/1.1\r\nA: \t x  y \t \r\nB:z\r\nC:   \r\n\r\n")
    assert h.headers.items == [(b"A", b"x  y"), (b"B", b"z"), (b"C", b"")]


def test_obs_text_in_values_is_kept() -> None:
    h = req(b"GET / HTTP/1.1\r\nTest: D\xc3\xbcsseldorf\xff\r\n\r\n")
    assert h.headers.get(b"test") == b"D\xc3\xbcsseldorf\xff"


def test_leading_empty_lines_are_skipped() -> None:
    h = req(b"\r\n\r\n\r\n" + GET)
    assert h.method == b"GET" and h.size == len(GET)
    p = RequestParser()
    assert p.feed(b"\r\n\r\n") is None
    assert p.buffered == 0  # nothing held while only empty lines arrived
    p.eof()
    p = RequestParser()
    assert p.feed(b"\r\n\r") is None
    p.eof()  # a CR of an empty line is no partial head
    assert p.feed(b"\n" + GET) is not None


def test_eof_inside_a_head() -> None:
    assert req_error(GET[:-2]) is BadRequest
    p = RequestParser()
    p.feed(b"G")
    with pytest.raises(BadRequest):
        p.eof()


def test_bytearray_and_memoryview_input() -> None:
    assert RequestParser().feed(bytearray(GET)) is not None
    assert RequestParser().feed(memoryview(GET)) is not None


# --- request line and target ---------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [b"/", b"/a/b;c=d?x=y&z=%20", b"/with_\"quotes\"?foo=\\\"bar\\\"", b"/q?a=|{}^`",
     b"http://example.com", b"http://example.com/x?y", b"HTTP://EXAMPLE.COM:8080/",
     b"https://[::1]:8443/p", b"http://hypnotoad.org?hail=all", b"ws://h/chat"],
)
def test_accepted_targets(target: bytes) -> None:
    assert req(b"GET " + target + b" HTTP/1.1\r\n\r\n").target == target


@pytest.mark.parametrize(
    "line",
    [
        b"GET  / HTTP/1.1",  # two spaces
        b"GET / HTTP/1.1 ",  # trailing space
        b" GET / HTTP/1.1",
        b"GET\t/ HTTP/1.1",
        b"GET /",  # HTTP/0.9
        b"GET / HTTP/0.9",
        b"GET / HTTP/1.2",
        b"GET / HTTP/2.0",
        b"GET / HTTP/1",
        b"GET / http/1.1",
        b"GET / RTSP/1.0",
        b"GET / ICE/1.0",
        b"GET /a b HTTP/1.1",
        b"G(T / HTTP/1.1",  # method not a token
        b"GET /#frag HTTP/1.1",  # fragment
        b"GET /caf\xc3\xa9 HTTP/1.1",  # obs-text in the target
        b"GET /\x7f HTTP/1.1",
        b"GET http://user:pw@example.com/ HTTP/1.1",  # userinfo
        b"GET http://@example.com/ HTTP/1.1",
        b"GET http:///path HTTP/1.1",  # no host
        b"GET example.com:80 HTTP/1.1",  # authority-form without CONNECT
        b"GET * HTTP/1.1",  # asterisk-form without OPTIONS
        b"M-SEARCH * HTTP/1.1",
        b"CONNECT / HTTP/1.1",  # CONNECT needs authority-form
        b"CONNECT example.com HTTP/1.1",  # port required
        b"CONNECT user@example.com:443 HTTP/1.1",
        b"GET path HTTP/1.1",
        b"GET ?q HTTP/1.1",
    ],
)
def test_rejected_request_lines(line: bytes) -> None:
    assert req_error(line + b"\r\nHost: a\r\n\r\n") is BadRequest


def test_asterisk_and_authority_forms() -> None:
    assert req(b"OPTIONS * HTTP/1.1\r\n\r\n").target == b"*"
    h = req(b"CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 4\r\n\r\ntunnel bytes")
    assert (h.target, h.framing, h.length, h.keep_alive) == (b"example.com:443", NONE, 0, False)
    assert req(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n").target == b"[2001:db8::1]:443"


def test_extension_methods_are_tokens() -> None:
    for method in (b"PURGE", b"MKCOLA", b"QUERY", b"M-SEARCH", b"get", b"X~!#$%&'*+.^_`|"):
        assert req(method + b" / HTTP/1.1\r\n\r\n").method == method


def test_start_line_is_judged_before_the_head_ends() -> None:
    for line in (b"GET / HTTP/5.6\r\n", b"GET /a b HTTP/1.1\r\n", b"GET /# HTTP/1.1\r\n"):
        with pytest.raises(BadRequest):
            RequestParser().feed(line)
    with pytest.raises(BadRequest):
        ResponseParser().feed(b"HTTP/1.1 2000 OK\r\n")


# --- field lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        b"A: 1\r\n folded\r\n",  # obs-fold
        b"A: 1\r\n\tfolded\r\n",
        b" A: 1\r\n",  # first field line starts with SP
        b"A : 1\r\n",  # whitespace before the colon
        b"A\t: 1\r\n",
        b": 1\r\n",  # empty name
        b"A(b): 1\r\n",  # not a token
        b"A\xc3\xa9: 1\r\n",
        b"NoColon\r\n",
        b"A: 1\x00\r\n",  # control bytes
        b"A: \x01\r\n",
        b"A: 1\x0b2\r\n",
        b"A: 1\x0c\r\n",
        b"A: 1\x7f\r\n",  # DEL
        b"A: 1\x1b\r\n",
        b"A: 1\rB: 2\r\n",  # bare CR
        b"A: 1\nB: 2\r\n",  # bare LF
        b"A: 1\r\r\n",
        b"A\r\n: 1\r\n",
    ],
)
def test_rejected_field_lines(fields: bytes) -> None:
    assert req_error(b"GET / HTTP/1.1\r\n" + fields + b"\r\n") is BadRequest
    assert resp_error(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n") is BadRequest


def test_htab_in_values_is_fine() -> None:
    assert req(b"GET / HTTP/1.1\r\nA: x\ty\r\n\r\n").headers.get(b"a") == b"x\ty"


@pytest.mark.parametrize(
    "partial",
    [
        b"GET / HTTP/1.1\nHost: a\n",  # LF-only lines
        b"GET / HTTP/1.1\r\nHost: a\nX",
        b"GET / HTTP/1.1\r\nHost: a\rX",
        b"GET / HTTP/1.1\r\nHost: \x00",
        b"GET / HTTP/1.1\r\n Host: a",
        b"\n",
        b"\rG",
    ],
)
def test_bad_partial_heads_fail_promptly(partial: bytes) -> None:
    """No waiting for the size limit or the end of input."""
    with pytest.raises(BadRequest):
        RequestParser().feed(partial)
    p = RequestParser()
    with pytest.raises(BadRequest):
        for i in range(len(partial)):
            p.feed(partial[i:i + 1])


# --- limits --------------------------------------------------------------------------


def test_request_line_too_long() -> None:
    line = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n"
    assert req_error(line + b"\r\n", max_line=100) is UriTooLong
    p = RequestParser(max_line=100)
    with pytest.raises(UriTooLong):
        p.feed(line[:102])  # no CRLF yet, already too long
    assert req(line + b"\r\n", max_line=len(line) - 2).target == b"/" + b"a" * 100


def test_head_too_large() -> None:
    raw = b"GET / HTTP/1.1\r\nA: " + b"x" * 200 + b"\r\n\r\n"
    assert req_error(raw, max_head=len(raw) - 1) is HeadTooLarge
    assert req(raw, max_head=len(raw)).size == len(raw)
    p = RequestParser(max_head=100)
    with pytest.raises(HeadTooLarge):
        p.feed(raw[:100])
    rp = ResponseParser(max_head=100)
    with pytest.raises(HeadTooLarge):
        rp.feed(b"HTTP/1.1 200 OK\r\nA: " + b"x" * 200)


def test_too_many_fields() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"A: 1\r\n" * 11 + b"\r\n"
    assert req_error(raw, max_headers=10) is HeadTooLarge
    assert len(req(raw, max_headers=11).headers) == 11


# --- request framing -----------------------------------------------------------------


def post(fields: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"POST /p " + version + b"\r\nHost: a\r\n" + fields + b"\r\n"


@pytest.mark.parametrize(
    ("fields", "framing", "length"),
    [
        (b"", NONE, 0),
        (b"Content-Length: 0\r\n", LENGTH, 0),
        (b"Content-Length: 42\r\n", LENGTH, 42),
        (b"content-LENGTH:  007 \r\n", LENGTH, 7),
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", LENGTH, 5),
        (b"Content-Length: 5, 5\r\n", LENGTH, 5),
        (b"Content-Length: 9223372036854775807\r\n", LENGTH, 2**63 - 1),
        (b"Transfer-Encoding: chunked\r\n", CHUNKED, 0),
        (b"Transfer-Encoding: CHUNKED\r\n", CHUNKED, 0),
        (b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED, 0),
        (b"Transfer-Encoding: deflate, chunked\r\n", CHUNKED, 0),
        (b"Transfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n", CHUNKED, 0),
        (b"Transfer-Encoding: gzip;q=1, chunked\r\n", CHUNKED, 0),
        (b"Transfer-Encoding: , chunked\r\n", CHUNKED, 0),
    ],
)
def test_request_framing(fields: bytes, framing: int, length: int) -> None:
    h = req(post(fields) + b"body")
    assert (h.framing, h.length) == (framing, length)


@pytest.mark.parametrize(
    "fields",
    [
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 1\r\nTransfer-Encoding: identity\r\n",
        b"Content-Length: 10\r\nTransfer-Encoding:\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: pigeons\r\n",
        b"Transfer-Encoding: chunkedchunked\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding: chunked, deflate\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: deflate\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked;x=1\r\n",
        b"Transfer-Encoding:\r\n",
        b"Transfer-Encoding: gzip chunked\r\n",
        b"Transfer-Encoding: \"chunked\"\r\n",
        b"Content-Length: 1\r\nContent-Length: 2\r\n",
        b"Content-Length: 5, 6\r\n",
        b"Content-Length: 5,\r\n",
        b"Content-Length: , 5\r\n",
        b"Content-Length: \r\n",
        b"Content-Length: +5\r\n",
        b"Content-Length: -5\r\n",
        b"Content-Length: 4 2\r\n",
        b"Content-Length: 0x10\r\n",
        b"Content-Length: 5.0\r\n",
        b"Content-Length: 1_000\r\n",
        b"Content-Length: \xd9\xa3\r\n",  # a non-ASCII digit
        b"Content-Length: 9223372036854775808\r\n",  # 2**63
        b"Content-Length: 1000000000000000000000\r\n",
    ],
)
def test_rejected_request_framing(fields: bytes) -> None:
    assert req_error(post(fields)) is BadRequest


def test_transfer_encoding_in_http10_request() -> None:
    assert req_error(post(b"Transfer-Encoding: chunked\r\n", b"HTTP/1.0")) is BadRequest
    assert req(post(b"Content-Length: 3\r\n", b"HTTP/1.0")).framing == LENGTH


# --- connection semantics ------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"HTTP/1.1", None, True),
        (b"HTTP/1.1", b"close", False),
        (b"HTTP/1.1", b"Keep-Alive, CLOSE", False),
        (b"HTTP/1.1", b"keep-alive", True),
        (b"HTTP/1.1", b"closed", True),
        (b"HTTP/1.0", None, False),
        (b"HTTP/1.0", b"Keep-Alive", True),
        (b"HTTP/1.0", b"keep-alive, close", False),
        (b"HTTP/1.0", b"close", False),
    ],
)
def test_keep_alive(version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    fields = b"Connection: " + connection + b"\r\n" if connection is not None else b""
    assert req(b"GET / " + version + b"\r\n" + fields + b"\r\n").keep_alive is keep_alive


def test_keep_alive_across_repeated_connection_fields() -> None:
    h = req(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n")
    assert h.keep_alive is False


@pytest.mark.parametrize(
    ("raw", "upgrade"),
    [
        (b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n", (b"websocket",)),
        (b"GET / HTTP/1.1\r\nConnection: keep-alive, upgrade\r\nUpgrade: h2c, WebSocket/13\r\n\r\n",
         (b"h2c", b"websocket/13")),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", ()),  # no Connection: upgrade
        (b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n", ()),  # nothing offered
        (b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", ()),
    ],
)
def test_upgrade(raw: bytes, upgrade: tuple[bytes, ...]) -> None:
    assert req(raw + b"frames").upgrade == upgrade


def test_upgrade_request_keeps_following_bytes() -> None:
    raw = b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    p = RequestParser()
    assert p.feed(raw + b"\x81\x05hello") is not None
    assert p.take_rest() == b"\x81\x05hello"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"100-continue", True), (b"100-Continue", True), (b" 100-CONTINUE ", True),
     (b"something", False), (b"", False)],
)
def test_expect_continue(value: bytes, expected: bool) -> None:
    h = req(post(b"Expect: " + value + b"\r\nContent-Length: 3\r\n"))
    assert h.expect_continue is expected
    assert req(b"GET / HTTP/1.1\r\n\r\n").expect_continue is False


# --- responses -----------------------------------------------------------------------


def test_response_basics() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"
    h = resp(raw)
    assert (h.method, h.target, h.version, h.status, h.reason) == (b"", b"", 11, 200, b"OK")
    assert (h.framing, h.length, h.keep_alive) == (LENGTH, 5, True)
    assert h.headers.get_all(b"set-cookie") == [b"a=1", b"b=2"]
    p = ResponseParser()
    p.start(b"GET")
    assert p.feed(raw) is not None and p.take_rest() == b"hello"


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        (b"HTTP/1.1 404 Not Found", 404, b"Not Found"),
        (b"HTTP/1.1 200 ", 200, b""),
        (b"HTTP/1.1 200", 200, b""),
        (b"HTTP/1.0 599 \tweird reason\xff", 599, b"\tweird reason\xff"),
        (b"HTTP/1.1 100 Continue", 100, b"Continue"),
    ],
)
def test_status_lines(line: bytes, status: int, reason: bytes) -> None:
    h = resp(line + b"\r\nContent-Length: 0\r\n\r\n")
    assert (h.status, h.reason) == (status, reason)


@pytest.mark.parametrize(
    "line",
    [b"HTTP/1.1 99 Low", b"HTTP/1.1 600 High", b"HTTP/1.1 2000 OK", b"HTTP/1.1 20 OK",
     b"HTTP/1.1 abc OK", b"HTTP/1.1  200 OK", b"HTTP/2 200 OK", b"HTTP/2.0 200 OK",
     b"HTTP/1.1", b"ICY 200 OK", b"http/1.1 200 OK", b" HTTP/1.1 200 OK",
     b"HTTP/1.1 +20 OK", b"HTTP/1.1 200 O\x00K"],
)
def test_rejected_status_lines(line: bytes) -> None:
    assert resp_error(line + b"\r\nContent-Length: 0\r\n\r\n") is BadRequest


@pytest.mark.parametrize(
    ("method", "line", "fields", "framing", "length", "keep_alive"),
    [
        (b"GET", b"HTTP/1.1 200 OK", b"Content-Length: 3\r\n", LENGTH, 3, True),
        (b"HEAD", b"HTTP/1.1 200 OK", b"Content-Length: 3\r\n", NONE, 0, True),
        (b"HEAD", b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked\r\n", NONE, 0, True),
        (b"GET", b"HTTP/1.1 204 No Content", b"", NONE, 0, True),
        (b"GET", b"HTTP/1.1 304 Not Modified", b"Content-Length: 9\r\n", NONE, 0, True),
        (b"GET", b"HTTP/1.1 100 Continue", b"", NONE, 0, True),
        (b"GET", b"HTTP/1.1 103 Early Hints", b"Link: </s.css>\r\n", NONE, 0, True),
        (b"CONNECT", b"HTTP/1.1 200 OK", b"", NONE, 0, True),
        (b"GET", b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked\r\n", CHUNKED, 0, True),
        (b"GET", b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED, 0, True),
        (b"GET", b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip\r\n", CLOSE, 0, False),
        (b"GET", b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked, gzip\r\n", CLOSE, 0, False),
        (b"GET", b"HTTP/1.1 200 OK", b"", CLOSE, 0, False),
        (b"GET", b"HTTP/1.1 200 OK", b"Connection: close\r\nContent-Length: 1\r\n",
         LENGTH, 1, False),
        (b"GET", b"HTTP/1.0 200 OK", b"Content-Length: 1\r\n", LENGTH, 1, False),
        (b"GET", b"HTTP/1.0 200 OK", b"Connection: keep-alive\r\nContent-Length: 1\r\n",
         LENGTH, 1, True),
        (b"GET", b"HTTP/1.1 200 OK", b"Content-Length: 2, 2\r\n", LENGTH, 2, True),
        (b"GET", b"HTTP/1.0 200 OK", b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n",
         CHUNKED, 0, False),
    ],
)
def test_response_framing(
    method: bytes, line: bytes, fields: bytes, framing: int, length: int, keep_alive: bool
) -> None:
    h = resp(line + b"\r\n" + fields + b"\r\n", method)
    assert (h.framing, h.length, h.keep_alive) == (framing, length, keep_alive)


@pytest.mark.parametrize(
    "fields",
    [
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Content-Length: 1\r\nContent-Length: 2\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: abc\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: g(zip\r\n",
    ],
)
def test_rejected_response_framing(fields: bytes) -> None:
    assert resp_error(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n") is BadRequest


def test_interim_responses_then_final() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    )
    p = ResponseParser()
    p.start(b"POST")
    statuses = []
    data = raw
    while True:
        head = p.feed(data)
        assert head is not None
        statuses.append(head.status)
        data = p.take_rest()
        if head.status >= 200:
            break
    assert statuses == [100, 103, 200] and data == b"hi"
    # Without take_rest(), feed(b"") parses the held bytes as the next head.
    p.start(b"POST")
    assert p.feed(raw) is not None
    second = p.feed(b"")
    assert second is not None and second.status == 103
    p.start(b"GET")
    assert p.feed(b"HTTP/1.1 204 No Content\r\n\r\n") is not None


def test_switching_protocols() -> None:
    raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n"
    h = resp(raw + b"\x81\x00")
    assert (h.status, h.upgrade, h.framing) == (101, (b"websocket",), NONE)


def test_response_does_not_skip_empty_lines() -> None:
    assert resp_error(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") is BadRequest


def test_response_eof_inside_head() -> None:
    p = ResponseParser()
    p.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(BadRequest):
        p.eof()


# --- properties ----------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
token = st.text(TCHARS, min_size=1, max_size=12).map(str.encode)
field_value = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c <= 0x7E or c >= 0x80).strip(b" \t")
)
path = st.text(
    "abcXYZ019-._~!$&'()*+,;=:@/%?\"|{}", max_size=20
).map(lambda s: b"/" + s.encode())
plain_name = token.filter(
    lambda n: n.lower() not in {b"content-length", b"transfer-encoding", b"connection",
                                b"upgrade", b"expect"}
)


@settings(max_examples=200, deadline=None)
@given(
    method=token,
    target=path,
    version=st.sampled_from([b"HTTP/1.0", b"HTTP/1.1"]),
    fields=st.lists(st.tuples(plain_name, field_value), max_size=8),
    cut=st.integers(min_value=0),
)
def test_generated_requests_round_trip(
    method: bytes, target: bytes, version: bytes, fields: list[tuple[bytes, bytes]], cut: int
) -> None:
    raw = request_head(method, target, version, fields)
    cut %= len(raw) + 1
    p = RequestParser()
    head = p.feed(raw[:cut]) or p.feed(raw[cut:])
    assert head is not None
    assert (head.method, head.target, head.headers.items) == (method, target, fields)
    assert head.version == (11 if version == b"HTTP/1.1" else 10)
    assert head.size == len(raw) and p.take_rest() == b""


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(100, 599),
    reason=st.text("abc XYZ-", max_size=12).map(str.encode),
    fields=st.lists(st.tuples(plain_name, field_value), max_size=8),
)
def test_generated_responses_round_trip(
    status: int, reason: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    raw = response_head(b"HTTP/1.1", status, reason, fields)
    head = ResponseParser().feed(raw)
    assert head is not None
    assert (head.status, head.reason, head.headers.items) == (status, reason, fields)


MESSAGE_BYTES = st.lists(
    st.sampled_from([b"GET", b" ", b"/", b"HTTP/1.1", b"\r\n", b"\r", b"\n", b":", b"a",
                     b"Content-Length: 1", b"Transfer-Encoding: chunked", b"\x00", b"\t",
                     b"\xff", b"#", b"@", b"http://", b"CONNECT", b"*", b"HTTP/1.0", b","]),
    max_size=30,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(st.binary(max_size=200), MESSAGE_BYTES), cuts=st.lists(st.integers(0), max_size=4))
def test_arbitrary_bytes_raise_only_http_errors(data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    for make in (RequestParser, ResponseParser):
        p = make()
        try:
            for piece in pieces:
                while p.feed(piece) is not None:
                    piece = p.take_rest()
                    if not piece:
                        break
            p.eof()
        except HttpError:
            pass


# -- field lines a worker has seen before --------------------------------------

def _request(raw: bytes, max_headers: int = 100) -> Head:
    head = RequestParser(max_headers=max_headers).feed(raw)
    assert head is not None
    return head


def test_repeated_request_fields_are_split_once_and_the_request_line_every_time() -> None:
    fields = b"Host: a.example\r\nUser-Agent: t\r\nContent-Length: 3\r\n\r\nabc"
    one = _request(b"POST /one HTTP/1.1\r\n" + fields)
    two = _request(b"PUT /two?x HTTP/1.1\r\n" + fields)
    assert (one.method, one.target, two.method, two.target) == (b"POST", b"/one", b"PUT", b"/two?x")
    assert two.headers is one.headers and two.framing == LENGTH and two.length == 3
    for bad in (b"GET /a b HTTP/1.1\r\n", b"GET /\x01 HTTP/1.1\r\n", b"G\rT / HTTP/1.1\r\n", b"GET / HTTP/1.2\r\n"):
        with pytest.raises(BadRequest):
            _request(bad + fields)


def test_request_fields_mean_what_their_version_and_method_say() -> None:
    fields = b"Host: b.example\r\nConnection: keep-alive\r\n\r\n"
    assert _request(b"GET / HTTP/1.1\r\n" + fields).keep_alive
    assert _request(b"GET / HTTP/1.0\r\n" + fields).keep_alive
    close = b"Host: b.example\r\n\r\n"
    assert _request(b"GET / HTTP/1.1\r\n" + close).keep_alive
    assert not _request(b"GET / HTTP/1.0\r\n" + close).keep_alive
    chunked = b"Host: b.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _request(b"POST / HTTP/1.1\r\n" + chunked).framing == CHUNKED
    with pytest.raises(BadRequest):
        _request(b"POST / HTTP/1.0\r\n" + chunked)
    connect = _request(b"CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\nContent-Length: 5\r\n\r\n")
    assert (connect.framing, connect.keep_alive) == (NONE, False)
    again = _request(b"POST / HTTP/1.1\r\nHost: b.example:443\r\nContent-Length: 5\r\n\r\n")
    assert (again.framing, again.length, again.keep_alive) == (LENGTH, 5, True)


def test_request_fields_seen_before_still_meet_the_limits() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: c\r\nA: 1\r\nB: 2\r\n\r\n"
    _request(raw)
    with pytest.raises(HeadTooLarge):
        _request(raw, max_headers=2)


def test_the_request_fields_cache_is_bounded() -> None:
    from forkproxy.http import parser as p

    for i in range(3 * p.CACHED_HEADS):
        _request(b"GET / HTTP/1.1\r\nHost: d\r\nCookie: %d\r\n\r\n" % i)
        assert len(p._REQUEST_FIELDS) <= p.CACHED_HEADS
    big = b"GET / HTTP/1.1\r\nHost: d\r\nCookie: " + b"c" * p.CACHED_HEAD_MAX + b"\r\n\r\n"
    assert _request(big).headers is not _request(big).headers
