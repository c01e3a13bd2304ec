# Invariants: for every input, feeding it whole, byte by byte or split at any position
# yields the same payload, the same number of consumed bytes and the same error; the
# payload is read only through the returned spans.
"""ChunkedDecoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkproxy.errors import BadRequest, HttpError
from forkproxy.http.chunked import ChunkedDecoder


def decode(pieces: list[bytes], view: bool = False) -> tuple[bytes, int, bool] | str:
    """(payload, consumed, done) over all pieces, or "error"; stops feeding once done."""
    dec = ChunkedDecoder()
    payload = bytearray()
    total = 0
    done = False
    try:
        for piece in pieces:
            data = memoryview(piece) if view else piece
            consumed, spans, done = dec.feed(data)
            assert 0 <= consumed <= len(piece)
            assert done or consumed == len(piece)
            for start, end in spans:
                assert 0 <= start < end <= consumed
                payload += data[start:end]
            total += consumed
            if done:
                break
    except BadRequest:
        return "error"
    return bytes(payload), total, done


def every_split(raw: bytes) -> tuple[bytes, int, bool] | str:
    whole = decode([raw])
    assert decode([raw], view=True) == whole
    assert decode([raw[i:i + 1] for i in range(len(raw))]) == whole
    for i in range(1, len(raw)):
        assert decode([raw[:i], raw[i:]]) == whole, i
        assert decode([raw[:i], raw[i:]], view=True) == whole, i
    return whole


def body(raw: bytes) -> bytes:
    result = every_split(raw)
    assert isinstance(result, tuple) and result[2], result
    return result[0]


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        (b"0\r\n\r\n", b""),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"5\r\nhello\r\n6\r\n world\r\n000\r\n\r\n", b"hello world"),
        (b"0005\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"1e\r\nall your base are belong to us\r\n0\r\n\r\n", b"all your base are belong to us"),
        (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r"),  # payload is never interpreted
        (b"2\r\n0\r\r\n0\r\n\r\n", b"0\r"),
    ],
)
def test_payload(raw: bytes, payload: bytes) -> None:
    assert body(raw) == payload


@pytest.mark.parametrize(
    "ext",
    [b";a", b";a=b", b"; a = b", b"\t;\ta\t=\tb", b";a;b;c=d", b';a="q"', b';a="x\\"y; \\\\z"',
     b";ilovew3;somuchlove=aretheseparametersfor;another=withvalue", b';a=""', b";a=\"\xff\""],
)
def test_extensions_are_accepted(ext: bytes) -> None:
    assert body(b"5" + ext + b"\r\nhello\r\n0" + ext + b"\r\n\r\n") == b"hello"


def test_trailers() -> None:
    raw = b"5\r\nhello\r\n0\r\nVary: *\r\nContent-Type: text/plain\r\nX-E:\r\n\r\n"
    assert body(raw) == b"hello"
    assert every_split(raw) == (b"hello", len(raw), True)


def test_consumed_stops_at_the_end_of_the_body() -> None:
    raw = b"3\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    dec = ChunkedDecoder()
    consumed, spans, done = dec.feed(raw + b"GET / HTTP/1.1\r\n")
    assert (consumed, spans, done) == (len(raw), [(3, 6)], True)
    assert dec.feed(b"more") == (0, [], True)
    dec.eof()
    assert every_split(raw + b"NEXT")[1] == len(raw)


def test_spans_cover_several_chunks_in_one_feed() -> None:
    raw = b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    assert ChunkedDecoder().feed(raw) == (len(raw), [(3, 5), (10, 13)], True)


def test_large_chunk_across_feeds() -> None:
    dec = ChunkedDecoder()
    assert dec.feed(b"10000\r\n") == (7, [], False)
    assert dec.feed(b"x" * 40000) == (40000, [(0, 40000)], False)
    assert dec.feed(b"y" * 25536) == (25536, [(0, 25536)], False)
    with pytest.raises(BadRequest):
        dec.eof()
    assert dec.feed(b"\r\n0\r\n\r\nrest") == (7, [], True)


@pytest.mark.parametrize(
    "raw",
    [
        b"\r\n",  # empty size
        b"3\r\nfoo\r\n\r\n",  # missing last chunk
        b"g\r\n",
        b"-1\r\n",
        b"+1\r\n",
        b" 1\r\n",  # whitespace before the size
        b"1 \r\nx\r\n0\r\n\r\n",  # whitespace after the size
        b"a \r\n0123456789\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"1_0\r\n",
        b"10000000000000000\r\n",  # 17 hex digits
        b"ffffffffffffffff\r\n",  # above 2**63 - 1
        b"5\nhello\r\n0\r\n\r\n",  # bare LF
        b"5\rhello\r\n",  # bare CR
        b"5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n",
        b"3 \n  \r\nfoo\r\n\r\n",
        b"2 erfrferferf\r\naa\r\n0 rrrr\r\n\r\n",  # extension without ";"
        b"2;\r\naa\r\n0\r\n\r\n",  # ";" without a name
        b"2;=x\r\naa\r\n0\r\n\r\n",
        b"2;a=\r\naa\r\n0\r\n\r\n",
        b"2;a b\r\naa\r\n0\r\n\r\n",
        b'5;a="abc";b="def; ghi\r\nhello\r\n0\r\n\r\n',  # unbalanced quote
        b"2;a=\x01\r\naa\r\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",  # data not followed by CRLF
        b"5\r\nhello\rX0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nABCDE0\r\n",
        b"0\r\nbad trailer\r\n\r\n",
        b"0\r\n trailer: folded\r\n\r\n",
        b"0\r\nA : b\r\n\r\n",
        b"0\r\nA: b\x00\r\n\r\n",
        b"0\r\nA: b\n\r\n",
        b"0\r\n\n",
        b"0\r\n\rX",
        b"0\r\nA: b\rX\r\n\r\n",
    ],
)
def test_errors(raw: bytes) -> None:
    assert every_split(raw) == "error"


def test_errors_do_not_wait_for_more_input() -> None:
    with pytest.raises(BadRequest):
        ChunkedDecoder().feed(b"5\r\r")
    for partial in (b"zz", b"5x", b"-", b" ", b"12345678901234567", b";"):
        with pytest.raises(BadRequest):
            ChunkedDecoder().feed(partial)
    dec = ChunkedDecoder()
    dec.feed(b"5")
    with pytest.raises(BadRequest):
        dec.feed(b"\rX")


@pytest.mark.parametrize(
    "raw",
    [b"", b"5", b"5\r", b"5\r\n", b"5\r\nhel", b"5\r\nhello", b"5\r\nhello\r",
     b"5\r\nhello\r\n", b"5\r\nhello\r\n0\r\n", b"5\r\nhello\r\n0\r\nA: b\r\n",
     b"0\r\n\r", b"5;a=\"x"],
)
def test_eof_before_the_end(raw: bytes) -> None:
    dec = ChunkedDecoder()
    dec.feed(raw)
    assert not dec.done
    with pytest.raises(BadRequest):
        dec.eof()


def test_line_limits() -> None:
    line = b"1;" + b"a" * 100 + b"\r\n"
    assert ChunkedDecoder(max_line=len(line)).feed(line + b"x\r\n0\r\n\r\n")[2]
    with pytest.raises(BadRequest):
        ChunkedDecoder(max_line=len(line) - 1).feed(line)
    dec = ChunkedDecoder(max_line=50)
    with pytest.raises(BadRequest):
        for i in range(len(line)):
            dec.feed(line[i:i + 1])
    with pytest.raises(BadRequest):
        ChunkedDecoder(max_line=50).feed(b"0\r\nX: " + b"v" * 100)


def test_trailer_section_is_bounded() -> None:
    dec = ChunkedDecoder()
    dec.feed(b"0\r\n")
    with pytest.raises(BadRequest):
        for _ in range(10000):
            dec.feed(b"X-Filler: " + b"v" * 50 + b"\r\n")


chunks = st.lists(st.binary(min_size=1, max_size=40), max_size=6)


def encode(parts: list[bytes], ext: bytes, trailers: bytes) -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in parts)
    return out + b"0" + ext + b"\r\n" + trailers + b"\r\n"


@settings(max_examples=200, deadline=None)
@given(
    parts=chunks,
    ext=st.sampled_from([b"", b";x", b";x=1", b';x="a b"']),
    trailers=st.sampled_from([b"", b"A: 1\r\n", b"A: 1\r\nB:\r\n"]),
    tail=st.binary(max_size=10),
    cuts=st.lists(st.integers(0), max_size=5),
)
def test_generated_bodies(
    parts: list[bytes], ext: bytes, trailers: bytes, tail: bytes, cuts: list[int]
) -> None:
    raw = encode(parts, ext, trailers)
    data = raw + tail
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    assert decode(pieces) == (b"".join(parts), len(raw), True)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100), cuts=st.lists(st.integers(0), max_size=4))
def test_arbitrary_bytes_raise_only_http_errors(data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts})
    dec = ChunkedDecoder(max_line=32)
    try:
        for a, b in zip([0, *points], [*points, len(data)]):
            dec.feed(data[a:b])
        dec.eof()
    except HttpError:
        pass
