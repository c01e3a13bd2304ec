# Variables, templates and maps (layer 1, pure).
#
# Invariants:
# - Template syntax is nginx's: literal text with `$name` or `${name}`; a "$" that does
#   not start a valid name is an error at config load, never at request time.
# - A compiled Template is a closure over prebuilt pieces: constant text is encoded
#   once; rendering is one call per variable and at most one join. Maps are evaluated
#   only when a template that names them renders (no per-request precomputation).
# - Map lookup order is nginx's: exact keys (case-insensitive), then `~`/`~*` regexes in
#   config order, then the default. A `\` in front of a key makes it literal.
# - Nothing here imports config loading or touches I/O; it takes MapConfig values.
"""Template syntax, per-request variables and compiled nginx-style maps."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING

from forkproxy.units import show

if TYPE_CHECKING:
    from forkproxy.confmodel import MapConfig
    from forkproxy.http.parser import Head

# `$name` / `${name}`; names as nginx's (letters, digits, underscore), no leading digit
# (nginx's `$1` captures are not supported).
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

# Variables every template may use, besides `$http_<name>` and the map names.
BUILTIN_VARIABLES: frozenset[str] = frozenset(
    {
        "host", "remote_addr", "remote_port", "scheme", "request_uri", "uri", "args",
        "query_string", "is_args", "server_port", "server_name", "request_method",
        "proxy_add_x_forwarded_for",
    }
)
# Known once the location is known (constant per route); not available inside maps.
ROUTE_VARIABLES: frozenset[str] = frozenset({"proxy_host"})

Renderer = Callable[["RequestVars"], bytes]


class RequestVars:
    """What templates read for one request; filled by the connection layer."""

    __slots__ = (
        "args",
        "head",
        "host",
        "remote_addr",
        "remote_port",
        "request_uri",
        "scheme",
        "server_name",
        "server_port",
        "uri",
    )

    def __init__(
        self,
        head: Head,
        host: bytes,
        remote_addr: bytes = b"",
        remote_port: bytes = b"",
        server_port: bytes = b"",
        server_name: bytes = b"",
        scheme: bytes = b"http",
        uri: bytes = b"/",
        args: bytes = b"",
        request_uri: bytes = b"/",
    ) -> None:
        self.head = head
        self.host = host
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.server_port = server_port
        self.server_name = server_name
        self.scheme = scheme
        self.uri = uri
        self.args = args
        self.request_uri = request_uri


def parse_template(text: str) -> tuple[tuple[bool, str], ...]:
    """(is_variable, text-or-name) parts; raises ValueError on a bad "$"."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    while True:
        dollar = text.find("$", pos)
        if dollar < 0:
            if pos < len(text):
                parts.append((False, text[pos:]))
            return tuple(parts)
        if dollar > pos:
            parts.append((False, text[pos:dollar]))
        match = _VARIABLE.match(text, dollar)
        if match is None:
            raise ValueError(f'invalid variable name after "$" in {show(text)}')
        parts.append((True, match.group(1) or match.group(2)))
        pos = match.end()


def is_known_variable(name: str, maps: Mapping[str, object], in_route: bool = True) -> bool:
    if name in BUILTIN_VARIABLES or name in maps:
        return True
    if name.startswith("http_") and len(name) > 5:
        return True
    return in_route and name in ROUTE_VARIABLES


# PCRE's named group "(?<name>" (common in nginx configs) is Python's "(?P<name>";
# lookbehinds "(?<=" and "(?<!" are left alone.
_PCRE_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?=[A-Za-z_])")


def compile_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[bytes]:
    """A config regex (Python `re`, plus PCRE's named groups) over bytes; may raise re.error."""
    source = _PCRE_NAMED_GROUP.sub("(?P<", pattern).encode()
    return re.compile(source, re.IGNORECASE if ignore_case else 0)


def map_key_regex(key: str) -> re.Pattern[bytes] | None:
    """The compiled regex of a `~`/`~*` map key, None for an exact key; may raise re.error."""
    if key.startswith("~*"):
        return compile_regex(key[2:], ignore_case=True)
    if key.startswith("~"):
        return compile_regex(key[1:])
    return None


def map_exact_key(key: str) -> bytes:
    """The bytes an exact map key matches (lowercase; a leading backslash dropped)."""
    return key.removeprefix("\\").lower().encode()


class Template:
    """A precompiled string template; `render(v)` gives its bytes for one request."""

    __slots__ = ("_render", "constant", "text")

    text: str
    constant: bytes | None  # the value when the template has no variables
    _render: Renderer

    def __init__(self, text: str, render: Renderer, constant: bytes | None) -> None:
        self.text = text
        self.constant = constant
        self._render = render

    def render(self, v: RequestVars) -> bytes:
        return self._render(v)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _header_getter(lname: bytes) -> Renderer:
    if lname == b"cookie":  # nginx joins Cookie fields with "; ", others with ", "
        return lambda v: b"; ".join(v.head.headers.get_all(b"cookie"))
    return lambda v: v.head.headers.combined(lname) or b""


def _forwarded_for(v: RequestVars) -> bytes:
    prior = v.head.headers.combined(b"x-forwarded-for")
    return prior + b", " + v.remote_addr if prior else v.remote_addr


_BUILTIN_GETTERS: dict[str, Renderer] = {
    "host": lambda v: v.host or v.server_name,  # nginx: no Host -> the server's name
    "remote_addr": attrgetter("remote_addr"),
    "remote_port": attrgetter("remote_port"),
    "server_port": attrgetter("server_port"),
    "server_name": attrgetter("server_name"),
    "scheme": attrgetter("scheme"),
    "uri": attrgetter("uri"),
    "args": attrgetter("args"),
    "query_string": attrgetter("args"),
    "request_uri": attrgetter("request_uri"),
    "request_method": lambda v: v.head.method,
    "is_args": lambda v: b"?" if v.args else b"",
    "proxy_add_x_forwarded_for": _forwarded_for,
}


class Compiler:
    """Compiles templates against one set of maps; each map is compiled once."""

    __slots__ = ("_compiled", "_maps", "_visiting")

    def __init__(self, maps: Mapping[str, MapConfig]) -> None:
        self._maps = maps
        self._compiled: dict[str, Renderer] = {}
        self._visiting: set[str] = set()

    def template(self, text: str, constants: Mapping[str, bytes] | None = None) -> Template:
        """Compile `text`; `constants` are variables fixed for this use ($proxy_host)."""
        pieces: list[bytes | Renderer] = []
        for is_var, value in parse_template(text):
            if not is_var:
                piece: bytes | Renderer = value.encode()
            elif constants is not None and value in constants:
                piece = constants[value]
            else:
                piece = self._getter(value)
            if isinstance(piece, bytes) and pieces and isinstance(pieces[-1], bytes):
                pieces[-1] = pieces[-1] + piece
            elif piece != b"":
                pieces.append(piece)
        return Template(text, *_join(pieces))

    def _getter(self, name: str) -> Renderer:
        getter = _BUILTIN_GETTERS.get(name)
        if getter is not None:
            return getter
        if name in self._maps:
            return self._map(name)
        if name.startswith("http_") and len(name) > 5:
            return _header_getter(name[5:].replace("_", "-").lower().encode())
        raise ValueError(f'unknown variable "${name}"')

    def _map(self, name: str) -> Renderer:
        done = self._compiled.get(name)
        if done is not None:
            return done
        if name in self._visiting:
            raise ValueError(f'map "{name}" refers to itself')
        self._visiting.add(name)
        config = self._maps[name]
        source = self.template(config.source).render
        default = self.template(config.default).render
        exact: dict[bytes, Renderer] = {}
        regexes: list[tuple[re.Pattern[bytes], Renderer]] = []
        for key, value in config.values:
            render = self.template(value).render
            pattern = map_key_regex(key)
            if pattern is None:
                exact.setdefault(map_exact_key(key), render)
            else:
                regexes.append((pattern, render))
        self._visiting.discard(name)
        lookup = _map_lookup(source, exact, tuple(regexes), default)
        self._compiled[name] = lookup
        return lookup


def _join(pieces: list[bytes | Renderer]) -> tuple[Renderer, bytes | None]:
    if not pieces:
        return (lambda v: b""), b""
    if len(pieces) == 1:
        only = pieces[0]
        if isinstance(only, bytes):
            return (lambda v: only), only
        return only, None
    parts = tuple(pieces)

    def render(v: RequestVars) -> bytes:
        return b"".join([p if isinstance(p, bytes) else p(v) for p in parts])

    return render, None


def _map_lookup(
    source: Renderer,
    exact: dict[bytes, Renderer],
    regexes: tuple[tuple[re.Pattern[bytes], Renderer], ...],
    default: Renderer,
) -> Renderer:
    def lookup(v: RequestVars) -> bytes:
        key = source(v)
        hit = exact.get(key.lower())
        if hit is not None:
            return hit(v)
        for pattern, value in regexes:
            if pattern.search(key) is not None:
                return value(v)
        return default(v)

    return lookup
