"""Response heads as the client sees them, rebuilt from the upstream's (layer 1, pure).

Invariants: every head is re-serialised, never copied through; hop-by-hop fields are
removed (RFC 9110 §7.6.1) and the proxy's own framing and persistence fields added.
The one exception is a 101: its `Upgrade` and `Connection: upgrade` reach the client,
as RFC 6455 requires.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from .http.headers import end_to_end
from .http.parser import CHUNKED, Head
from .http.writer import response_head as _serialise

_HTTP11 = b"HTTP/1.1"
_REWRITTEN = (b"location", b"refresh")
_NOT_ON_101 = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding"))

Rewrite = Callable[[bytes, Any], "bytes | None"]


def response_head(head: Head, client_version: int, keep_alive: bool, dechunk: bool,
                  rewrite: Rewrite | None, request_vars: Any) -> bytes:
    """The final response head for the client.

    keep_alive: whether the client connection stays open after this response.
    dechunk: the body is de-chunked and close-delimited (an HTTP/1.0 client).
    rewrite: proxy_redirect, applied to Location and Refresh.
    """
    # a repeated upstream head is one Head object (parser.py): the head built from it
    # last time is reused when the same choices apply (only heads without a Location or
    # Refresh to rewrite are kept)
    choices = keep_alive + 2 * (client_version == 10) + 4 * dechunk
    last = head.rebuilt
    if last is not None and last[0] == choices:
        return last[1]
    headers = head.headers
    lnames = headers.lnames
    redirects = b"location" in lnames or b"refresh" in lnames
    rewritten = rewrite is not None and redirects
    items = end_to_end(headers, connection=head.connection)
    if rewritten:
        for i, (name, value) in enumerate(items):
            if name.lower() in _REWRITTEN:
                new = rewrite(value, request_vars)  # type: ignore[misc]
                if new is not None:
                    items[i] = (name, new)
    if head.framing == CHUNKED and not dechunk:
        items.append((b"Transfer-Encoding", b"chunked"))
    if not keep_alive:
        items.append((b"Connection", b"close"))
    elif client_version == 10:
        items.append((b"Connection", b"keep-alive"))
    out = _serialise(_HTTP11, head.status, head.reason, items)
    if not redirects:
        head.rebuilt = (choices, out)
    return out


def interim_head(head: Head) -> bytes:
    """A 1xx other than 101 (100 Continue, 103 Early Hints), for HTTP/1.1 clients only."""
    return _serialise(_HTTP11, head.status, head.reason, end_to_end(head.headers, connection=head.connection))


def switching_head(head: Head) -> bytes:
    """The 101 head: the upstream's fields with Upgrade kept and Connection: upgrade."""
    items = [(n, v) for n, v in head.headers.items if n.lower() not in _NOT_ON_101]
    items.append((b"Connection", b"upgrade"))
    return _serialise(_HTTP11, 101, head.reason or b"Switching Protocols", items)
