# Invariants: every llhttp request case is either parsed to exactly its listed messages
# (whole, and split at every byte), rejected as llhttp rejects it, or named below with
# the RFC reason forkproxy decides otherwise; a named case that behaves like llhttp
# fails the test, so the lists stay honest.
"""The llhttp request corpus (tests/data/llhttp_requests.json) through our parsers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forkproxy.errors import BadRequest, HttpError
from forkproxy.http.chunked import ChunkedDecoder
from forkproxy.http.parser import CHUNKED, LENGTH, RequestParser

CORPUS = Path(__file__).parent.parent / "data" / "llhttp_requests.json"
CASES: list[dict[str, Any]] = json.loads(CORPUS.read_text(encoding="utf-8"))["cases"]

# Valid for llhttp, rejected by forkproxy on purpose.
DELIBERATE_REJECTIONS: dict[str, str] = {
    "sample-no-http-version": "HTTP/0.9 request line without a version (RFC 9112 §2.3, Appendix C.1)",
    "method-source-request-with-ice": "ICE/1.0 is not an HTTP-version (RFC 9112 §2.3)",
    "method-options-request-with-rtsp": "RTSP/1.0 is not an HTTP-version (RFC 9112 §2.3)",
    "method-announce-request-with-rtsp": "RTSP/1.0 is not an HTTP-version (RFC 9112 §2.3)",
    "method-m-search-request": "asterisk-form is only for OPTIONS (RFC 9112 §3.2.4)",
    "uri-fragment-in-uri": "a fragment is not part of a request-target (RFC 9112 §3.2)",
    "transfer-encoding-post-with-chunked-as-last-transfer-encoding":
        "target has a '#' fragment (RFC 9112 §3.2); its framing is tested in test_parser",
    "transfer-encoding-post-with-chunked-as-last-transfer-encoding-multiple-headers":
        "target has a '#' fragment (RFC 9112 §3.2); its framing is tested in test_parser",
    "uri-host-port-and-basic-auth": "userinfo in an http URI is an error (RFC 9110 §4.2.4)",
}

# Rejected by llhttp (which knows a fixed list of methods), accepted by forkproxy on
# purpose: a method is any token (RFC 9110 §9.1) and an intermediary forwards
# methods it does not know; the origin server answers 501 if it does not either.
DELIBERATE_ACCEPTANCES: dict[str, str] = {
    "invalid-invalid-method": "MKCOLA is a token: extension methods are forwarded (RFC 9110 §9.1)",
    "invalid-http-protocol-and-announce-method":
        "ANNOUNCE is a token: extension methods are forwarded (RFC 9110 §9.1)",
}

# llhttp modes that only loosen parsing; their cases carry no valid_prefix of their own.
STRICT_MODES = {"request", "request-finish"}


Message = tuple[str, str, str, str]


def run(pieces: list[bytes], messages: list[Message]) -> None:
    """Drive RequestParser plus body framing over pieces, as a connection would.

    Complete messages are appended to `messages`; raises HttpError on rejection. A
    message that is not keep-alive must be the last one: bytes after it are rejected
    (the connection closes). After CONNECT or an upgrade request, later bytes belong
    to the tunnel and are not parsed.
    """
    parser = RequestParser()
    state = "head"
    head = None
    remaining = 0
    decoder = ChunkedDecoder()
    body = bytearray()

    def finish() -> str:
        assert head is not None
        messages.append(
            (
                head.method.decode("latin-1"),
                head.target.decode("latin-1"),
                "1.1" if head.version == 11 else "1.0",
                body.decode("latin-1"),
            )
        )
        body.clear()
        if head.method == b"CONNECT" or head.upgrade:
            return "tunnel"
        return "head" if head.keep_alive else "closed"

    for piece in pieces:
        data = piece
        while data:
            if state == "head":
                head = parser.feed(data)
                data = b""
                if head is None:
                    break
                data = parser.take_rest()
                if head.framing == LENGTH and head.length:
                    state, remaining = "length", head.length
                elif head.framing == CHUNKED:
                    state, decoder = "chunked", ChunkedDecoder()
                else:
                    state = finish()
            elif state == "length":
                take = data[:remaining]
                body += take
                remaining -= len(take)
                data = data[len(take):]
                if not remaining:
                    state = finish()
            elif state == "chunked":
                consumed, spans, done = decoder.feed(data)
                for start, end in spans:
                    body += data[start:end]
                data = data[consumed:]
                if done:
                    state = finish()
            elif state == "closed":
                raise BadRequest("data after a message that closes the connection")
            else:  # tunnel
                data = b""
    if state == "head":
        parser.eof()
    elif state == "length":
        raise BadRequest("connection closed inside a body")
    elif state == "chunked":
        decoder.eof()


def outcome(pieces: list[bytes]) -> tuple[list[Message], HttpError | None]:
    """The messages parsed, and the error that stopped parsing (None: accepted)."""
    messages: list[Message] = []
    try:
        run(pieces, messages)
    except HttpError as e:
        return messages, e
    return messages, None


def expected(case: dict[str, Any]) -> list[Message]:
    return [(m["method"], m["url"], m["version"], m["body"]) for m in case["messages"]]


def splits(raw: bytes) -> list[list[bytes]]:
    return [[raw]] + [[raw[:i], raw[i:]] for i in range(1, len(raw))]


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


VALID = [c for c in CASES if c["expected"] == "valid"]
INVALID = [c for c in CASES if c["expected"] == "invalid"]


@pytest.mark.parametrize("case", VALID, ids=ids(VALID))
def test_valid_case(case: dict[str, Any]) -> None:
    raw = case["raw"].encode("latin-1")
    want = expected(case)
    if case["name"] in DELIBERATE_REJECTIONS:
        for pieces in splits(raw):
            messages, error = outcome(pieces)
            assert error is not None and messages != want, (
                f"listed as a deliberate rejection but accepted: {case['name']}"
            )
        return
    for pieces in splits(raw) + [[raw[i:i + 1] for i in range(len(raw))]]:
        assert outcome(pieces) == (want, None), pieces


@pytest.mark.parametrize("case", INVALID, ids=ids(INVALID))
def test_invalid_case(case: dict[str, Any]) -> None:
    raw = case["raw"].encode("latin-1")
    prefix = [(m["method"], m["url"], m["version"], m["body"]) for m in case["valid_prefix"] or []]
    for pieces in splits(raw):
        messages, error = outcome(pieces)
        if case["name"] in DELIBERATE_ACCEPTANCES:
            assert error is None, f"listed as a deliberate acceptance but rejected: {error!r}"
            continue
        assert error is not None, f"accepted: {messages}"
        # The messages parsed before the error are those llhttp parsed first.
        if case["llhttp_mode"] in STRICT_MODES:
            assert messages == prefix[: len(messages)], messages


def test_lists_name_real_cases() -> None:
    names = {c["name"] for c in CASES}
    valid = {c["name"] for c in VALID}
    invalid = {c["name"] for c in INVALID}
    assert set(DELIBERATE_REJECTIONS) <= valid, set(DELIBERATE_REJECTIONS) - valid
    assert set(DELIBERATE_ACCEPTANCES) <= invalid, set(DELIBERATE_ACCEPTANCES) - invalid
    assert len(names) == len(CASES)


# Cases whose target carries a fragment are rejected for that alone; with the fragment
# removed, the rule they were written for (Transfer-Encoding lists) still decides.
FRAGMENTED = [c for c in CASES if b"#hey " in c["raw"].encode("latin-1")]


@pytest.mark.parametrize("case", FRAGMENTED, ids=ids(FRAGMENTED))
def test_case_without_its_fragment(case: dict[str, Any]) -> None:
    raw = case["raw"].encode("latin-1").replace(b"#hey ", b" ", 1)
    for pieces in splits(raw):
        messages, error = outcome(pieces)
        if case["expected"] == "valid":
            want = [(m, u.replace("#hey", ""), v, b) for m, u, v, b in expected(case)]
            assert (messages, error) == (want, None)
        else:
            assert error is not None and messages == []


def test_fragment_variants_exist() -> None:
    assert len(FRAGMENTED) >= 6
