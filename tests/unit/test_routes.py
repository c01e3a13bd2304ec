"""forkproxy.routes: nginx server/location choice, URI rules, templates, the upstream head."""

from __future__ import annotations

import timeit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.config import loads
from forkproxy.errors import BadRequest
from forkproxy.http.parser import Head, RequestParser
from forkproxy.routes import RequestVars, Route, Router, SlashRedirect, normalize_path, target_host
from forkproxy.uri import normalize_host

UPSTREAM = '[upstream.app]\nservers = ["127.0.0.1:8080"]\n'


def router(body: str, prelude: str = "") -> Router:
    return Router(loads(prelude + UPSTREAM + body))


def server_with(*locations: str, extra: str = "") -> str:
    """One server on 127.0.0.1:8000 with locations given as (path[, proxy_pass])."""
    text = '[[server]]\nlisten = ["127.0.0.1:8000"]\n' + extra
    for spec in locations:
        path, _, proxy = spec.partition(" -> ")
        text += f"[[server.location]]\npath = '{path}'\nproxy_pass = '{proxy or 'http://app'}'\n"
    return text


def head(raw: bytes) -> Head:
    parsed = RequestParser().feed(raw)
    assert parsed is not None
    return parsed


def request(target: bytes, *fields: bytes, host: bytes = b"client.example",
            method: bytes = b"GET") -> RequestVars:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host, *fields]
    h = head(b"\r\n".join(lines) + b"\r\n\r\n")
    uri, args = normalize_path(target)
    return RequestVars(h, normalize_host(host), b"10.0.0.7", b"50123", b"8000", b"",
                       b"http", uri, args, target)


def matched(r: Router, path: bytes, listen: tuple[str, int] = ("127.0.0.1", 8000)) -> str | None:
    route = r.route(r.server_for(listen, None), path)
    return None if route is None else route.location.path


def route_for(r: Router, v: RequestVars) -> Route:
    route = r.route(r.server_for(("127.0.0.1", 8000), v.host), v.uri)
    assert route is not None
    return route


# -- location precedence ----------------------------------------------------------


def test_nginx_documented_example() -> None:
    # nginx's "location" docs: A "= /", B "/", C "/documents/", D "^~ /images/",
    # E "~* \.(gif|jpg|jpeg)$".
    r = router(server_with("= /", "/", "/documents/", "^~ /images/", r"~* \.(gif|jpg|jpeg)$"))
    assert matched(r, b"/") == "= /"
    assert matched(r, b"/index.html") == "/"
    assert matched(r, b"/documents/document.html") == "/documents/"
    assert matched(r, b"/images/1.gif") == "^~ /images/"
    assert matched(r, b"/documents/1.jpg") == r"~* \.(gif|jpg|jpeg)$"


def test_longest_prefix_wins_regardless_of_order() -> None:
    r = router(server_with("/a/", "/a/b/c/", "/a/b/"))
    assert matched(r, b"/a/b/c/d") == "/a/b/c/"
    assert matched(r, b"/a/b/x") == "/a/b/"
    assert matched(r, b"/a/x") == "/a/"
    assert matched(r, b"/b") is None


def test_prefix_is_a_string_prefix_not_a_segment_prefix() -> None:
    r = router(server_with("/ws", "/"))
    assert matched(r, b"/wsx") == "/ws"


def test_first_regex_in_config_order_wins() -> None:
    r = router(server_with(r"~ \.php$", r"~ ^/app/", "/"))
    assert matched(r, b"/app/index.php") == r"~ \.php$"
    r = router(server_with(r"~ ^/app/", r"~ \.php$", "/"))
    assert matched(r, b"/app/index.php") == r"~ ^/app/"


def test_regex_beats_plain_prefix_but_not_caret_tilde() -> None:
    r = router(server_with("/static/", r"~ \.css$"))
    assert matched(r, b"/static/a.css") == r"~ \.css$"
    r = router(server_with("^~ /static/", r"~ \.css$"))
    assert matched(r, b"/static/a.css") == "^~ /static/"
    # a prefix equal to the whole path still lets a regex win (nginx's NGX_AGAIN)
    r = router(server_with("/x.css", r"~ \.css$"))
    assert matched(r, b"/x.css") == r"~ \.css$"


def test_caret_tilde_only_stops_when_it_is_the_longest_prefix() -> None:
    r = router(server_with("^~ /a/", "/a/b/", r"~ \.js$"))
    assert matched(r, b"/a/b/x.js") == r"~ \.js$"
    assert matched(r, b"/a/x.js") == "^~ /a/"


def test_exact_match_only_for_the_exact_path() -> None:
    r = router(server_with("= /x", "/", r"~ ^/x"))
    assert matched(r, b"/x") == "= /x"
    assert matched(r, b"/x/") == r"~ ^/x"


def test_pcre_named_groups_are_accepted() -> None:
    r = router(server_with(r"~ ^/(?<app>[a-z]+)/(?<!x)", "/"))
    assert matched(r, b"/shop/") == r"~ ^/(?<app>[a-z]+)/(?<!x)"
    r = router('[[server]]\nlisten = ["127.0.0.1:8000"]\n'
               '[[server]]\nlisten = ["127.0.0.1:8000"]\nserver_name = ["~^(?<sub>.+)\\\\.example\\\\.com$"]\n')
    assert r.server_for(("127.0.0.1", 8000), b"a.example.com").index == 1


def test_case_sensitive_and_insensitive_regexes() -> None:
    r = router(server_with(r"~ \.jpg$", "/"))
    assert matched(r, b"/a.JPG") == "/"
    r = router(server_with(r"~* \.jpg$", "/"))
    assert matched(r, b"/a.JPG") == r"~* \.jpg$"


def test_routes_match_the_normalised_path() -> None:
    r = router(server_with("^~ /admin/", "/"))
    path, _ = normalize_path(b"/public/..//%61dmin/./x")
    assert path == b"/admin/x"
    assert matched(r, path) == "^~ /admin/"


# -- nginx's slash redirect (auto_redirect) ------------------------------------------


def redirected(r: Router, path: bytes) -> tuple[str, bytes] | None:
    """(the location redirected to, the path to redirect to), or None if `path` routes."""
    try:
        r.route(r.server_for(("127.0.0.1", 8000), None), path)
    except SlashRedirect as e:
        assert e.status == 301 and e.route.location.pattern.encode() == e.target
        return e.route.location.path, e.target
    return None


def test_slash_redirect_for_the_name_without_its_slash() -> None:
    # nginx's example: location /user/ { proxy_pass ...; } and a request for /user
    r = router(server_with("/user/", "/"))
    assert redirected(r, b"/user") == ("/user/", b"/user/")
    assert matched(r, b"/user/") == "/user/"
    assert matched(r, b"/user/x") == "/user/"
    assert matched(r, b"/users") == "/"  # only the name minus its slash, nothing longer
    assert matched(r, b"/use") == "/"
    assert matched(r, b"/") == "/"


def test_slash_redirect_without_any_other_location() -> None:
    r = router(server_with("/ws/"))
    assert redirected(r, b"/ws") == ("/ws/", b"/ws/")
    assert matched(r, b"/w") is None  # 404


def test_slash_redirect_beats_shorter_prefixes_and_regexes() -> None:
    # NGX_DONE is returned before regex locations are tried, and over ^~ prefixes
    r = router(server_with("^~ /", "/a/", r"~ ^/a$", r"~ .*"))
    assert redirected(r, b"/a") == ("/a/", b"/a/")
    r = router(server_with("/a/b/", "/a/", r"~ b$"))
    assert redirected(r, b"/a/b") == ("/a/b/", b"/a/b/")
    assert matched(r, b"/a/c") == "/a/"


def test_a_location_named_like_the_path_wins_over_the_redirect() -> None:
    # "If this is not desired, an exact match of the URI and location could be defined"
    r = router(server_with("= /ws", "/ws/", "/"))
    assert matched(r, b"/ws") == "= /ws"
    # a prefix location named like the path matches it (NGX_AGAIN), so regexes apply too
    r = router(server_with("/ws", "/ws/", r"~ s$"))
    assert matched(r, b"/ws") == r"~ s$"
    r = router(server_with("^~ /ws", "/ws/", r"~ s$"))
    assert matched(r, b"/ws") == "^~ /ws"


def test_slash_redirect_for_caret_tilde_and_exact_names() -> None:
    r = router(server_with("^~ /static/", "/"))
    assert redirected(r, b"/static") == ("^~ /static/", b"/static/")
    # nginx sets auto_redirect on an exact location too; it is used before a prefix of
    # the same name
    r = router(server_with("/x/", "= /x/", "/"))
    assert redirected(r, b"/x") == ("= /x/", b"/x/")
    assert matched(r, b"/x/") == "= /x/"
    assert matched(r, b"/x/y") == "/x/"


def test_no_slash_redirect_for_regexes_or_the_root() -> None:
    r = router(server_with(r"~ ^/re/", "/"))
    assert matched(r, b"/re") == "/"
    r = router(server_with("/"))
    assert matched(r, b"/") == "/"


def test_slash_redirect_is_per_server() -> None:
    body = ('[[server]]\nlisten = ["127.0.0.1:8000"]\nserver_name = ["a"]\n'
            '[[server.location]]\npath = "/ws/"\nproxy_pass = "http://app"\n'
            '[[server]]\nlisten = ["127.0.0.1:8000"]\nserver_name = ["b"]\n'
            '[[server.location]]\npath = "/"\nproxy_pass = "http://app"\n')
    r = router(body)
    with pytest.raises(SlashRedirect):
        r.route(r.server_for(("127.0.0.1", 8000), b"a"), b"/ws")
    other = r.route(r.server_for(("127.0.0.1", 8000), b"b"), b"/ws")
    assert other is not None and other.location.path == "/"


def test_slash_redirect_uses_the_normalised_path() -> None:
    r = router(server_with("/ws/", "/"))
    path, args = normalize_path(b"//x/../ws?a=1")
    assert (path, args) == (b"/ws", b"a=1")
    assert redirected(r, path) == ("/ws/", b"/ws/")


def test_route_is_fast() -> None:
    r = router(server_with("= /", "/api/", "/api/v2/", "^~ /static/", r"~ \.php$",
                           r"~* \.(png|jpg)$", "/ws/", "/admin/", "= /health", "/"))
    server = r.server_for(("127.0.0.1", 8000), None)
    n = 20000
    worst = 0.0
    for path in (b"/api/v2/users/42", b"/x/y.PNG", b"/nothing/here", b"/static/a.php"):
        timer = timeit.Timer(lambda p=path: r.route(server, p))  # type: ignore[misc]
        worst = max(worst, min(timer.repeat(number=n, repeat=3)) / n)
    assert worst < 20e-6  # typically 1-3 us; a generous bound for loaded CI machines


# -- server choice -----------------------------------------------------------------


SERVERS = """
[[server]]
listen = ["127.0.0.1:8000"]
server_name = ["first.example"]
[[server]]
listen = [{ address = "127.0.0.1:8000", default_server = true }, "127.0.0.1:8001"]
server_name = ["default.example"]
[[server]]
listen = ["127.0.0.1:8000"]
server_name = ["*.example.org", "mail.*"]
[[server]]
listen = ["127.0.0.1:8000"]
server_name = ["*.sub.example.org", ".example.net", "~^api\\\\d+\\\\.example\\\\.com$"]
[[server]]
listen = ["127.0.0.1:8000"]
server_name = ["www.example.org", "mail.example.*", "example.net"]
[[server]]
listen = ["127.0.0.1:8002"]
server_name = ["only.example"]
"""


@pytest.mark.parametrize("host, index", [
    (b"first.example", 0),
    (b"default.example", 1),
    (b"unknown.example", 1),          # no match: the default_server of the address
    (b"www.example.org", 4),          # exact beats wildcard
    (b"a.example.org", 2),
    (b"a.b.example.org", 2),          # "*.x" matches several labels
    (b"a.sub.example.org", 3),        # longest leading wildcard
    (b"example.org", 1),              # "*.example.org" needs a label in front
    (b"example.net", 4),              # exact beats ".example.net"
    (b"x.example.net", 3),            # ".example.net" matches subdomains
    (b"mail.example.com", 4),         # longest trailing wildcard
    (b"mail.other.com", 2),
    (b"api12.example.com", 3),        # regex after wildcards
    (b"api12.example.org", 2),        # leading wildcard beats regex
    (None, 1),                        # no Host: the default server (named "" by default)
])
def test_server_name_selection(host: bytes | None, index: int) -> None:
    r = router(SERVERS)
    assert r.server_for(("127.0.0.1", 8000), host).index == index


def test_server_choice_is_per_address() -> None:
    r = router(SERVERS)
    assert r.default_server(("127.0.0.1", 8000)).index == 1
    assert r.default_server(("127.0.0.1", 8002)).index == 5
    assert r.server_for(("127.0.0.1", 8001), b"first.example").index == 1
    assert r.server_for(("127.0.0.1", 8002), b"anything").index == 5
    assert r.server_for(("127.0.0.1", 8002), None).index == 5


def test_dot_wildcard_matches_the_bare_domain() -> None:
    r = router('[[server]]\nlisten = ["127.0.0.1:8000"]\n'
               '[[server]]\nlisten = ["127.0.0.1:8000"]\nserver_name = [".example.net"]\n')
    assert r.server_for(("127.0.0.1", 8000), b"example.net").index == 1
    assert r.server_for(("127.0.0.1", 8000), b"example.com").index == 0


def test_first_server_is_default_without_default_server() -> None:
    r = router('[[server]]\nlisten = ["127.0.0.1:8000"]\nserver_name = ["a"]\n'
               '[[server]]\nlisten = ["127.0.0.1:8000"]\nserver_name = ["b"]\n')
    assert r.server_for(("127.0.0.1", 8000), b"c").index == 0
    assert r.server_for(("127.0.0.1", 8000), b"b").index == 1


# -- the target sent upstream ------------------------------------------------------


def test_uri_part_replaces_the_matched_prefix() -> None:
    r = router(server_with("/name/ -> http://127.0.0.1/remote/", "= /old -> http://app/new",
                           "/ -> http://app"))
    v = request(b"/name/x")
    assert route_for(r, v).upstream_target(v) == b"/remote/x"
    v = request(b"/name/a/b?x=1&y=%20")
    assert route_for(r, v).upstream_target(v) == b"/remote/a/b?x=1&y=%20"
    v = request(b"/name/")
    assert route_for(r, v).upstream_target(v) == b"/remote/"
    v = request(b"/old?q")
    assert route_for(r, v).upstream_target(v) == b"/new?q"
    v = request(b"/name//./x/%7Euser/a%2fb")  # normalised, then re-encoded safely
    assert route_for(r, v).upstream_target(v) == b"/remote/x/~user/a%2Fb"


def test_uri_part_without_trailing_slash() -> None:
    # nginx: location /name/ { proxy_pass http://127.0.0.1/remote; } -> /remotex
    r = router(server_with("/name/ -> http://app/remote"))
    v = request(b"/name/x")
    assert route_for(r, v).upstream_target(v) == b"/remotex"


def test_without_uri_part_the_original_target_passes_unchanged() -> None:
    r = router(server_with("/ -> http://app"))
    v = request(b"/a/../b//c?x=%2F&y")
    assert route_for(r, v).upstream_target(v) == b"/a/../b//c?x=%2F&y"
    v = request(b"http://client.example/p?q=1")  # absolute-form becomes origin-form
    assert route_for(r, v).upstream_target(v) == b"/p?q=1"
    v = request(b"http://client.example?q=1")
    assert route_for(r, v).upstream_target(v) == b"/?q=1"


# -- normalisation -----------------------------------------------------------------


@pytest.mark.parametrize("target, path, args", [
    (b"/", b"/", b""),
    (b"/a/b?x=1", b"/a/b", b"x=1"),
    (b"/a/./b/../c", b"/a/c", b""),
    (b"/a/b/..", b"/a/", b""),
    (b"/a/.", b"/a/", b""),
    (b"/a/..", b"/", b""),
    (b"//a///b//", b"/a/b/", b""),
    (b"/%2e/a/%2E%2e/b", b"/b", b""),
    (b"/a%2Fb", b"/a%2Fb", b""),          # an encoded slash is never a separator
    (b"/a%2fb/%2f..", b"/a%2Fb/%2F..", b""),  # "%2F.." is not a dot-segment
    (b"/%7euser/%41%20", b"/~user/A%20", b""),
    (b"/.well-known/x", b"/.well-known/x", b""),
    (b"/a?x=/../..//", b"/a", b"x=/../..//"),
    (b"/a?", b"/a", b""),
    (b"http://Example.com:8000/a/../b?q", b"/b", b"q"),
    (b"https://example.com", b"/", b""),
])
def test_normalize_path(target: bytes, path: bytes, args: bytes) -> None:
    assert normalize_path(target) == (path, args)


@pytest.mark.parametrize("target", [
    b"/..", b"/a/../..", b"/%2e%2e/x", b"/a/%2E%2E/%2e%2e/b", b"/%zz", b"/a%2", b"/a%", b"*",
    b"ftp://x/y", b"example.com:443",
])
def test_normalize_path_rejects(target: bytes) -> None:
    with pytest.raises(BadRequest):
        normalize_path(target)


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2F", "%7E", "c%20d"]), max_size=8))
def test_normalised_paths_are_stable(segments: list[str]) -> None:
    target = ("/" + "/".join(segments)).encode()
    try:
        path, _ = normalize_path(target)
    except BadRequest:
        return
    assert path.startswith(b"/") and b"//" not in path
    assert all(seg not in (b".", b"..") for seg in path.split(b"/"))
    assert normalize_path(path) == (path, b"")


def test_target_host_and_normalize_host() -> None:
    assert target_host(b"/a") is None
    assert target_host(b"http://Example.COM:8080/a?b") == b"Example.COM:8080"
    assert target_host(b"http://[::1]:80") == b"[::1]:80"
    with pytest.raises(BadRequest):
        target_host(b"http://user@host/")
    assert normalize_host(b"Example.COM.:8080") == b"example.com"
    assert normalize_host(b"[::1]:80") == b"[::1]"
    with pytest.raises(BadRequest):
        normalize_host(b"a b")


# -- templates and maps ------------------------------------------------------------

MAPS = """
[map.connection_upgrade]
source = "$http_upgrade"
default = "upgrade"
values = { "" = "close" }

[map.kind]
source = "$http_accept"
default = "other:$kind2"
values = { "text/html" = "html", "~*JSON" = "json", "~^image/(png|gif)" = "img", "\\\\~lit" = "tilde" }

[map.kind2]
source = "$request_method"
default = "read"
values = { "post" = "write" }
"""


def templated(values: str, *fields: bytes, method: bytes = b"GET") -> bytes:
    r = router(server_with("/", extra=f"set_header = {{ {values} }}\n"), prelude=MAPS)
    v = request(b"/p?x=1", *fields, method=method)
    return route_for(r, v).request_head(v, False)


def test_connection_upgrade_map() -> None:
    text = "Connection = '$connection_upgrade', Upgrade = '$http_upgrade'"
    assert b"\r\nConnection: close\r\n" in templated(text)
    assert b"Upgrade:" not in templated(text)  # empty $http_upgrade removes the field
    ws = templated(text, b"Connection: Upgrade", b"Upgrade: websocket")
    assert b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\n" in ws


@pytest.mark.parametrize("accept, method, kind", [
    (b"text/html", b"GET", b"html"),
    (b"TEXT/HTML", b"GET", b"html"),          # exact keys are case-insensitive (nginx)
    (b"application/json", b"GET", b"json"),   # ~* regex
    (b"image/png", b"GET", b"img"),
    (b"IMAGE/png", b"GET", b"other:read"),    # ~ regex is case-sensitive
    (b"~lit", b"GET", b"tilde"),              # backslash makes "~" literal
    (b"*/*", b"POST", b"other:write"),        # a map whose default names another map
])
def test_map_lookup_order(accept: bytes, method: bytes, kind: bytes) -> None:
    out = templated("X-Kind = '$kind'", b"Accept: " + accept, method=method)
    assert b"\r\nX-Kind: " + kind + b"\r\n" in out


def test_builtin_variables() -> None:
    out = templated(
        "X-A = '${scheme}://$host:$server_port$request_uri', X-B = '$remote_addr:$remote_port',"
        " X-C = '$uri$is_args$args', X-D = '$request_method $http_x_custom_thing',"
        " X-F = '$proxy_add_x_forwarded_for', X-P = '$proxy_host', X-Q = '$query_string'",
        b"X-Custom-Thing: yes", b"X-Forwarded-For: 1.2.3.4", b"X-Forwarded-For: 5.6.7.8")
    assert b"X-A: http://client.example:8000/p?x=1\r\n" in out
    assert b"X-B: 10.0.0.7:50123\r\n" in out
    assert b"X-C: /p?x=1\r\n" in out
    assert b"X-D: GET yes\r\n" in out
    assert b"X-F: 1.2.3.4, 5.6.7.8, 10.0.0.7\r\n" in out
    assert b"X-P: app\r\n" in out
    assert b"X-Q: x=1\r\n" in out


# -- the head sent upstream ----------------------------------------------------------


def test_request_head_removes_hop_by_hop_and_keeps_order() -> None:
    r = router(server_with("/"))
    v = request(b"/p", b"Accept: */*", b"Connection: keep-alive, X-Secret", b"Keep-Alive: 5",
                b"Proxy-Connection: x", b"TE: trailers", b"Trailer: X", b"Upgrade: websocket",
                b"X-Secret: s", b"Content-Length: 3", b"cookie: a=1", b"Cookie: b=2",
                b"X-Mixed-Case: v")
    out = route_for(r, v).request_head(v, False)
    assert out == (b"GET /p HTTP/1.1\r\nHost: client.example\r\nAccept: */*\r\n"
                   b"Content-Length: 3\r\ncookie: a=1\r\nCookie: b=2\r\nX-Mixed-Case: v\r\n\r\n")


def test_request_head_chunked_and_host_from_client() -> None:
    r = router(server_with("/"))
    v = request(b"/up", b"Transfer-Encoding: chunked", method=b"POST", host=b"Client.Example:8000")
    out = route_for(r, v).request_head(v, True)
    assert out == b"POST /up HTTP/1.1\r\nHost: client.example\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_set_header_overrides_and_empty_removes() -> None:
    extra = "set_header = { Host = '$http_host', Accept = '', X-Via = 'fp', User-Agent = '$http_x_none' }\n"
    r = router(server_with("/", extra=extra))
    v = request(b"/p", b"Accept: a", b"User-Agent: ua", b"X-Via: client", host=b"h.example:81")
    out = route_for(r, v).request_head(v, False)
    assert out == b"GET /p HTTP/1.1\r\nHost: h.example:81\r\nX-Via: fp\r\n\r\n"


def test_host_falls_back_to_the_server_name() -> None:
    r = router(server_with("/", extra="server_name = ['named.example']\nset_header = { X-H = '$host' }\n"))
    h = head(b"GET /p HTTP/1.0\r\n\r\n")
    v = RequestVars(h, b"", server_name=b"named.example", uri=b"/p", request_uri=b"/p")
    assert route_for(r, request(b"/p")).request_head(v, False) == (
        b"GET /p HTTP/1.1\r\nHost: named.example\r\nX-H: named.example\r\n\r\n")


def test_http_1_0_upstream_gets_connection_close() -> None:
    r = router(server_with("/", extra="proxy_http_version = '1.0'\n"))
    v = request(b"/p")
    assert route_for(r, v).request_head(v, False) == (
        b"GET /p HTTP/1.0\r\nHost: client.example\r\nConnection: close\r\n\r\n")


def test_websocket_shorthand_head() -> None:
    r = router(server_with("/", extra="websocket = true\n"))
    v = request(b"/chat", b"Connection: Upgrade", b"Upgrade: websocket",
                b"Sec-WebSocket-Key: k", b"Sec-WebSocket-Version: 13")
    assert route_for(r, v).request_head(v, False) == (
        b"GET /chat HTTP/1.1\r\nHost: client.example\r\nSec-WebSocket-Key: k\r\n"
        b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")


# -- proxy_redirect default --------------------------------------------------------


def test_proxy_redirect_default_with_uri_part() -> None:
    r = router(server_with("/name/ -> http://app/remote/"))
    v = request(b"/name/x", host=b"client.example:8000")
    route = route_for(r, v)
    rewrite = route.rewrite_location
    assert rewrite(b"http://app/remote/y?z", v) == b"http://client.example:8000/name/y?z"
    assert rewrite(b"http://127.0.0.1:8080/remote/", v) == b"http://client.example:8000/name/"
    assert rewrite(b"HTTP://Client.Example/remote/y", v) == b"http://client.example:8000/name/y"
    assert rewrite(b"5; url=http://app/remote/y", v) == b"5; url=http://client.example:8000/name/y"
    assert rewrite(b"http://elsewhere/remote/y", v) is None
    assert rewrite(b"http://app/other/y", v) is None
    assert rewrite(b"/remote/y", v) is None  # relative: unchanged, as nginx


def test_proxy_redirect_default_without_uri_and_off() -> None:
    r = router(server_with("/a/ -> http://app", "/b/ -> http://app/x/") .replace(
        "proxy_pass = 'http://app/x/'", "proxy_pass = 'http://app/x/'\nproxy_redirect = 'off'"))
    v = request(b"/a/1")
    assert route_for(r, v).rewrite_location(b"http://app/a/2", v) == b"http://client.example/a/2"
    v = request(b"/b/1")
    assert route_for(r, v).rewrite_location(b"http://app/x/2", v) is None


# -- resolve: normalize_path and route, remembered per raw path ------------------------

def test_resolve_agrees_with_normalize_path_and_route_and_remembers_paths() -> None:
    r = router(server_with("^~ /admin/", "/api/", "~ \\.png$", "= /exact"))
    server = r.server_for(("127.0.0.1", 8000), None)
    targets = [b"/public/..//%61dmin/./x", b"/api/v1?x=1", b"/api/v1?y=2", b"/img/a.png",
               b"/exact", b"/nowhere", b"http://h.example/api/z?q", b"/admin/x"]
    for _ in range(2):  # the second pass is answered from the memo
        for target in targets:
            path, args = normalize_path(target)
            route, got_path, got_args = r.resolve(server, target)
            assert (route, got_path, got_args) == (r.route(server, path), path, args), target
    table = r._locations[server.index]
    assert b"/api/v1" in table.seen and b"/nowhere" in table.seen  # a 404 is remembered too
    assert not any(raw.startswith(b"http") for raw in table.seen)  # absolute-form: never


def test_resolve_raises_every_time_and_its_memo_is_bounded() -> None:
    from forkproxy import routes
    r = router(server_with("/ws/", "/"))
    server = r.server_for(("127.0.0.1", 8000), None)
    for _ in range(2):
        with pytest.raises(SlashRedirect):
            r.resolve(server, b"/ws")
        with pytest.raises(BadRequest):
            r.resolve(server, b"/../etc")
    table = r._locations[server.index]
    assert b"/ws" not in table.seen and b"/../etc" not in table.seen
    for i in range(routes.SEEN_PATHS * 3):
        r.resolve(server, b"/p%d" % i)
        assert len(table.seen) <= routes.SEEN_PATHS
    r.resolve(server, b"/" + b"x" * routes.SEEN_PATH_MAX)
    assert b"/" + b"x" * routes.SEEN_PATH_MAX not in table.seen
