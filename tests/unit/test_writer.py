# Invariants: what the writer emits, the parser reads back unchanged; no CR or LF can
# be smuggled through a start line, a name or a value; every prebuilt error response
# is a complete, correctly framed HTTP/1.1 message.
"""Head serialisation and the prebuilt error responses."""

from __future__ import annotations

import pytest

from forkproxy.http.parser import LENGTH, RequestParser, ResponseParser
from forkproxy.http.writer import (
    ERROR_STATUSES,
    error_response,
    reason,
    redirect_response,
    request_head,
    response_head,
)


def test_request_head() -> None:
    out = request_head(b"GET", b"/x?y", b"HTTP/1.1", [(b"Host", b"a"), (b"X-Y", b"")])
    assert out == b"GET /x?y HTTP/1.1\r\nHost: a\r\nX-Y: \r\n\r\n"
    assert request_head(b"GET", b"/", b"HTTP/1.0", []) == b"GET / HTTP/1.0\r\n\r\n"


def test_response_head() -> None:
    out = response_head(b"HTTP/1.1", 404, b"Not Found", [(b"Content-Length", b"0")])
    assert out == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert response_head(b"HTTP/1.1", 200, b"", []) == b"HTTP/1.1 200 \r\n\r\n"


def test_round_trip() -> None:
    fields = [(b"Host", b"h"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    head = RequestParser().feed(request_head(b"POST", b"/p", b"HTTP/1.1", fields))
    assert head is not None and head.headers.items == fields
    head = ResponseParser().feed(response_head(b"HTTP/1.0", 201, b"Created", fields))
    assert head is not None and (head.status, head.version, head.headers.items) == (201, 10, fields)


@pytest.mark.parametrize(
    "args",
    [
        (b"GET", b"/\r\nX: y", b"HTTP/1.1", []),
        (b"GET", b"/", b"HTTP/1.1", [(b"A", b"1\r\nInjected: yes")]),
        (b"GET", b"/", b"HTTP/1.1", [(b"A", b"1\n")]),
        (b"GET", b"/", b"HTTP/1.1", [(b"A\r", b"1")]),
        (b"GET", b"/", b"HTTP/1.1", [(b"A", b"\r")]),
    ],
)
def test_no_line_breaks_inside_fields(args: tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]) -> None:
    with pytest.raises(ValueError):
        request_head(*args)
    with pytest.raises(ValueError):
        response_head(b"HTTP/1.1", 200, b"OK", [(b"A", b"x\r\ny")])


@pytest.mark.parametrize("status", [400, 404, 408, 413, 414, 431, 500, 502, 503, 504])
@pytest.mark.parametrize("keep_alive", [False, True])
def test_error_responses(status: int, keep_alive: bool) -> None:
    raw = error_response(status, keep_alive=keep_alive)
    assert raw is error_response(status, keep_alive=keep_alive)  # prebuilt once
    p = ResponseParser()
    p.start(b"GET")
    head = p.feed(raw)
    assert head is not None
    assert (head.status, head.reason, head.version) == (status, reason(status), 11)
    assert head.framing == LENGTH and head.keep_alive is keep_alive
    body = p.take_rest()
    assert len(body) == head.length and str(status).encode() in body
    assert head.headers.get(b"content-type") == b"text/html"
    assert head.headers.get(b"connection") == (b"keep-alive" if keep_alive else b"close")


def test_prebuilt_statuses_cover_the_design() -> None:
    assert {400, 404, 408, 413, 414, 431, 500, 502, 503, 504} <= set(ERROR_STATUSES)
    assert error_response(400) == error_response(400, keep_alive=False)


def test_other_statuses() -> None:
    head = ResponseParser().feed(error_response(418))
    assert head is not None and head.status == 418 and head.reason == b""
    with pytest.raises(ValueError):
        error_response(200)


@pytest.mark.parametrize("keep_alive", [False, True])
def test_redirect_response(keep_alive: bool) -> None:
    raw = redirect_response(b"http://example.com:8000/ws/?a=1", keep_alive=keep_alive)
    p = ResponseParser()
    p.start(b"GET")
    head = p.feed(raw)
    assert head is not None
    assert (head.status, head.reason) == (301, b"Moved Permanently")
    assert head.headers.get(b"location") == b"http://example.com:8000/ws/?a=1"
    assert head.framing == LENGTH and head.keep_alive is keep_alive
    body = p.take_rest()
    assert len(body) == head.length and b"<h1>301 Moved Permanently</h1>" in body
    with pytest.raises(ValueError):
        redirect_response(b"/x\r\nSet-Cookie: a=b")
