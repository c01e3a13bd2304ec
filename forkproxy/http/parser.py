# Invariants:
# - Sans-I/O: bytes in, a Head out; no sockets, clocks or config. Errors are HttpError
#   subclasses only (BadRequest, UriTooLong, HeadTooLarge); nothing else escapes feed().
# - The end of a head is found with one bytes.find per feed, resumed 3 bytes before
#   where the previous search stopped; a head is split once and validated with a few
#   C-level passes over the whole block (translate, split); no per-byte Python.
# - When nothing is buffered and `data` holds a complete head, it is parsed straight
#   from `data`; only bytes after the head are kept (until take_rest()).
# - An idle parser holds no buffer (`buffered == 0`). Memory is bounded by max_head:
#   a partial head is never allowed to grow past it.
# - A Head is never changed once built. So a response head whose bytes were seen before
#   (a backend repeats its heads; nginx's changes with its Date, once a second) is parsed
#   once per worker: `_RESPONSES` maps the head's bytes to its Head (bounded; cleared
#   when full; only responses to methods other than HEAD and CONNECT, whose framing
#   depends on the head alone). Likewise a request's field lines: `_REQUEST_FIELDS` maps
#   them (with the version) to their Headers and meaning; the request line is parsed
#   and checked every time.
# - A partial head is judged as it arrives (bare CR/LF, control bytes, obs-fold; the
#   start line as soon as it is complete, the request line against max_line), so a
#   malformed request fails promptly instead of at the size limit.
#
# Body framing (RFC 9112 §6.3), decided once per head:
#   request:  TE+CL -> 400 | TE in HTTP/1.0 -> 400 | TE not ending in one chunked -> 400
#             | TE -> CHUNKED | CL (valid) -> LENGTH | neither -> NONE
#             | CONNECT -> NONE and not keep-alive (what follows is the tunnel's)
#   response: request HEAD, 1xx, 204, 304, 2xx to CONNECT -> NONE | TE+CL -> error
#             | TE ending in chunked -> CHUNKED | other TE -> CLOSE | CL -> LENGTH
#             | neither -> CLOSE; CLOSE or TE in an HTTP/1.0 response -> not keep-alive
"""Incremental HTTP/1.1 head parsers: RequestParser and ResponseParser."""

from __future__ import annotations

from typing import TypeVar

from forkproxy.errors import BadRequest, HeadTooLarge, UriTooLong
from forkproxy.http import grammar as g
from forkproxy.http.grammar import FIELD_ONLY, TARGET_ONLY, TCHAR_ONLY
from forkproxy.http.headers import Headers, list_tokens

NONE, LENGTH, CHUNKED, CLOSE = 0, 1, 2, 3

_VERSIONS = {b"HTTP/1.1": 11, b"HTTP/1.0": 10}


class Head:
    __slots__ = (
        "connection",
        "expect_continue",
        "framing",
        "headers",
        "keep_alive",
        "length",
        "method",
        "reason",
        "rebuilt",
        "size",
        "status",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: int,
        status: int,
        reason: bytes,
        headers: Headers,
        framing: int,
        length: int,
        keep_alive: bool,
        upgrade: tuple[bytes, ...],
        expect_continue: bool,
        size: int,
        connection: tuple[bytes, ...] = (),
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.framing = framing
        self.length = length
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.size = size
        self.connection = connection  # the Connection field's tokens, lowercase
        self.rebuilt: tuple[int, bytes] | None = None  # respond.py's last head built from this one

    def __repr__(self) -> str:
        start = (
            f"{self.method!r} {self.target!r}" if self.method else f"{self.status} {self.reason!r}"
        )
        return (
            f"<Head {start} v{self.version} framing={self.framing} length={self.length}"
            f" keep_alive={self.keep_alive} upgrade={self.upgrade} size={self.size}>"
        )


class _HeadReader:
    """Buffering shared by both parsers; subclasses turn a complete head into a Head."""

    __slots__ = ("_buf", "_line_ok", "_max_head", "_max_headers", "_max_line", "_scan")

    _skip_crlf = False  # requests: ignore empty lines before the request line

    def __init__(self, max_line: int, max_head: int, max_headers: int) -> None:
        self._buf: bytes | bytearray = b""
        self._scan = 0  # buffer length at the last unsuccessful search
        self._line_ok = False  # the start line of the partial head is complete
        self._max_line = max_line
        self._max_head = max_head
        self._max_headers = max_headers

    def _parse(self, head: bytes, size: int) -> Head:
        raise NotImplementedError

    def _start_line(self, line: bytes) -> None:
        """Judge a start line as soon as it is complete (before the head is)."""
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> Head | None:
        """Append data; the Head once complete, else None. See the module comment."""
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._buf
        if not buf:
            if not data:
                return None
            if not (self._skip_crlf and data[0] == 13):
                end = data.find(b"\r\n\r\n", 0, self._max_head)
                if end >= 0:
                    head = self._parse(data[:end], end + 4)
                    self._buf = data[end + 4:]
                    return head
            self._buf = buf = bytearray(data)
        else:
            if isinstance(buf, bytes):  # bytes left after a head: start a buffer
                self._buf = buf = bytearray(buf)
            buf += data
        return self._search(buf)

    def _search(self, buf: bytearray) -> Head | None:
        scan = self._scan
        if scan == 0 and self._skip_crlf and buf[:1] == b"\r":
            i = 0
            while buf.startswith(b"\r\n", i):
                i += 2
            if i:
                del buf[:i]
            if not buf or (len(buf) == 1 and buf[0] == 13):
                return None  # only empty lines so far: nothing is held but a CR
        end = buf.find(b"\r\n\r\n", scan - 3 if scan > 3 else 0, self._max_head)
        if end < 0:
            self._check_partial(buf, scan)
            return None
        head = self._parse(bytes(buf[:end]), end + 4)
        self._buf = bytes(buf[end + 4:])
        self._scan = 0
        self._line_ok = False
        return head

    def _check_partial(self, buf: bytearray, scan: int) -> None:
        n = len(buf)
        if n >= self._max_head:
            raise HeadTooLarge(f"head larger than {self._max_head} bytes")
        start = scan - 2 if scan > 2 else 0  # re-judge the CRLF that ended the last read
        if g.BAD_PARTIAL.search(buf, start) is not None:
            raise BadRequest("bare CR or LF, or a control byte, in the head")
        if not self._line_ok:
            eol = buf.find(b"\r\n", start)
            if eol >= 0:
                self._start_line(bytes(buf[:eol]))
                self._line_ok = True
            elif n - (buf[-1] == 13) > self._max_line:  # a last CR may end the line
                raise UriTooLong(f"request line longer than {self._max_line} bytes")
        self._scan = n

    def take_rest(self) -> bytes:
        """Bytes after the last returned head; the parser then holds nothing."""
        rest = self._buf
        self._buf = b""
        if type(rest) is bytes:
            return rest  # left by a complete head: _scan and _line_ok are reset already
        self._scan = 0
        self._line_ok = False
        return bytes(rest)

    def eof(self) -> None:
        """Input ended: a partial head is an error; empty lines are not."""
        buf = self._buf
        if buf and not (self._skip_crlf and self._scan == 0 and buf == b"\r"):
            raise BadRequest("connection closed inside a head")

    def _fields(self, head: bytes, lines: list[bytes]) -> Headers:
        """Validate the whole head and split its field lines (lines[0] is the start line).

        One translate over the head finds control bytes; CR and LF must each occur
        exactly once per CRLF between lines (no bare CR or LF). Names are checked
        together: their concatenation must be all tchar.
        """
        n = len(lines) - 1
        if 0 in head.translate(FIELD_ONLY) or head.count(b"\r") != n or head.count(b"\n") != n:
            raise BadRequest("bare CR or LF, or a control byte, in the head")
        if n > self._max_headers:
            raise HeadTooLarge(f"more than {self._max_headers} header fields")
        items: list[tuple[bytes, bytes]] = []
        lnames: list[bytes] = []
        append = items.append
        lappend = lnames.append
        it = iter(lines)
        next(it)
        for line in it:
            name, colon, value = line.partition(b":")
            if not colon:
                raise BadRequest("field line without a colon")
            # Only SP and HTAB can be whitespace here (controls were rejected above),
            # so the argument-less strip() strips exactly OWS.
            append((name, value.strip()))
            lappend(name.lower())
        if b"" in lnames or 0 in b"".join(lnames).translate(TCHAR_ONLY):
            raise BadRequest("empty or invalid field name")
        return Headers(items, lnames)


class RequestParser(_HeadReader):
    __slots__ = ()

    _skip_crlf = True

    def __init__(self, max_line: int = 8192, max_head: int = 32768, max_headers: int = 100) -> None:
        super().__init__(max_line, max_head, max_headers)

    def _start_line(self, line: bytes) -> None:
        self._request_line(line)

    def _request_line(self, line: bytes) -> tuple[bytes, bytes, int]:
        """RFC 9112 §3: method SP request-target SP HTTP-version, nothing else."""
        if len(line) > self._max_line:
            raise UriTooLong(f"request line longer than {self._max_line} bytes")
        try:
            method, target, proto = line.split(b" ")
        except ValueError:
            raise BadRequest("malformed request line") from None
        version = _VERSIONS.get(proto)
        if version is None:
            raise BadRequest("unsupported protocol version")
        if (
            not method
            or not target
            or 0 in method.translate(TCHAR_ONLY)
            or 0 in target.translate(TARGET_ONLY)
        ):
            raise BadRequest("malformed method or request target")
        if target[0] != 0x2F or method == b"CONNECT":  # not the common origin-form
            _check_target(method, target)
        return method, target, version

    def _parse(self, head: bytes, size: int) -> Head:
        nl = head.find(b"\r\n")
        method, target, version = self._request_line(head[:nl] if nl >= 0 else head)
        if method == b"CONNECT":
            # RFC 9110 §9.3.6: CONNECT has no content; what follows is the tunnel's,
            # so the connection can never carry another request.
            headers, _, upgrade, expect_continue, _, _, tokens = self._meaning(head, version)
            framing, length, keep_alive = NONE, 0, False
        else:
            fields = head[nl:] if nl >= 0 else b""
            key = fields if version == 11 else b"1.0" + fields
            known = _REQUEST_FIELDS.get(key)
            if known is None or len(known[0].items) > self._max_headers:
                known = _remember(_REQUEST_FIELDS, key, self._meaning(head, version))
            headers, keep_alive, upgrade, expect_continue, framing, length, tokens = known
        return Head(
            method, target, version, 0, b"", headers,
            framing, length, keep_alive, upgrade, expect_continue, size, tokens,
        )

    def _meaning(self, head: bytes, version: int) -> _Fields:
        """Validate and split the field lines; what they say about the message."""
        headers = self._fields(head, head.split(b"\r\n"))

        # Presence is tested on the lowercase names first: most requests carry none
        # of these fields, and a list scan is far cheaper than a lookup call.
        lnames = headers.lnames
        keep_alive = version == 11
        upgrade: tuple[bytes, ...] = ()
        tokens: tuple[bytes, ...] = ()
        if b"connection" in lnames:
            tokens = list_tokens(headers.combined(b"connection") or b"")
            if version == 11:
                keep_alive = b"close" not in tokens
                if b"upgrade" in tokens and b"upgrade" in lnames:
                    upgrade = list_tokens(headers.combined(b"upgrade") or b"")
            else:
                keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        expect_continue = b"expect" in lnames and b"100-continue" in list_tokens(
            headers.combined(b"expect") or b""
        )
        framing, length = NONE, 0
        if b"transfer-encoding" in lnames:
            if b"content-length" in lnames:
                raise BadRequest("Transfer-Encoding with Content-Length")
            if version == 10:
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            if not _ends_in_chunked(headers.combined(b"transfer-encoding") or b""):
                raise BadRequest("Transfer-Encoding does not end in chunked")
            framing = CHUNKED
        elif b"content-length" in lnames:
            framing, length = LENGTH, _content_length(headers.combined(b"content-length") or b"")
        return headers, keep_alive, upgrade, expect_continue, framing, length, tokens


class ResponseParser(_HeadReader):
    __slots__ = ("_connect", "_head_request")

    def __init__(self, max_head: int = 65536, max_headers: int = 100) -> None:
        super().__init__(max_head, max_head, max_headers)
        self._head_request = False
        self._connect = False

    def start(self, request_method: bytes) -> None:
        """Prepare for the response to a request with this method (HEAD: no body);
        anything buffered from an earlier exchange is dropped."""
        self._buf = b""
        self._scan = 0
        self._line_ok = False
        self._head_request = request_method == b"HEAD"
        self._connect = request_method == b"CONNECT"

    def _start_line(self, line: bytes) -> None:
        _status_line(line)

    def _parse(self, head: bytes, size: int) -> Head:
        if self._head_request or self._connect:
            return self._parse_new(head, size)
        known = _RESPONSES.get(head)
        if known is not None and len(known.headers.items) <= self._max_headers:
            return known
        return _remember(_RESPONSES, head, self._parse_new(head, size))

    def _parse_new(self, head: bytes, size: int) -> Head:
        lines = head.split(b"\r\n")
        version, status, reason = _status_line(lines[0])
        headers = self._fields(head, lines)

        lnames = headers.lnames
        keep_alive = version == 11
        tokens: tuple[bytes, ...] = ()
        if b"connection" in lnames:
            tokens = list_tokens(headers.combined(b"connection") or b"")
            if version == 11:
                keep_alive = b"close" not in tokens
            else:
                keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        upgrade: tuple[bytes, ...] = ()
        if b"upgrade" in lnames:
            upgrade = list_tokens(headers.combined(b"upgrade") or b"")

        te = headers.combined(b"transfer-encoding") if b"transfer-encoding" in lnames else None
        cl = headers.combined(b"content-length") if b"content-length" in lnames else None
        if te is not None and cl is not None:
            raise BadRequest("Transfer-Encoding with Content-Length")
        length = _content_length(cl) if cl is not None else 0
        if (
            self._head_request
            or status < 200
            or status == 204
            or status == 304
            or (self._connect and status < 300)
        ):
            framing, length = NONE, 0
        elif te is not None:
            framing = CHUNKED if _ends_in_chunked(te) else CLOSE
        elif cl is not None:
            framing = LENGTH
        else:
            framing = CLOSE
        if framing == CLOSE or (te is not None and version == 10):
            keep_alive = False  # RFC 9112 §6.1: TE in HTTP/1.0 is faulty framing
        return Head(
            b"", b"", version, status, reason, headers,
            framing, length, keep_alive, upgrade, False, size, tokens,
        )


# headers, keep_alive, upgrade, expect_continue, framing, length, Connection tokens
_Fields = tuple[Headers, bool, tuple[bytes, ...], bool, int, int, tuple[bytes, ...]]
# The field lines of requests seen by this worker (a client repeats them; only the
# request line changes) and what they mean, and the response heads seen by this worker
# (module comment). Each holds at most CACHED_HEADS entries of at most CACHED_HEAD_MAX bytes.
_REQUEST_FIELDS: dict[bytes, _Fields] = {}
_RESPONSES: dict[bytes, Head] = {}
CACHED_HEADS = 128
CACHED_HEAD_MAX = 1024

_T = TypeVar("_T")


def _remember(cache: dict[bytes, _T], key: bytes, value: _T) -> _T:
    """Keep `value` for a short `key`; a full cache is emptied, so a client cannot grow it."""
    if len(key) <= CACHED_HEAD_MAX:
        if len(cache) >= CACHED_HEADS:
            cache.clear()
        cache[key] = value
    return value


def _status_line(line: bytes) -> tuple[int, int, bytes]:
    """status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4).

    A missing SP after the code is tolerated. Reason bytes are checked with the rest
    of the head (no controls). A backend repeats a few status lines: each is parsed
    once per worker (up to 256 of them).
    """
    known = _STATUS_LINES.get(line)
    if known is not None:
        return known
    parsed = _parse_status_line(line)
    if len(_STATUS_LINES) < 256 and len(line) <= 64:
        _STATUS_LINES[line] = parsed
    return parsed


_STATUS_LINES: dict[bytes, tuple[int, int, bytes]] = {}


def _parse_status_line(line: bytes) -> tuple[int, int, bytes]:
    parts = line.split(b" ", 2)
    version = _VERSIONS.get(parts[0])
    if version is None or len(parts) < 2:
        raise BadRequest("malformed status line")
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        raise BadRequest("malformed status code")
    status = int(code)
    if not 100 <= status <= 599:  # RFC 9110 §15: anything else is invalid
        raise BadRequest("status code out of range")
    return version, status, parts[2] if len(parts) == 3 else b""


def _check_target(method: bytes, target: bytes) -> None:
    """RFC 9112 §3.2: the four request-target forms and the methods they go with."""
    first = target[0]
    if first == 0x2F:  # "/": origin-form
        if method == b"CONNECT":
            raise BadRequest("CONNECT needs an authority-form target")
    elif method == b"CONNECT":
        if g.AUTHORITY_FORM.fullmatch(target) is None:
            raise BadRequest("malformed authority-form target")
    elif target == b"*":
        if method != b"OPTIONS":
            raise BadRequest("asterisk-form is only for OPTIONS")
    elif g.ABSOLUTE_FORM.fullmatch(target) is None:
        raise BadRequest("malformed request target")


def _content_length(value: bytes) -> int:
    """RFC 9110 §8.6 / RFC 9112 §6.3: 1*DIGIT; identical repeats collapse."""
    if 44 in value:  # a comma
        values = {v.strip(b" \t") for v in value.split(b",")}
        if len(values) != 1:
            raise BadRequest("conflicting Content-Length values")
        value = values.pop()
    # bytes.isdigit() is ASCII-only: no sign, space, underscore or other digits.
    if not value.isdigit() or len(value) > 19:
        raise BadRequest("malformed Content-Length")
    n = int(value)
    if n > g.MAX_CONTENT_LENGTH:
        raise BadRequest("Content-Length too large")
    return n


def _ends_in_chunked(value: bytes) -> bool:
    """Validate a Transfer-Encoding list; True if its last coding is a bare chunked.

    chunked anywhere but last (applied twice, or before another coding) is an error
    when the list does end in chunked; RFC 9112 §6.1 forbids applying it twice.
    """
    names: list[bytes] = []
    bare_last = False
    for part in value.split(b","):
        part = part.strip(b" \t")
        if not part:
            continue
        m = g.TRANSFER_CODING.fullmatch(part)
        if m is None:
            raise BadRequest("malformed Transfer-Encoding")
        names.append(m.group(1).lower())
        bare_last = m.end(1) == len(part)
    if not names or names[-1] != b"chunked" or not bare_last:
        return False
    if b"chunked" in names[:-1]:
        raise BadRequest("chunked applied more than once")
    return True
