# Invariants:
# - A head is built with one join and ends in exactly one CRLFCRLF.
# - No CR or LF ever reaches the wire inside a start line, a field name or a value:
#   a head whose CR/LF count does not match its line count raises ValueError (values
#   from a parsed head can never trip it; only a bad template could).
# - Error responses are built once at import, are immutable bytes, and carry
#   Content-Length; "Connection: close" unless the caller keeps the connection.
# - A redirect (nginx's slash redirect) is the same small page with a Location field;
#   only its head is built per response.
"""Serialise request and response heads; prebuilt error responses."""

from __future__ import annotations

from collections.abc import Iterable

_REASONS: dict[int, bytes] = {
    100: b"Continue", 101: b"Switching Protocols", 103: b"Early Hints",
    200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found",
    303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect",
    308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 411: b"Length Required", 413: b"Content Too Large",
    414: b"URI Too Long", 417: b"Expectation Failed", 421: b"Misdirected Request",
    426: b"Upgrade Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}

# Statuses the proxy itself answers with (DESIGN.md "Errors a client can see").
ERROR_STATUSES = (400, 404, 405, 408, 413, 414, 417, 431, 500, 501, 502, 503, 504, 505)


def reason(status: int) -> bytes:
    """The standard reason phrase, or b"" for an unknown status."""
    return _REASONS.get(status, b"")


def _lines(first: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    parts = [first]
    parts += [name + b": " + value for name, value in headers]
    n = len(parts)
    parts += (b"", b"")
    out = b"\r\n".join(parts)
    if out.count(b"\n") != n + 1 or out.count(b"\r") != n + 1:
        raise ValueError("CR or LF inside a start line or header field")
    return out


def request_head(
    method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]
) -> bytes:
    """b"GET /x HTTP/1.1\\r\\nName: v\\r\\n...\\r\\n\\r\\n"."""
    return _lines(method + b" " + target + b" " + version, headers)


def response_head(
    version: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
) -> bytes:
    """b"HTTP/1.1 200 OK\\r\\nName: v\\r\\n...\\r\\n\\r\\n"."""
    return _lines(version + b" %d " % status + reason, headers)


def _page(status: int) -> bytes:
    """nginx's small HTML page for a status."""
    title = b"%d %s" % (status, reason(status))
    return (
        b"<html>\r\n<head><title>" + title + b"</title></head>\r\n<body>\r\n<center><h1>"
        + title + b"</h1></center>\r\n<hr><center>forkproxy</center>\r\n</body>\r\n</html>\r\n"
    )


def _build(status: int, keep_alive: bool, location: bytes | None = None) -> bytes:
    body = _page(status) if location is None else _MOVED_PAGE
    headers = [
        (b"Server", b"forkproxy"),
        (b"Content-Type", b"text/html"),
        (b"Content-Length", b"%d" % len(body)),
    ]
    if location is not None:
        headers.append((b"Location", location))
    headers.append((b"Connection", b"keep-alive" if keep_alive else b"close"))
    return response_head(b"HTTP/1.1", status, reason(status), headers) + body


_MOVED_PAGE = _page(301)
_ERRORS: dict[tuple[int, bool], bytes] = {
    (status, keep): _build(status, keep)
    for status in ERROR_STATUSES
    for keep in (False, True)
}


def error_response(status: int, *, keep_alive: bool = False) -> bytes:
    """A small fixed response for `status` (prebuilt for ERROR_STATUSES)."""
    out = _ERRORS.get((status, keep_alive))
    if out is None:
        if not 400 <= status <= 599:
            raise ValueError(f"not an error status: {status}")
        out = _build(status, keep_alive)
    return out


def redirect_response(location: bytes, *, keep_alive: bool = False) -> bytes:
    """A 301 Moved Permanently to `location`, with nginx's small page as body.

    Raises ValueError if `location` holds a CR or LF.
    """
    return _build(301, keep_alive, location)
