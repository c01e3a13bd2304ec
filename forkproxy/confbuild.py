# From the TOML document to a validated Config (layer 1).
#
# Invariants:
# - Every value is parsed and checked where it is written, so an error names the key
#   path the user wrote (`http.set_header.X`, not the location that inherited it).
# - Inheritance is nginx's: [http] -> [[server]] -> [[server.location]]; a level that
#   sets a key replaces the inherited value whole (set_header tables are not merged).
# - Nothing is bound, opened or resolved; the only lookups are the user and group
#   names in the system's databases (as nginx does at config load).
# - The first problem found raises ConfigError(path, message); no partial Config leaks.
"""Build a Config from the dict tomllib returns, validating everything."""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Callable, Collection
from typing import Any

from forkproxy import confcheck as cc
from forkproxy.confmodel import (
    Config,
    FrozenMap,
    Location,
    MapConfig,
    MasterConfig,
    Server,
    Upstream,
)
from forkproxy.confvalues import (
    INHERITED,
    LOCATION_VALUES,
    MASTER_VALUES,
    SERVER_VALUES,
    TOP_KEYS,
    UPSTREAM_VALUES,
    Parser,
    array_of_tables,
    as_table,
    check_keys,
    parse_at,
    parse_listens,
    reconcile_listens,
    string,
)
from forkproxy.errors import ConfigError
from forkproxy.template import (
    Compiler,
    compile_regex,
    is_known_variable,
    map_key_regex,
    parse_template,
)
from forkproxy.units import show

CONNECTION_UPGRADE = MapConfig("connection_upgrade", "$http_upgrade", "upgrade", (("", "close"),))
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_.:\[\]-]+")
# Framing belongs to the proxy; letting a template set these would desynchronise it.
_FORBIDDEN_SET = frozenset({"content-length", "transfer-encoding"})


class _Builder:
    def __init__(self, source: str, base_dir: str) -> None:
        self.source = source
        self.base_dir = base_dir
        self.maps: dict[str, MapConfig] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.need_connection_upgrade = False

    def build(self, raw: dict[str, Any]) -> Config:
        check_keys(raw, TOP_KEYS, "")
        master = self._master(as_table(raw.get("master", {}), "master"))
        for name, table in as_table(raw.get("map", {}), "map").items():
            self._map(name, as_table(table, cc.key("map", name)))
        for name, table in as_table(raw.get("upstream", {}), "upstream").items():
            self._upstream(name, as_table(table, cc.key("upstream", name)))
        http_table = as_table(raw.get("http", {}), "http")
        check_keys(http_table, INHERITED, "http")
        http = self._values(http_table, INHERITED, "http")
        if "server" not in raw:
            raise ConfigError("server", "at least one [[server]] is required")
        tables = array_of_tables(raw["server"], "server", "[[server]]")
        servers = tuple(self._server(i, t, http) for i, t in enumerate(tables))
        servers = reconcile_listens(servers, tables)
        if self.need_connection_upgrade and "connection_upgrade" not in self.maps:
            self.maps["connection_upgrade"] = CONNECTION_UPGRADE
        self._compile_maps()
        return Config(
            master=master,
            maps=FrozenMap(self.maps.items()),
            upstreams=FrozenMap(self.upstreams.items()),
            servers=servers,
            source=self.source,
        )

    # -- master --------------------------------------------------------------------

    def _master(self, table: dict[str, Any]) -> MasterConfig:
        check_keys(table, MASTER_VALUES, "master")
        values = self._values(table, MASTER_VALUES, "master", skip=("workers",))
        values["workers"] = _workers(table.get("workers", "auto"))
        if not values.setdefault("pidfile", "forkproxy.pid"):
            raise ConfigError("master.pidfile", "must not be empty")
        for name in ("pidfile", "error_log", "access_log", "tunnel_log", "control_socket"):
            if name in values:
                values[name] = self._path(values[name])
        shutdown = values.get("shutdown_timeout", 600.0)
        if "close_spread" not in values:
            values["close_spread"] = min(60.0, shutdown)  # the window fits in the timeout
        elif values["close_spread"] > shutdown:
            raise ConfigError("master.close_spread", f"must not exceed shutdown_timeout"
                              f" ({values['close_spread']:g}s > {shutdown:g}s): the final"
                              " window ends at shutdown_timeout")
        master = MasterConfig(**values)
        control = master.control_socket or master.pidfile + ".sock"
        if len(os.fsencode(control)) > 100:
            where = "master.control_socket" if master.control_socket else "master.pidfile"
            raise ConfigError(where, f"control socket path {show(control)} is longer than 100 bytes"
                              " (UNIX sockets allow 107, and .oldbin is appended on upgrade)")
        if master.user:
            _lookup("master.user", master.user, pwd.getpwnam)
        if master.group:
            _lookup("master.group", master.group, grp.getgrnam)
        return master

    def _path(self, value: str) -> str:
        if value in ("", "off", "stderr", "stdout"):
            return value
        return os.path.normpath(os.path.join(self.base_dir, value))

    # -- maps and upstreams --------------------------------------------------------

    def _map(self, name: str, table: dict[str, Any]) -> None:
        path = cc.key("map", name)
        check_keys(table, ("source", "default", "values"), path)
        if not _NAME.fullmatch(name) or is_known_variable(name, {}):
            raise ConfigError(path, f"invalid map name {show(name)} (letters, digits and _, not"
                              " a built-in variable or http_*)")
        if "source" not in table:
            raise ConfigError(cc.key(path, "source"), 'required (e.g. "$http_upgrade")')
        source = parse_at(cc.key(path, "source"), string, table["source"])
        default = parse_at(cc.key(path, "default"), string, table.get("default", ""))
        values: list[tuple[str, str]] = []
        for key, value in as_table(table.get("values", {}), cc.key(path, "values")).items():
            where = cc.key(cc.key(path, "values"), key)
            try:
                map_key_regex(key)
            except re.error as err:
                raise ConfigError(where, f"invalid regex: {err}") from None
            values.append((key, parse_at(where, string, value)))
        self.maps[name] = MapConfig(name, source, default, tuple(values))

    def _compile_maps(self) -> None:
        for name, config in self.maps.items():
            path = cc.key("map", name)
            self._template(cc.key(path, "source"), config.source, in_route=False)
            self._template(cc.key(path, "default"), config.default, in_route=False)
            for key, value in config.values:
                self._template(cc.key(cc.key(path, "values"), key), value, in_route=False)
        compiler = Compiler(self.maps)
        for name in self.maps:
            try:
                compiler.template("$" + name)
            except ValueError as err:
                raise ConfigError(cc.key("map", name), str(err)) from None

    def _upstream(self, name: str, table: dict[str, Any]) -> None:
        path = cc.key("upstream", name)
        check_keys(table, UPSTREAM_VALUES, path)
        if not _UPSTREAM_NAME.fullmatch(name):
            raise ConfigError(path, f"invalid upstream name {show(name)}")
        servers = table.get("servers")
        where = cc.key(path, "servers")
        if not isinstance(servers, list) or not servers:
            raise ConfigError(where, 'expected a non-empty list of "host:port"')
        parsed = tuple(
            parse_at(f"{where}[{i}]", cc.parse_server_address, s) for i, s in enumerate(servers)
        )
        values = self._values(table, UPSTREAM_VALUES, path, skip=("servers",))
        self.upstreams[name] = Upstream(name=name, servers=parsed, **values)

    # -- servers and locations -----------------------------------------------------

    def _values(self, table: dict[str, Any], parsers: dict[str, Parser], path: str,
                skip: Collection[str] = ()) -> dict[str, Any]:
        """Parsed values of the keys of `table` that `parsers` knows, minus `skip`."""
        out: dict[str, Any] = {}
        for name, value in table.items():
            if name not in parsers or name in skip:
                continue
            if name == "set_header":
                out[name] = self._set_header(cc.key(path, name), value)
            else:
                out[name] = parse_at(cc.key(path, name), parsers[name], value)
        return out

    def _set_header(self, path: str, value: Any) -> tuple[tuple[str, str], ...]:
        table = as_table(value, path)
        seen: dict[str, str] = {}
        for name, template in table.items():
            where = cc.key(path, name)
            if not cc.is_token(name):
                raise ConfigError(where, f"invalid header name {show(name)} (must be a token)")
            if name.lower() in _FORBIDDEN_SET:
                raise ConfigError(where, f"{name} cannot be set: the proxy owns message framing")
            if name.lower() in seen:
                raise ConfigError(where, f"header set twice (also as {show(seen[name.lower()])})")
            seen[name.lower()] = name
            self._template(where, parse_at(where, string, template), in_route=True)
        return tuple(table.items())

    def _template(self, path: str, text: str, in_route: bool) -> None:
        try:
            parts = parse_template(text)
        except ValueError as err:
            raise ConfigError(path, str(err)) from None
        if any(c in text for c in "\r\n\0"):
            raise ConfigError(path, "control characters (CR, LF, NUL) are not allowed")
        for is_var, name in parts:
            if not is_var:
                continue
            if name == "connection_upgrade" and name not in self.maps:
                self.need_connection_upgrade = True
            elif not is_known_variable(name, self.maps, in_route):
                known = ["host", "remote_addr", "http_upgrade", "request_uri", *self.maps]
                raise ConfigError(path, f'unknown variable "${name}"{cc.did_you_mean(name, known)}')

    def _server(self, index: int, table: dict[str, Any], http: dict[str, Any]) -> Server:
        path = f"server[{index}]"
        check_keys(table, ("listen", "server_name", "location", *INHERITED), path)
        own = self._values(table, INHERITED, path)
        inherited = {**http, **own}
        if "listen" not in table:
            raise ConfigError(cc.key(path, "listen"), 'required (e.g. ["127.0.0.1:8000"])')
        listens = parse_listens(table["listen"], cc.key(path, "listen"))
        names = table.get("server_name", [""])
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names:
            raise ConfigError(cc.key(path, "server_name"), "expected a list of names")
        server_name = tuple(
            parse_at(f"{path}.server_name[{i}]", cc.parse_server_name, n) for i, n in enumerate(names)
        )
        for i, name in enumerate(server_name):
            if name.startswith("~"):
                _regex(f"{path}.server_name[{i}]", name[1:], ignore_case=False)
        tables = array_of_tables(table.get("location", []), cc.key(path, "location"),
                                  "[[server.location]]")
        locations: list[Location] = []
        seen: dict[tuple[str, str], int] = {}
        for i, loc_table in enumerate(tables):
            loc = self._location(f"{path}.location[{i}]", loc_table, inherited)
            kind = ("prefix" if loc.modifier in ("", "^~") else loc.modifier, loc.pattern)
            if kind in seen:
                raise ConfigError(f"{path}.location[{i}].path",
                                  f'duplicate location "{loc.pattern}" (also location[{seen[kind]}])')
            seen[kind] = i
            locations.append(loc)
        server_values = {k: v for k, v in inherited.items() if k in SERVER_VALUES}
        return Server(index=index, listen=listens, server_name=server_name,
                      locations=tuple(locations), **server_values)

    def _location(self, path: str, table: dict[str, Any], inherited: dict[str, Any]) -> Location:
        check_keys(table, ("path", "proxy_pass", *LOCATION_VALUES), path)
        values = {k: v for k, v in inherited.items() if k in LOCATION_VALUES}
        values.update(self._values(table, LOCATION_VALUES, path))
        if "path" not in table:
            raise ConfigError(cc.key(path, "path"), 'required (e.g. "/" or "~ ^/api/")')
        written = parse_at(cc.key(path, "path"), string, table["path"]).strip()
        modifier, pattern = parse_at(cc.key(path, "path"), cc.parse_location_path, written)
        if modifier in ("~", "~*"):
            _regex(cc.key(path, "path"), pattern, ignore_case=modifier == "~*")
        where = cc.key(path, "proxy_pass")
        if "proxy_pass" not in table:
            raise ConfigError(where, 'required (e.g. "http://app")')
        authority, uri = parse_at(where, cc.parse_proxy_pass, table["proxy_pass"])
        if uri is not None and modifier in ("~", "~*"):
            raise ConfigError(where, f"a URI part ({show(uri)}) is not allowed in a regex location:"
                              " there is no matched prefix to replace")
        values["proxy_pass_upstream"] = self._resolve_upstream(where, authority)
        if values.get("websocket"):
            values["set_header"] = self._websocket(path, values)
        return Location(path=written, modifier=modifier, pattern=pattern,
                        proxy_pass_uri=uri, **values)

    def _websocket(self, path: str, values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        if values.get("proxy_http_version", "1.1") != "1.1":
            raise ConfigError(cc.key(path, "websocket"), "websocket = true needs"
                              ' proxy_http_version = "1.1" (an upgrade is HTTP/1.1 only)')
        headers: tuple[tuple[str, str], ...] = values.get("set_header", ())
        present = {name.lower() for name, _ in headers}
        extra = [(n, t) for n, t in (("Upgrade", "$http_upgrade"),
                                     ("Connection", "$connection_upgrade"))
                 if n.lower() not in present]
        if any(n == "Connection" for n, _ in extra) and "connection_upgrade" not in self.maps:
            self.need_connection_upgrade = True
        return headers + tuple(extra)

    def _resolve_upstream(self, path: str, authority: str) -> str:
        if authority in self.upstreams:
            return authority
        implicit = cc.implicit_upstream(authority)
        if implicit is None:
            known = ", ".join(n for n in self.upstreams) or "none"
            hint = cc.did_you_mean(authority, self.upstreams) if len(self.upstreams) > 3 else ""
            raise ConfigError(path, f'unknown upstream "{authority}" (known: {known}){hint}')
        name, server = implicit
        self.upstreams[name] = Upstream(name=name, servers=(server,))
        return name


def _workers(value: Any) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("master.workers", 'expected a positive integer or "auto"')
    return value


def _lookup(path: str, name: str, by_name: Callable[[str], Any]) -> None:
    try:
        by_name(name)
    except KeyError:
        raise ConfigError(path, f"no such {path.split('.')[-1]} {show(name)} on this system") from None


def _regex(path: str, pattern: str, ignore_case: bool) -> None:
    try:
        compile_regex(pattern, ignore_case)
    except re.error as err:
        raise ConfigError(path, f"invalid regex {show(pattern)}: {err}") from None


def build(raw: dict[str, Any], source: str, base_dir: str) -> Config:
    """Validate `raw` (as tomllib returns it) into a Config, or raise ConfigError."""
    return _Builder(source, base_dir).build(raw)
