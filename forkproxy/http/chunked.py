# Invariants:
# - Resumable: any split of the input gives the same spans (as offsets of each piece),
#   the same consumed counts in total and the same errors.
# - Chunk payload is never looked at: a data span is computed from the chunk size.
#   Only size lines, the CRLF after data and trailer lines are matched, each with one
#   precompiled regex over `data` (bytes or memoryview, no copy); only a line split
#   across two feeds is copied, and it is bounded by max_line.
# - `consumed` never goes past the CRLF that ends the trailer section: what follows
#   belongs to the next message.
#
# States (h11's ChunkedReader, without per-chunk objects):
#   SIZE     --"<hex>[;ext]CRLF", size > 0-->  DATA  --size bytes-->  DATA_CR
#   SIZE     --"0[;ext]CRLF"----------------->  TRAILER
#   DATA_CR  --CR--> DATA_LF --LF--> SIZE
#   TRAILER  --"name: value CRLF"--> TRAILER;   TRAILER --CRLF--> DONE
"""Resumable chunked transfer-coding decoder (RFC 9112 §7.1) that returns spans."""

from __future__ import annotations

import re

from forkproxy.errors import BadRequest
from forkproxy.http import grammar as g

SIZE, DATA, DATA_CR, DATA_LF, TRAILER, DONE = range(6)

_LF = re.compile(rb"\n")
# How an unfinished size line must begin: hex digits, then the end, ";", BWS or CR.
_SIZE_START = re.compile(rb"[0-9A-Fa-f]{1,16}(?:[;\t \r]|\Z)")
_MAX_CHUNK = 2**63 - 1
_MAX_TRAILERS = 32768  # bytes of trailer lines in one message

Buffer = bytes | bytearray | memoryview


class ChunkedDecoder:
    __slots__ = ("_max_line", "_partial", "_remaining", "_state", "_trailers")

    def __init__(self, max_line: int = 4096) -> None:
        self._state = SIZE
        self._remaining = 0  # payload bytes left in the current chunk
        self._partial = b""  # a size or trailer line split across feeds
        self._max_line = max_line
        self._trailers = 0

    @property
    def done(self) -> bool:
        return self._state == DONE

    def feed(self, data: Buffer) -> tuple[int, list[tuple[int, int]], bool]:
        """(consumed, payload spans as offsets in data, done); see the module comment."""
        n = len(data)
        pos = 0
        spans: list[tuple[int, int]] = []
        state = self._state
        while pos < n and state != DONE:
            if state == DATA:
                end = pos + self._remaining
                end = min(end, n)
                spans.append((pos, end))
                self._remaining -= end - pos
                pos = end
                if self._remaining:
                    break
                state = DATA_CR
            elif state == DATA_CR:
                if data[pos] != 13:
                    raise BadRequest("chunk data not followed by CRLF")
                pos += 1
                state = DATA_LF
            elif state == DATA_LF:
                if data[pos] != 10:
                    raise BadRequest("chunk data not followed by CRLF")
                pos += 1
                state = SIZE
            elif self._partial:
                pos, state = self._finish_line(data, pos, n, state)
            else:
                pos, state = self._line(data, pos, n, state)
        self._state = state
        return pos, spans, state == DONE

    def eof(self) -> None:
        """Input ended: anything but a complete chunked body is an error."""
        if self._state != DONE:
            raise BadRequest("connection closed inside a chunked body")

    def _line(self, data: Buffer, pos: int, n: int, state: int) -> tuple[int, int]:
        """Match a size or trailer line starting at pos, or keep it as partial."""
        limit = pos + self._max_line
        if state == SIZE:
            m = g.CHUNK_LINE.match(data, pos, limit)
            if m is not None:
                return m.end(), self._sized(m.group(1))
        else:
            if data[pos] == 13 and pos + 1 < n and data[pos + 1] == 10:
                return pos + 2, DONE
            m = g.TRAILER_LINE.match(data, pos, limit)
            if m is not None:
                self._count_trailer(m.end() - pos)
                return m.end(), TRAILER
        if _LF.search(data, pos, limit) is not None:
            raise BadRequest("malformed chunk size line" if state == SIZE else "bad trailer")
        if n >= limit:
            raise BadRequest("chunk line too long")
        self._keep(bytes(data[pos:n]), state)
        return n, state

    def _finish_line(self, data: Buffer, pos: int, n: int, state: int) -> tuple[int, int]:
        """Complete a line that began in an earlier feed."""
        partial = self._partial
        room = self._max_line - len(partial)
        lf = _LF.search(data, pos, pos + room)
        if lf is None:
            if n - pos >= room:
                raise BadRequest("chunk line too long")
            self._keep(partial + bytes(data[pos:n]), state)
            return n, state
        end = lf.end()
        line = partial + bytes(data[pos:end])
        self._partial = b""
        if state == SIZE:
            m = g.CHUNK_LINE.fullmatch(line)
            if m is None:
                raise BadRequest("malformed chunk size line")
            return end, self._sized(m.group(1))
        if line == b"\r\n":
            return end, DONE
        if g.TRAILER_LINE.fullmatch(line) is None:
            raise BadRequest("bad trailer")
        self._count_trailer(len(line))
        return end, TRAILER

    def _keep(self, partial: bytes, state: int) -> None:
        """Hold an unfinished line, failing now if no ending could make it valid."""
        # A CR may only be the last byte of an unfinished line (its LF is to come).
        if partial.find(b"\r", 0, len(partial) - 1) >= 0:
            raise BadRequest("bare CR in a chunk line")
        if state == SIZE and _SIZE_START.match(partial) is None:
            raise BadRequest("malformed chunk size")
        self._partial = partial

    def _sized(self, hexsize: bytes) -> int:
        size = int(hexsize, 16)
        if size == 0:
            return TRAILER
        if size > _MAX_CHUNK:
            raise BadRequest("chunk size too large")
        self._remaining = size
        return DATA

    def _count_trailer(self, length: int) -> None:
        self._trailers += length
        if self._trailers > _MAX_TRAILERS:
            raise BadRequest("trailer section too large")
