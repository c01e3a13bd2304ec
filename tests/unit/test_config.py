"""forkproxy.config: the DESIGN sketch, defaults, error paths, units, dump, inheritance."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkproxy.config import (
    CONNECTION_UPGRADE,
    ConfigError,
    Listen,
    Location,
    MasterConfig,
    Server,
    Upstream,
    dump,
    load,
    loads,
)
from forkproxy.units import format_duration, format_size, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
DESIGN = Path("/work/shared/DESIGN.md")

MINIMAL = """
[upstream.app]
servers = ["127.0.0.1:8080"]

[[server]]
listen = ["127.0.0.1:8000"]

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""


def sketch_from_design() -> str:
    """The TOML block of DESIGN.md's recipe section (the file the sketch must match)."""
    text = DESIGN.read_text() if DESIGN.exists() else ""
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    return blocks[0] if blocks else (ROOT / "forkproxy.toml").read_text()


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return info.value


# -- the sketch and the default file ----------------------------------------------


def test_design_sketch_loads_as_written() -> None:
    config = loads(sketch_from_design())
    ws, root = config.servers[0].locations
    assert config.master.workers == (os.cpu_count() or 1)
    assert config.master.shutdown_timeout == 600.0
    assert config.maps["connection_upgrade"] == CONNECTION_UPGRADE
    assert config.upstreams["app"] == Upstream("app", (("127.0.0.1", 8080),), keepalive=32)
    assert config.servers[0].listen == (Listen("127.0.0.1", 8000),)
    assert (ws.modifier, ws.pattern, ws.proxy_pass_upstream, ws.proxy_pass_uri) == (
        "", "/ws/", "app", None)
    assert ws.proxy_http_version == "1.1"
    assert ws.proxy_read_timeout == 60.0
    assert ws.tunnel_timeout == 3600.0
    assert ws.set_header == (("Upgrade", "$http_upgrade"), ("Connection", "$connection_upgrade"))
    assert root.pattern == "/" and root.set_header == () and root.tunnel_timeout is None


def test_default_file_loads_and_matches_the_sketch(tmp_path: Path) -> None:
    config = load(str(ROOT / "forkproxy.toml"))
    assert config == loads(sketch_from_design(), source=str(ROOT / "x.toml"))
    assert config.master.pidfile == str(ROOT / "forkproxy.pid")
    assert config.source == str(ROOT / "forkproxy.toml")


def test_every_default() -> None:
    config = loads(MINIMAL)
    m = config.master
    assert m == MasterConfig(workers=os.cpu_count() or 1, pidfile=os.path.join(os.getcwd(), "forkproxy.pid"))
    assert (m.shutdown_timeout, m.close_spread, m.max_draining_generations) == (600.0, 60.0, 4)
    assert (m.drain_idle_grace, m.ready_timeout, m.control_socket) == (1.0, 10.0, "")
    assert (m.error_log, m.log_level, m.access_log, m.tunnel_log) == ("stderr", "info", "off", "stderr")
    assert (m.user, m.group, m.worker_connections, m.worker_rlimit_nofile) == ("", "", 1024, 0)
    assert (m.max_requests, m.max_worker_rss) == (0, 0)
    assert config.upstreams["app"] == Upstream(
        "app", (("127.0.0.1", 8080),), keepalive=32, keepalive_timeout=4.0, keepalive_requests=1000)
    server = config.servers[0]
    assert server == Server(
        index=0, listen=(Listen("127.0.0.1", 8000, 511, False, False),), server_name=("",),
        locations=server.locations, client_header_timeout=60.0, keepalive_timeout=75.0,
        max_request_line=8192, max_head_size=32768, max_header_count=100)
    assert server.locations[0] == Location(
        path="/", modifier="", pattern="/", proxy_pass_upstream="app", proxy_pass_uri=None,
        proxy_http_version="1.1", set_header=(), proxy_redirect="default", websocket=False,
        upgrade_protocols=("websocket",), tunnel_timeout=None, tunnel_fin_timeout=30.0,
        client_body_timeout=60.0, send_timeout=60.0, keepalive_timeout=75.0,
        proxy_connect_timeout=60.0, proxy_send_timeout=60.0, proxy_read_timeout=60.0,
        client_max_body_size=0, buffer_size=65536)
    assert config.maps == {}


def test_config_is_hashable_and_compares_by_value() -> None:
    a, b = loads(MINIMAL, "a.toml"), loads(MINIMAL, "b.toml")
    assert a == b and hash(a) == hash(b)
    assert a.listen_addresses() == (Listen("127.0.0.1", 8000),)
    with pytest.raises(AttributeError):
        a.master.workers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.maps["x"] = None  # type: ignore[index]


# -- errors name the key path ------------------------------------------------------

BROKEN = [
    # (replace in MINIMAL or append to it, expected path, message fragment)
    (('"http://app"', '"http://ap"'), "server[0].location[0].proxy_pass",
     'unknown upstream "ap" (known: app)'),
    (('["127.0.0.1:8080"]', '["x"]'), "upstream.app.servers[0]", 'expected "host:port", got "x"'),
    ("[master]\nworkers = 0\n", "master.workers", 'expected a positive integer or "auto"'),
    ("[master]\nworkers = \"many\"\n", "master.workers", '"auto"'),
    (('proxy_pass = "http://app"', 'prox_pass = "http://app"'), "server[0].location[0].prox_pass",
     'did you mean "proxy_pass"'),
    ("[master]\nshutdown_timout = \"1m\"\n", "master.shutdown_timout", 'did you mean "shutdown_timeout"'),
    ("[master]\nshutdown_timeout = \"10 minutes\"\n", "master.shutdown_timeout", "duration"),
    ("[master]\nlog_level = \"loud\"\n", "master.log_level", "expected one of"),
    ("[master]\nmax_worker_rss = \"1t\"\n", "master.max_worker_rss", "size"),
    ("[master]\nuser = \"no-such-user-xyz\"\n", "master.user", "no such user"),
    ("[http]\nproxy_read_timeout = \"1x\"\n", "http.proxy_read_timeout", "duration"),
    ("[http]\nset_header = { Foo = \"$nosuch\" }\n", "http.set_header.Foo", 'unknown variable "$nosuch"'),
    ("[http]\nset_header = { \"Bad Name\" = \"x\" }\n", 'http.set_header."Bad Name"', "token"),
    ("[http]\nset_header = { Content-Length = \"1\" }\n", "http.set_header.Content-Length", "framing"),
    ("[http]\nset_header = { X = \"$\" }\n", "http.set_header.X", "invalid variable name"),
    ("[http]\nupgrade_protocols = [\"websocket\", \"h2c\"]\n", "http.upgrade_protocols", "h2c cannot be tunnelled"),
    ("[http]\nproxy_http_version = \"2\"\n", "http.proxy_http_version", 'expected one of "1.0", "1.1", got "2"'),
    ("[http]\nlisten = []\n", "http.listen", 'unknown key "listen"'),
    ("[map.up]\nsource = \"$http_upgrade\"\nvalues = { \"~(\" = \"x\" }\n", 'map.up.values."~("', "invalid regex"),
    ("[map.up]\ndefault = \"x\"\n", "map.up.source", "required"),
    ("[map.host]\nsource = \"$http_upgrade\"\n", "map.host", "invalid map name"),
    ("[map.a]\nsource = \"$b\"\n[map.b]\nsource = \"$a\"\n", "map.a", "refers to itself"),
    ("[map.a]\nsource = \"$http_x\"\ndefault = \"$proxy_host\"\n", "map.a.default", "unknown variable"),
    ("[upstream.b]\nservers = []\n", "upstream.b.servers", "non-empty list"),
    ("[upstream.b]\nservers = [\"10.0.0.1:99999\"]\n", "upstream.b.servers[0]", "invalid port"),
    ("[upstream.b]\nservers = [\"db.internal:80\"]\n", "upstream.b.servers[0]", "names are not resolved"),
    ("[upstream.b]\nservers = [\"10.0.0.1:80\"]\nkeepalive = -1\n", "upstream.b.keepalive", ">= 0"),
    ("[upstream.\"b c\"]\nservers = [\"10.0.0.1:80\"]\n", 'upstream."b c"', "invalid upstream name"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"~ ^/(\"\nproxy_pass = \"http://app\"\n",
     "server[1].location[0].path", "invalid regex"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"~ ^/a/\"\nproxy_pass = \"http://app/x/\"\n",
     "server[1].location[0].proxy_pass", "not allowed in a regex location"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"app/\"\nproxy_pass = \"http://app\"\n",
     "server[1].location[0].path", "must start with '/'"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"/a//b/\"\nproxy_pass = \"http://app\"\n",
     "server[1].location[0].path", 'write "/a/b/"'),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"/\"\nproxy_pass = \"https://app\"\n",
     "server[1].location[0].proxy_pass", "https upstreams are not supported"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"/\"\n",
     "server[1].location[0].proxy_pass", "required"),
    (("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"/a/\"\nproxy_pass = \"http://app\"\n"
     "[[server.location]]\npath = \"^~ /a/\"\nproxy_pass = \"http://app\"\n"),
     "server[1].location[1].path", 'duplicate location "/a/" (also location[0])'),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\nserver_name = [\"*.a.*\"]\n", "server[1].server_name[0]", "wildcard"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\nserver_name = [\"~^(x\"]\n", "server[1].server_name[0]", "invalid regex"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\", \"127.0.0.1:8001\"]\n", "server[1].listen[1]", "duplicate address"),
    ("[[server]]\nlisten = [\"::1:8001\"]\n", "server[1].listen[0]", '"[::1]:8000"'),
    ("[[server]]\nlisten = [\"example.com:80\"]\n", "server[1].listen[0]", "names are not resolved"),
    ("[[server]]\nlisten = [{ addr = \"127.0.0.1:1\" }]\n", "server[1].listen[0].addr", 'did you mean "address"'),
    (("[[server]]\nlisten = [{ address = \"127.0.0.1:8000\", default_server = true }]\n"
     "[[server]]\nlisten = [{ address = \"127.0.0.1:8000\", default_server = true }]\n"),
     "server[2].listen[0]", "already has a default_server (server[1].listen[0])"),
    (("[[server]]\nlisten = [{ address = \"127.0.0.1:8000\", backlog = 5 }]\n"
     "[[server]]\nlisten = [{ address = \"127.0.0.1:8000\", backlog = 6 }]\n"),
     "server[2].listen[0].backlog", "conflicts with backlog = 5 for 127.0.0.1:8000 at server[1].listen[0]"),
    ("[[server]]\nserver_name = [\"a\"]\n", "server[1].listen", "required"),
    (("[[server]]\nlisten = [\"127.0.0.1:8001\"]\n[[server.location]]\npath = \"/\"\nproxy_pass = \"http://app\"\n"
     "websocket = true\nproxy_http_version = \"1.0\"\n"), "server[1].location[0].websocket", "1.1"),
    ("[[server]]\nlisten = [\"127.0.0.1:8001\"]\nclient_header_timeout = 0\n",
     "server[1].client_header_timeout", "above zero"),
    ("[serverz]\n", "serverz", 'did you mean "server"'),
    ("[master]\nshutdown_timeout = \"30s\"\nclose_spread = \"1m\"\n", "master.close_spread",
     "must not exceed shutdown_timeout (60s > 30s)"),
]


def _broken_text(change: tuple[str, str] | str) -> str:
    if isinstance(change, tuple):
        assert change[0] in MINIMAL
        return MINIMAL.replace(change[0], change[1], 1)
    if change.startswith("[[server]]"):
        return MINIMAL + change
    return change + MINIMAL


@pytest.mark.parametrize("change, path, fragment", BROKEN, ids=[b[1] for b in BROKEN])
def test_error_names_the_key_path(change: tuple[str, str] | str, path: str, fragment: str) -> None:
    err = error_of(_broken_text(change))
    assert err.path == path, str(err)
    assert fragment in err.message, str(err)
    assert str(err) == f"{path}: {err.message}"


def test_backlog_conflict_fixed_by_stating_it_once() -> None:
    text = MINIMAL.replace('["127.0.0.1:8000"]', '[{ address = "127.0.0.1:8000", backlog = 2048 }]')
    text += '[[server]]\nlisten = ["127.0.0.1:8000"]\nserver_name = ["b"]\n'
    config = loads(text)
    assert [s.listen[0].backlog for s in config.servers] == [2048, 2048]


def test_toml_syntax_error_reports_line_and_column() -> None:
    err = error_of("[master]\nworkers = \n")
    assert err.path == ""
    assert err.message.startswith("TOML syntax error at line 2, column 11:"), err.message


def test_no_server_and_unreadable_file(tmp_path: Path) -> None:
    assert error_of("").path == "server"
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "missing.toml"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(str(bad))


def test_unknown_upstream_message() -> None:
    err = error_of(MINIMAL.replace('"http://app"', '"http://ap"'))
    assert str(err) == 'server[0].location[0].proxy_pass: unknown upstream "ap" (known: app)'
    many = "".join(f'[upstream.{n}]\nservers = ["127.0.0.1:1"]\n' for n in ("db", "cache", "auth"))
    err = error_of(many + MINIMAL.replace('"http://app"', '"http://apps"'))
    assert err.message == 'unknown upstream "apps" (known: db, cache, auth, app) (did you mean "app"?)'


# -- values --------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("60s", 60), ("5m", 300), ("1h", 3600), ("500ms", 0.5), ("1h30m", 5400), ("2d", 172800),
    ("1w", 604800), ("30", 30), (30, 30), (1.5, 1.5), ("0", 0), ("1m30s500ms", 90.5),
    ("1.5s", 1.5),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "s", "1x", "30m1h", "1s1s", "-1s", -1, True, "1 h", [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        parse_duration(bad)


@pytest.mark.parametrize("text, size", [
    ("8k", 8192), ("8K", 8192), ("10m", 10 << 20), ("1g", 1 << 30), (1024, 1024), ("1024", 1024), (0, 0),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "1t", "1.5k", "-1", -1, 1.5, True, "k"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        parse_size(bad)


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_format_round_trips_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_duration_format_round_trips_any_float(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_format_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_listen_forms() -> None:
    text = MINIMAL.replace('["127.0.0.1:8000"]', '["[::1]:8000", "*:8080", "9000", "localhost", '
                           '{ address = "127.0.0.2:0", backlog = 1024, default_server = true, reuseport = true }]')
    listens = loads(text).servers[0].listen
    assert listens == (
        Listen("::1", 8000), Listen("0.0.0.0", 8080), Listen("0.0.0.0", 9000),
        Listen("127.0.0.1", 80), Listen("127.0.0.2", 0, 1024, True, True))
    assert listens[0].address == "[::1]:8000"


def test_implicit_upstream_from_address() -> None:
    text = MINIMAL.replace('"http://app"', '"http://127.0.0.1:9000/remote/"')
    config = loads(text)
    loc = config.servers[0].locations[0]
    assert (loc.proxy_pass_upstream, loc.proxy_pass_uri) == ("127.0.0.1:9000", "/remote/")
    assert config.upstreams["127.0.0.1:9000"] == Upstream("127.0.0.1:9000", (("127.0.0.1", 9000),))
    assert loads(dump(config)) == config


def test_location_modifiers() -> None:
    paths = ['"= /exact"', '"=/tight"', '"^~ /static/"', '"~ \\\\.php$"', '"~* \\\\.JPG$"', '"/p"']
    text = MINIMAL.replace('path = "/"', "path = " + paths[0])
    for p in paths[1:]:
        text += f'[[server.location]]\npath = {p}\nproxy_pass = "http://app"\n'
    locs = loads(text).servers[0].locations
    assert [(lc.modifier, lc.pattern) for lc in locs] == [
        ("=", "/exact"), ("=", "/tight"), ("^~", "/static/"), ("~", "\\.php$"), ("~*", "\\.JPG$"), ("", "/p")]


def test_server_names_are_lowercased_and_validated() -> None:
    text = MINIMAL.replace('listen = ["127.0.0.1:8000"]',
                           'listen = ["127.0.0.1:8000"]\nserver_name = ["Example.COM.", "*.Example.org", ".b.net", "mail.*", "~^W\\\\d+"]')
    assert loads(text).servers[0].server_name == (
        "example.com", "*.example.org", ".b.net", "mail.*", "~^W\\d+")


def test_master_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "fp.toml"
    conf.parent.mkdir()
    conf.write_text('[master]\npidfile = "run/fp.pid"\naccess_log = "logs/a.log"\ntunnel_log = "off"\n'
                    'error_log = "stdout"\ncontrol_socket = "/tmp/fp.sock"\n' + MINIMAL)
    m = load(str(conf)).master
    assert m.pidfile == str(tmp_path / "etc" / "run" / "fp.pid")
    assert m.access_log == str(tmp_path / "etc" / "logs" / "a.log")
    assert (m.tunnel_log, m.error_log, m.control_socket) == ("off", "stdout", "/tmp/fp.sock")


def test_close_spread_default_fits_a_short_shutdown_timeout() -> None:
    m = loads('[master]\nshutdown_timeout = "20s"\n' + MINIMAL).master
    assert (m.shutdown_timeout, m.close_spread) == (20.0, 20.0)
    m = loads('[master]\nshutdown_timeout = "20s"\nclose_spread = "5s"\n' + MINIMAL).master
    assert m.close_spread == 5.0


def test_long_control_socket_path_is_refused() -> None:
    err = error_of(f'[master]\npidfile = "/{"d" * 120}/fp.pid"\n' + MINIMAL)
    assert err.path == "master.pidfile" and "UNIX sockets" in err.message


# -- websocket = true and inheritance ---------------------------------------------


def test_websocket_shorthand_expands() -> None:
    text = MINIMAL.replace('proxy_pass = "http://app"', 'proxy_pass = "http://app"\nwebsocket = true')
    config = loads(text)
    loc = config.servers[0].locations[0]
    assert loc.websocket and loc.proxy_http_version == "1.1"
    assert loc.set_header == (("Upgrade", "$http_upgrade"), ("Connection", "$connection_upgrade"))
    assert config.maps["connection_upgrade"] == CONNECTION_UPGRADE
    assert loads(dump(config)) == config


def test_websocket_explicit_headers_and_user_map_win() -> None:
    text = ('[map.connection_upgrade]\nsource = "$http_upgrade"\ndefault = "Upgrade"\n' + MINIMAL).replace(
        'proxy_pass = "http://app"',
        'proxy_pass = "http://app"\nwebsocket = true\nset_header = { connection = "keep-alive", X = "1" }')
    config = loads(text)
    loc = config.servers[0].locations[0]
    assert loc.set_header == (("connection", "keep-alive"), ("X", "1"), ("Upgrade", "$http_upgrade"))
    assert config.maps["connection_upgrade"].default == "Upgrade"


def test_connection_upgrade_map_is_built_in_when_referenced() -> None:
    text = MINIMAL.replace('proxy_pass = "http://app"',
                           'proxy_pass = "http://app"\nset_header = { Connection = "${connection_upgrade}" }')
    assert loads(text).maps["connection_upgrade"] == CONNECTION_UPGRADE


def test_inheritance_http_server_location() -> None:
    text = """
[http]
proxy_read_timeout = "5m"
keepalive_timeout = "30s"
client_max_body_size = "10m"
set_header = { X-Real-IP = "$remote_addr" }
max_header_count = 50

[upstream.app]
servers = ["127.0.0.1:8080"]

[[server]]
listen = ["127.0.0.1:8000"]
proxy_read_timeout = "2m"
keepalive_timeout = "20s"

[[server.location]]
path = "/a/"
proxy_pass = "http://app"

[[server.location]]
path = "/b/"
proxy_pass = "http://app"
proxy_read_timeout = "10s"
keepalive_timeout = "5s"
set_header = { X-B = "b" }

[[server]]
listen = ["127.0.0.1:8001"]

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""
    config = loads(text)
    s0, s1 = config.servers
    a, b = s0.locations
    (c,) = s1.locations
    assert (s0.keepalive_timeout, s0.max_header_count, s1.keepalive_timeout) == (20.0, 50, 30.0)
    assert (a.proxy_read_timeout, a.keepalive_timeout, a.client_max_body_size) == (120.0, 20.0, 10 << 20)
    assert a.set_header == (("X-Real-IP", "$remote_addr"),)
    # a level that sets set_header replaces the inherited table (nginx's rule)
    assert (b.proxy_read_timeout, b.keepalive_timeout, b.set_header) == (10.0, 5.0, (("X-B", "b"),))
    assert (c.proxy_read_timeout, c.keepalive_timeout) == (300.0, 30.0)
    assert loads(dump(config)) == config


# -- dump ------------------------------------------------------------------------------


def test_dump_round_trips_the_sketch(tmp_path: Path) -> None:
    config = loads(sketch_from_design(), source=str(tmp_path / "c.toml"))
    text = dump(config)
    assert 'shutdown_timeout = "10m"' in text
    path = tmp_path / "elsewhere" / "dumped.toml"
    path.parent.mkdir()
    path.write_text(text)
    assert load(str(path)) == config


def test_dump_round_trips_a_full_config() -> None:
    text = """
[master]
workers = 3
close_spread = 0
drain_idle_grace = 0.25
max_worker_rss = "512m"
log_level = "debug"
user = "root"

[map.kind]
source = "$http_accept"
default = "other"
values = { "text/html" = "html", "~*json" = "json", "\\\\~x" = "tilde" }

[upstream.app]
servers = ["127.0.0.1:8080", "[::1]:8081"]
keepalive = 0
keepalive_timeout = "1500ms"

[[server]]
listen = [{ address = "[::]:8443", backlog = 64, reuseport = true, default_server = true }]
server_name = ["a.example", "*.example", "~^x\\\\d$"]
keepalive_timeout = 0

[[server.location]]
path = "= /"
proxy_pass = "http://127.0.0.1:9000/index/"
proxy_http_version = 1.0
proxy_redirect = "off"
upgrade_protocols = []
set_header = { Host = "$proxy_host", X-Kind = "$kind", X-Empty = "" }

[[server.location]]
path = "~* \\\\.(css|js)$"
proxy_pass = "http://app"
tunnel_timeout = 0.001
upgrade_protocols = ["WebSocket", "foo/2"]
buffer_size = 1000
"""
    config = loads(text)
    assert config.master.drain_idle_grace == 0.25
    assert config.servers[0].locations[0].proxy_http_version == "1.0"
    assert config.servers[0].locations[1].upgrade_protocols == ("websocket", "foo/2")
    assert loads(dump(config)) == config
