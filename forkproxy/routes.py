# Routing and the upstream request head (layer 1, pure; compiled once per config load).
#
# Invariants:
# - A Router is built from one Config and never changes; everything a request needs
#   (regexes, templates, maps, name and prefix tables, head pieces) is compiled in
#   __init__, so server_for/route cost a few dict lookups for common configs.
# - Server choice is nginx's: exact name, longest "*.x"/".x", longest "x.*", first
#   regex, else the address's default_server (else its first server).
# - Location choice is nginx's on the normalised path: "=" wins at once; the longest
#   prefix is remembered and wins at once if "^~"; else the first matching regex in
#   config order; else the remembered prefix; None means 404.
# - nginx's slash redirect (auto_redirect) is decided when the config loads: a path P
#   such that a prefix or exact location is named P + "/" (every location proxies) and
#   no location is named P itself maps to that location in the exact table, and route()
#   raises SlashRedirect for it. So it wins over shorter prefixes and regexes, as in
#   nginx, and costs nothing on a request it does not concern (configs with neither
#   exact locations nor such names do not even look the path up).
# - request_head removes hop-by-hop fields (and those Connection names), Host and every
#   field set_header sets, and adds Host, set_header values and framing: the upstream
#   sees exactly one Host and never a Transfer-Encoding the proxy did not choose.
"""Router (server and location choice) and Route (target, head, redirects)."""

from __future__ import annotations

import re
from collections.abc import Callable

from forkproxy.confmodel import Config, Location, Server, Upstream
from forkproxy.errors import HttpError
from forkproxy.http.headers import HOP_BY_HOP
from forkproxy.template import Compiler, RequestVars, Template, compile_regex
from forkproxy.uri import encode_path, normalize_path, origin_form, target_host

__all__ = [
    "RequestVars", "Route", "Router", "SlashRedirect", "Template", "normalize_path", "target_host",
]


class Route:
    """One compiled location: where a request goes and how its head is rebuilt."""

    __slots__ = (
        "_close",
        "_drop",
        "_fields",
        "_host",
        "_prefix_len",
        "_redirect_from",
        "_redirect_hosts",
        "_redirect_to",
        "_uri",
        "_version",
        "location",
        "rewrite",
        "server_name",
        "stop",
        "upstream",
    )

    def __init__(self, location: Location, upstream: Upstream, compiler: Compiler, server_name: str = "") -> None:
        self.location = location
        self.upstream = upstream
        self.server_name = server_name.encode()  # $server_name: the server's first name
        # A "^~" prefix (and an exact match) ends the search without trying regexes.
        self.stop = location.modifier in ("^~", "=")
        self._prefix_len = len(location.pattern.encode())
        uri = location.proxy_pass_uri
        self._uri = None if uri is None else uri.encode()
        self._version = b" HTTP/" + location.proxy_http_version.encode()
        constants = {"proxy_host": upstream.name.encode()}
        host: Template | None = None
        fields: list[tuple[bytes, Template]] = []
        for name, text in location.set_header:
            template = compiler.template(text, constants)
            if name.lower() == "host":
                host = template
            else:
                fields.append((name.encode() + b": ", template))
        self._host = host
        self._fields = tuple(fields)
        # Removed from the client's fields: hop-by-hop ones, Host and what set_header
        # sets; built once, so a request only adds the names its Connection lists.
        self._drop = HOP_BY_HOP | {b"host"} | {n.lower().encode() for n, _ in location.set_header}
        # nginx sends "Connection: close" to HTTP/1.0 upstreams; 1.1 keeps the
        # connection alive with no Connection field at all (unless set_header sets one).
        sets_connection = any(n.lower() == "connection" for n, _ in location.set_header)
        self._close = location.proxy_http_version == "1.0" and not sets_connection
        self._redirect_hosts, self._redirect_from, self._redirect_to = _redirect_map(
            location, upstream
        )
        # proxy_redirect for the response's Location and Refresh, None when off
        self.rewrite = self.rewrite_location if self._redirect_from is not None else None

    def upstream_target(self, v: RequestVars) -> bytes:
        """The request target sent upstream (nginx's proxy_pass URI rule)."""
        if self._uri is None:
            target = v.request_uri
            if target[:1] == b"/":
                return target
            return origin_form(target)
        path = self._uri + encode_path(v.uri[self._prefix_len :])
        return path + b"?" + v.args if v.args else path

    def request_head(self, v: RequestVars, framing_chunked: bool) -> bytes:
        """The complete head for the upstream, CRLFCRLF included, built in one join."""
        head = v.head
        target = v.request_uri
        if self._uri is not None or target[:1] != b"/":
            target = self.upstream_target(v)
        lines = [head.method + b" " + target + self._version]
        if self._host is None:
            lines.append(b"Host: " + (v.host or v.server_name))  # nginx's $host
        else:
            value = self._host.render(v)
            if value:
                lines.append(b"Host: " + value)
        headers = head.headers
        memo = headers.forwarded
        if memo is not None and memo[0] is self:
            forwarded = memo[1]
        else:
            drop = self._drop
            connection = head.connection
            if connection and not drop.issuperset(connection):
                drop = drop.union(connection)
            forwarded = b"\r\n".join(
                [item[0] + b": " + item[1] for ln, item in zip(headers.lnames, headers.items) if ln not in drop])
            headers.forwarded = (self, forwarded)
        if forwarded:
            lines.append(forwarded)
        for prefix, template in self._fields:
            value = template.render(v)
            if value:  # a value that renders empty removes the field (as nginx)
                lines.append(prefix + value)
        if self._close:
            lines.append(b"Connection: close")
        if framing_chunked:
            lines.append(b"Transfer-Encoding: chunked")
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    def rewrite_location(self, value: bytes, v: RequestVars) -> bytes | None:
        """proxy_redirect default for a Location or Refresh value; None = unchanged.

        "http://<upstream>/<proxy_pass URI>rest" becomes
        "<scheme>://<client's host>/<location prefix>rest" (without a URI part, "/" maps
        to "/"). <upstream> is the upstream's name, one of its servers, or the Host
        forkproxy sent it (by default the client's host).
        """
        if self._redirect_from is None:
            return None
        lead = b""
        url = value
        if value[:7].lower() != b"http://":
            at = value.lower().find(b"url=")
            if at < 0:
                return None
            lead, url = value[: at + 4], value[at + 4 :]
            if url[:7].lower() != b"http://":
                return None
        slash = url.find(b"/", 7)
        authority = (url[7:] if slash < 0 else url[7:slash]).lower()
        path = b"/" if slash < 0 else url[slash:]
        client = v.head.headers.get(b"host") or v.host
        if authority not in self._redirect_hosts and authority not in (v.host, client.lower()):
            return None
        if not path.startswith(self._redirect_from):
            return None
        rest = path[len(self._redirect_from) :]
        return lead + v.scheme + b"://" + client + self._redirect_to + rest


def _redirect_map(
    location: Location, upstream: Upstream
) -> tuple[frozenset[bytes], bytes | None, bytes]:
    if location.proxy_redirect == "off":
        return frozenset(), None, b""
    hosts = {upstream.name.lower().encode()}
    for host, port in upstream.servers:
        shown = f"[{host}]" if ":" in host else host
        hosts.add(f"{shown}:{port}".encode())
        if port == 80:
            hosts.add(shown.encode())
    if location.proxy_pass_uri is None:
        return frozenset(hosts), b"/", b"/"
    return frozenset(hosts), location.proxy_pass_uri.encode(), location.pattern.encode()


class SlashRedirect(HttpError):
    """Raised by Router.route for nginx's slash redirect: the path is a location's name
    without its trailing slash, so the answer is a 301 to `target` (the location's name;
    the connection adds scheme, host, port and query). `route` is that location."""

    status = 301

    def __init__(self, route: Route, target: bytes) -> None:
        super().__init__(f"redirect to location {route.location.path!r}")
        self.route = route
        self.target = target
        self.url = b""  # the Location value, filled in by the connection


class _Slash:
    """An entry of the exact table that redirects instead of matching."""

    __slots__ = ("route", "target")

    def __init__(self, route: Route, target: bytes) -> None:
        self.route = route
        self.target = target


_Search = Callable[[bytes], "re.Match[bytes] | None"]


# Paths a worker resolves repeat (the same pages, assets and endpoints): the route of a
# raw origin-form path seen before is remembered per server, at most SEEN_PATHS entries
# of at most SEEN_PATH_MAX bytes; the memo is emptied when full, so a client cannot grow it.
SEEN_PATHS = 256
SEEN_PATH_MAX = 256


class _Locations:
    """The compiled locations of one server."""

    __slots__ = ("exact", "lengths", "prefixes", "regexes", "seen")

    def __init__(self, routes: list[Route]) -> None:
        # raw path (before "?") -> (route or None, normalised path)
        self.seen: dict[bytes, tuple[Route | None, bytes]] = {}
        self.exact: dict[bytes, Route | _Slash] = {}
        self.prefixes: dict[bytes, Route] = {}
        regexes: list[tuple[_Search, Route]] = []
        for route in routes:
            loc = route.location
            key = loc.pattern.encode()
            if loc.modifier == "=":
                self.exact.setdefault(key, route)
            elif loc.modifier in ("", "^~"):
                self.prefixes.setdefault(key, route)
            else:
                pattern = compile_regex(loc.pattern, ignore_case=loc.modifier == "~*")
                regexes.append((pattern.search, route))
        self.lengths = tuple(sorted({len(p) for p in self.prefixes}, reverse=True))
        self.regexes = tuple(regexes)
        # nginx's auto_redirect: set on every location whose name ends in "/" and whose
        # requests proxy_pass handles; ngx_http_core_find_static_location returns it
        # (NGX_DONE) for a URI one "/" shorter than the name, before regexes are tried,
        # unless a location named exactly like the URI matches first (NGX_OK / NGX_AGAIN).
        # When an exact and a prefix location share the name, the exact one is used.
        slash: dict[bytes, Route] = {}
        for route in routes:
            loc = route.location
            name = loc.pattern.encode()
            if loc.modifier in ("", "^~", "=") and len(name) > 1 and name.endswith(b"/"):
                if loc.modifier == "=" or name[:-1] not in slash:
                    slash[name[:-1]] = route
        for path, route in slash.items():
            if path not in self.exact and path not in self.prefixes:
                self.exact[path] = _Slash(route, route.location.pattern.encode())


class _Names:
    """The server_name tables of one listen address."""

    __slots__ = ("default", "exact", "head", "head_dot", "no_host", "regexes", "tail")

    def __init__(self, servers: list[Server], default: Server) -> None:
        self.exact: dict[bytes, Server] = {}
        self.head: dict[bytes, Server] = {}  # "*.example.com" -> b"example.com"
        self.head_dot: dict[bytes, Server] = {}  # ".example.com" -> b"example.com"
        self.tail: dict[bytes, Server] = {}  # "www.example.*" -> b"www.example"
        regexes: list[tuple[re.Pattern[bytes], Server]] = []
        for server in servers:
            for name in server.server_name:
                raw = name.encode()
                if name.startswith("~"):
                    regexes.append((compile_regex(name[1:]), server))
                elif name.startswith("*."):
                    self.head.setdefault(raw[2:], server)
                elif name.startswith(".") and len(name) > 1:
                    self.head_dot.setdefault(raw[1:], server)
                elif name.endswith(".*"):
                    self.tail.setdefault(raw[:-2], server)
                else:
                    self.exact.setdefault(raw, server)
        self.regexes = tuple(regexes)
        self.default = default
        # No Host (HTTP/1.0): the server named "" (every server is, by default), the
        # default_server first when it is one of them.
        self.no_host = default if "" in default.server_name else self.exact.get(b"", default)

    def find(self, host: bytes | None) -> Server:
        if not host:
            return self.no_host
        server = self.exact.get(host)
        if server is not None:
            return server
        if self.head or self.head_dot:
            server = self.head_dot.get(host)
            dot = host.find(b".")
            while server is None and dot >= 0:
                suffix = host[dot + 1 :]
                server = self.head.get(suffix) or self.head_dot.get(suffix)
                dot = host.find(b".", dot + 1)
            if server is not None:
                return server
        if self.tail:
            dot = host.rfind(b".")
            while dot > 0:
                server = self.tail.get(host[:dot])
                if server is not None:
                    return server
                dot = host.rfind(b".", 0, dot)
        for pattern, server in self.regexes:
            if pattern.search(host) is not None:
                return server
        return self.default


class Router:
    """Server and location choice for one Config; build once, share read-only."""

    __slots__ = ("_addresses", "_locations", "config", "routes")

    def __init__(self, config: Config) -> None:
        self.config = config
        compiler = Compiler(config.maps)
        self.routes: tuple[tuple[Route, ...], ...] = tuple(
            tuple(Route(loc, config.upstreams[loc.proxy_pass_upstream], compiler, server.server_name[0])
                  for loc in server.locations)
            for server in config.servers
        )
        self._locations = {s.index: _Locations(list(r)) for s, r in zip(config.servers, self.routes)}
        by_address: dict[tuple[str, int], list[Server]] = {}
        for server in config.servers:
            for listen in server.listen:
                by_address.setdefault((listen.host, listen.port), []).append(server)
        self._addresses: dict[tuple[str, int], _Names] = {}
        for address, servers in by_address.items():
            default = next(
                (s for s in servers for lst in s.listen
                 if (lst.host, lst.port) == address and lst.default_server),
                servers[0],
            )
            self._addresses[address] = _Names(servers, default)

    def server_for(self, listen: tuple[str, int], host: bytes | None) -> Server:
        """The server for a request on the configured address `listen` with this Host
        (normalised: lowercase, no port; None or b"" when absent)."""
        return self._addresses[listen].find(host)

    def servers_at(self, listen: tuple[str, int]) -> _Names:
        """The server choice of one address: `.find(host)` is server_for without the
        address lookup (a connection looks it up once)."""
        return self._addresses[listen]

    def default_server(self, listen: tuple[str, int]) -> Server:
        """The default_server of an address (else its first server): nginx takes the
        request-head limits and client_header_timeout from it, before Host is known."""
        return self._addresses[listen].default

    def resolve(self, server: Server, target: bytes) -> tuple[Route | None, bytes, bytes]:
        """(route or None, normalised path, args) of a request target: normalize_path and
        route() in one, remembered for origin-form paths seen before. Raises BadRequest
        and SlashRedirect as they do."""
        table = self._locations[server.index]
        if target[:1] == b"/":
            raw, _, args = target.partition(b"?")
            known = table.seen.get(raw)
            if known is not None:
                return known[0], known[1], args
            path, args = normalize_path(target)
            route = self.route(server, path)
            if len(raw) <= SEEN_PATH_MAX:
                if len(table.seen) >= SEEN_PATHS:
                    table.seen.clear()
                table.seen[raw] = (route, path)
            return route, path, args
        path, args = normalize_path(target)
        return self.route(server, path), path, args

    def route(self, server: Server, path: bytes) -> Route | None:
        """The location for a normalised path (nginx order), None for 404.

        Raises SlashRedirect when nginx answers the path with a 301 to the path with a
        slash appended (a location named path + "/", and none named path)."""
        table = self._locations[server.index]
        if table.exact:
            exact = table.exact.get(path)
            if exact is not None:
                if isinstance(exact, _Slash):
                    raise SlashRedirect(exact.route, exact.target)
                return exact
        found = None
        size = len(path)
        prefixes = table.prefixes
        for length in table.lengths:
            if length <= size:
                found = prefixes.get(path[:length])
                if found is not None:
                    if found.stop:
                        return found
                    break
        for search, route in table.regexes:
            if search(path) is not None:
                return route
        return found
