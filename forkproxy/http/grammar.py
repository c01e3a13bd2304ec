# Invariants: every pattern here is compiled once at import and is anchored by the
# caller (fullmatch/match with pos); no pattern can backtrack more than a few steps per
# byte (each repetition is followed by a byte it cannot consume). Names follow the ABNF
# of RFC 9110/9112/3986. Nothing here imports anything but `re`.
# Regexes cost tens of nanoseconds per byte in CPython, so the hot path (whole heads)
# uses the byte sets at the bottom with bytes.translate/split instead; the regexes
# serve short or rare inputs (targets other than origin-form, codings, chunk lines).
"""Precompiled ABNF of HTTP/1.1 heads, request targets and chunked framing."""

import re

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#                          "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = rb"[" + TCHAR + rb"]+"
OWS = rb"[ \t]*"

# RFC 9110 §5.5: field-value chars are VCHAR, obs-text, SP and HTAB. Every other
# control byte (CR and LF included) and DEL are forbidden inside a field line.
FIELD_VCHAR = rb"[^\x00-\x08\x0a-\x1f\x7f]"

# RFC 3986 §3.2.2: host = IP-literal / IPv4address / reg-name. No userinfo: RFC 9110
# §4.2.4 makes userinfo in an http(s) URI an error.
_REG_NAME = rb"[A-Za-z0-9\-._~!$&'()*+,;=%]+"
_IP_LITERAL = rb"\[[0-9A-Za-z:.\-_~!$&'()*+,;=%]+\]"
_HOST = rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb")"
# RFC 9112 §3.2.3: authority-form = uri-host ":" port (CONNECT only).
AUTHORITY_FORM = re.compile(_HOST + rb":[0-9]{1,5}")
# RFC 9112 §3.2.2: absolute-form = absolute-URI; the scheme is followed by "//" and an
# authority without userinfo, then path-abempty and query (bytes checked by TARGET_BYTES).
ABSOLUTE_FORM = re.compile(
    rb"[A-Za-z][A-Za-z0-9+.\-]*://" + _HOST + rb"(?::[0-9]*)?(?:[/?][\x21-\x7e]*)?"
)

# RFC 9112 §6.1: transfer-coding = token *( OWS ";" OWS transfer-parameter ).
QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
TRANSFER_CODING = re.compile(
    rb"(" + TOKEN + rb")(?:" + OWS + rb";" + OWS + TOKEN + OWS + rb"=" + OWS
    + rb"(?:" + TOKEN + rb"|" + QUOTED_STRING + rb"))*"
)

# RFC 9110 §8.6: Content-Length = 1*DIGIT, kept below 2**63.
MAX_CONTENT_LENGTH = 2**63 - 1

# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, with
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ).
# No whitespace before the size or between the size and CRLF; at most 16 hex digits.
CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:" + OWS + rb";" + OWS + TOKEN + rb"(?:" + OWS + rb"=" + OWS
    + rb"(?:" + TOKEN + rb"|" + QUOTED_STRING + rb"))?)*\r\n"
)
# A trailer line (RFC 9112 §7.1.2): a field line followed by CRLF.
TRAILER_LINE = re.compile(TOKEN + rb":" + FIELD_VCHAR + rb"*\r\n")

# A partial head that already shows a bare CR, a bare LF, a control byte or an
# obs-fold (a line starting with SP/HTAB). A CR at the very end is not judged: its
# LF may be in the next read.
BAD_PARTIAL = re.compile(
    rb"(?<!\r)\n|\r(?=[^\n])|\r\n[ \t]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
)

# Byte sets of the head grammar; the *_ONLY translate tables below are built from them
# and check a whole head or token in one C call.
TCHAR_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Bytes allowed anywhere in a head besides CRLF: HTAB, SP, VCHAR, obs-text.
FIELD_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
# request-target bytes: VCHAR except "#" (no fragment, no obs-text, no SP).
TARGET_BYTES = bytes(b for b in range(0x21, 0x7F) if b != 0x23)
CRLF = b"\r\n"


def _only(allowed: bytes) -> bytes:
    """A bytes.translate table: each allowed byte -> 1, every other byte -> 0."""
    return bytes(1 if b in allowed else 0 for b in range(256))


# `0 in data.translate(X_ONLY)` is True when data holds a byte outside the set. A table
# without a delete argument is CPython's fast path; translate(None, delete) rebuilds a
# 256-entry table from the delete bytes on every call, which costs more than the scan.
TCHAR_ONLY = _only(TCHAR_BYTES)
FIELD_ONLY = _only(FIELD_BYTES + CRLF)  # CR and LF pass here; callers count them
TARGET_ONLY = _only(TARGET_BYTES)
