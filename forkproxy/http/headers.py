# Invariants: a Headers keeps every field line in received order and case, repeated
# fields stay repeated (Set-Cookie is never joined); `lnames[i]` is `items[i][0]`
# lowercased. That parallel list is the index: a lookup is a C-level scan of a few
# dozen names at most, cheaper than building a dict for every message.
# A Headers is treated as immutable once built: code that wants a different field list
# builds a new list (end_to_end) instead of editing `items`.
"""Header fields as a list plus a lowercase index; hop-by-hop removal."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat

_OWS = b" \t"

# RFC 9110 §7.6.1 and the de facto ones (Keep-Alive, Proxy-Connection). Upgrade is
# hop-by-hop too; the connection layer passes it explicitly on a 101.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class Headers:
    __slots__ = ("lnames", "items", "forwarded")

    items: list[tuple[bytes, bytes]]
    lnames: list[bytes]
    # the field lines a route passes upstream, joined, and that route (routes.py): a
    # client repeats its fields, and the parser's cache gives them one Headers
    forwarded: tuple[object, bytes] | None

    def __init__(
        self,
        items: list[tuple[bytes, bytes]] | None = None,
        lnames: list[bytes] | None = None,
    ) -> None:
        """`lnames`, when given, must be the lowercased names of `items` (parsers)."""
        self.items = items if items is not None else []
        self.lnames = lnames if lnames is not None else [n.lower() for n, _ in self.items]
        self.forwarded = None

    def get(self, lname: bytes) -> bytes | None:
        """The first value of field `lname` (already lowercase), or None."""
        lnames = self.lnames
        if lname in lnames:
            return self.items[lnames.index(lname)][1]
        return None

    def get_all(self, lname: bytes) -> list[bytes]:
        """Every value of field `lname`, in order, never joined."""
        if lname not in self.lnames:
            return []
        return [item[1] for ln, item in zip(self.lnames, self.items) if ln == lname]

    def __contains__(self, lname: object) -> bool:
        return lname in self.lnames

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"

    def count(self, lname: bytes) -> int:
        """How many field lines are named `lname`."""
        return self.lnames.count(lname)

    def combined(self, lname: bytes) -> bytes | None:
        """All values of a list field joined with ", " (RFC 9110 §5.3), or None."""
        lnames = self.lnames
        n = lnames.count(lname)
        if n == 0:
            return None
        if n == 1:
            return self.items[lnames.index(lname)][1]
        return b", ".join(self.get_all(lname))


def list_tokens(value: bytes) -> tuple[bytes, ...]:
    """A comma-separated list value as lowercased elements in order, empties dropped."""
    tokens = _TOKENS.get(value)
    if tokens is not None:
        return tokens
    low = value.lower()
    if 44 not in low:  # no comma (int membership skips the buffer protocol)
        low = low.strip(_OWS)
        tokens = (low,) if low else ()
    else:
        tokens = tuple([t for t in map(bytes.strip, low.split(b","), repeat(_OWS)) if t])
    if len(_TOKENS) < 256 and len(value) <= 64:
        _TOKENS[value] = tokens
    return tokens


# The few list values heads repeat ("keep-alive", "close", "Upgrade", "chunked"), each
# split once per worker. Bounded (256 values of at most 64 bytes, so a client cannot pin
# more than 16 KiB); other values are split every time.
_TOKENS: dict[bytes, tuple[bytes, ...]] = {}


def end_to_end(
    headers: Headers,
    drop: frozenset[bytes] = frozenset(),
    connection: tuple[bytes, ...] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The fields without hop-by-hop ones, those named in Connection, and `drop`.

    `connection`: the Connection tokens when the caller has them (Head.connection);
    usually they only name hop-by-hop fields, and no set is built.
    """
    remove = HOP_BY_HOP | drop if drop else HOP_BY_HOP
    if connection is None:
        connection = list_tokens(headers.combined(b"connection") or b"")
    if connection and not remove.issuperset(connection):
        remove = remove.union(connection)
    return [item for ln, item in zip(headers.lnames, headers.items) if ln not in remove]
