# Request-target normalisation for routing (layer 1, pure, bytes in and out).
#
# Invariants:
# - normalize_path returns a path that starts with "/", has no empty, "." or ".."
#   segments, and whose only percent-escapes are of bytes outside RFC 3986's unreserved
#   set, written with uppercase hex ("%2F" stays "%2F" and never becomes "/").
# - A path that would climb above "/" or holds a malformed escape raises BadRequest, so
#   the caller answers 400 (as nginx does).
# - The common case (no "%", no "/.", no "//") costs a few `in` tests and no copies.
"""Normalise request paths and read the authority of absolute-form targets."""

from __future__ import annotations

import re

from forkproxy.errors import BadRequest

_HEX = b"0123456789ABCDEFabcdef"
_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
# Bytes a path may carry unescaped: pchar (unreserved, sub-delims, ":" "@"), "/" and
# "%" (escapes already present are kept as they are).
_UNSAFE_IN_PATH = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=-]*)(?::(\d*))?")


# Anything in a path that normalisation has to look at; a path without it is returned
# as it is (the common case costs one search).
_NEEDS_WORK = re.compile(rb"[%#]|/\.|//").search


def origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-form target ("http://h/p?q" -> "/p?q")."""
    scheme_end = target.find(b"://")
    if scheme_end <= 0 or target[:scheme_end].lower() not in (b"http", b"https"):
        raise BadRequest(f"unsupported request target {target[:64]!r}")
    start = scheme_end + 3
    ends = [i for i in (target.find(b"/", start), target.find(b"?", start)) if i >= 0]
    rest = target[min(ends) :] if ends else b""
    return rest if rest.startswith(b"/") else b"/" + rest


def _decode_unreserved(path: bytes) -> bytes:
    pieces = path.split(b"%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        code = piece[:2]
        if len(code) != 2 or code[0] not in _HEX or code[1] not in _HEX:
            raise BadRequest("invalid percent-encoding in request path")
        byte = int(code, 16)
        if byte in _UNRESERVED:
            out.append(bytes((byte,)))
        else:
            out.append(b"%" + code.upper())
        out.append(piece[2:])
    return b"".join(out)


def _resolve_segments(path: bytes) -> bytes:
    segments = path.split(b"/")
    kept: list[bytes] = []
    for segment in segments[1:]:
        if segment == b"..":
            if not kept:
                raise BadRequest("request path escapes the root")
            kept.pop()
        elif segment and segment != b".":
            kept.append(segment)
    if not kept:
        return b"/"
    trailing = segments[-1] in (b"", b".", b"..")
    return b"/" + b"/".join(kept) + (b"/" if trailing else b"")


def normalize_path(target: bytes) -> tuple[bytes, bytes]:
    """(normalised path, args) of a request target, as routing and `$uri` see it.

    Escapes of unreserved characters are decoded ("%7E" -> "~", "%2e" -> "."); every
    other escape is kept, uppercased ("%2f" -> "%2F", never "/"). Then dot-segments are
    resolved and repeated slashes merged (nginx's merge_slashes). Raises BadRequest.
    """
    if target[:1] != b"/":
        target = origin_form(target)
    path, _, args = target.partition(b"?")
    if _NEEDS_WORK(path) is None:
        return path, args
    if b"#" in path or b"#" in args:
        raise BadRequest("fragment in request target")
    if b"%" in path:
        path = _decode_unreserved(path)
    if b"/." in path or b"//" in path:
        path = _resolve_segments(path)
    return path, args


def encode_path(path: bytes) -> bytes:
    """Percent-encode the bytes that may not appear in a path; existing escapes stay."""
    if _UNSAFE_IN_PATH.search(path) is None:
        return path
    return _UNSAFE_IN_PATH.sub(lambda m: b"%%%02X" % m.group()[0], path)


def target_host(target: bytes) -> bytes | None:
    """The authority ("host[:port]") of an absolute-form target, None for origin-form.

    The authority is returned as written; normalize_host gives the routing form. An
    absolute-form target with an empty authority or userinfo raises BadRequest.
    """
    if target.startswith(b"/"):
        return None
    scheme_end = target.find(b"://")
    if scheme_end <= 0:
        return None
    start = scheme_end + 3
    end = len(target)
    for stop in (b"/", b"?", b"#"):
        i = target.find(stop, start)
        if 0 <= i < end:
            end = i
    authority = target[start:end]
    if not authority or b"@" in authority:
        raise BadRequest("invalid authority in request target")
    return authority


def normalize_host(authority: bytes) -> bytes:
    """Lowercase host of a Host value or authority, port and trailing dot removed.

    An IPv6 literal keeps its brackets ("[::1]"), as nginx's `$host` does. Raises
    BadRequest for anything that is not a valid host[:port].
    """
    match = _HOST.fullmatch(authority)
    if match is None or not match.group(1):
        raise BadRequest("invalid Host")
    host = match.group(1).lower()
    if host.endswith(b".") and not host.startswith(b"["):
        host = host[:-1]
        if not host:
            raise BadRequest("invalid Host")
    return host
