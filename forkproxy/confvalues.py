# Value parsers, key tables and listen addresses of the config (layer 1, pure).
#
# Invariants:
# - A parser takes one TOML value and returns it in canonical form (durations as float
#   seconds, sizes as int bytes) or raises ValueError/TypeError; parse_at wraps that
#   in ConfigError(path, message) so every error names its key path.
# - The key tables are the only list of accepted keys: unknown keys are errors (with a
#   did-you-mean), and [http]/[[server]] accept exactly the inheritable keys.
# - One socket per listen address: explicit backlog/reuseport settings must agree
#   across servers and are shared; at most one default_server per address.
"""Parsers of single values, the accepted keys, and listen-address handling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from forkproxy import confcheck as cc
from forkproxy.confmodel import Listen, Server
from forkproxy.errors import ConfigError
from forkproxy.units import parse_duration, parse_size, show

Parser = Callable[[Any], Any]
LOG_LEVELS = ("debug", "info", "notice", "warn", "warning", "error", "crit")


def integer(low: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"expected an integer >= {low}, got {show(value)}")
        return value
    return parse


def duration(positive: bool) -> Parser:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError(f"expected a duration above zero, got {show(value)}")
        return seconds
    return parse


def size(low: int) -> Parser:
    def parse(value: Any) -> int:
        size = parse_size(value)
        if size < low:
            raise ValueError(f"expected a size of at least {low} bytes, got {show(value)}")
        return size
    return parse


def choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if isinstance(value, float) and f"{value:.1f}" in choices:
            return f"{value:.1f}"  # proxy_http_version = 1.1 written as a TOML float
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(show, choices))}, got {show(value)}")
        return str(value)
    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {show(value)}")
    return value


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {show(value)}")
    return value


def protocols(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of protocol names such as ["websocket"], got {show(value)}')
    out: list[str] = []
    for name in (v.lower() for v in value):
        if not all(cc.is_token(part) for part in name.split("/", 1)):
            raise ValueError(f"invalid protocol token {show(name)}")
        if name.split("/", 1)[0] == "h2c":
            raise ValueError(
                "h2c cannot be tunnelled: an upgrade to h2c through a proxy bypasses its"
                " routing (a known smuggling vector; RFC 9113 deprecates it)"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


SERVER_VALUES: dict[str, Parser] = {
    "client_header_timeout": duration(True),
    "keepalive_timeout": duration(False),
    "max_request_line": size(1),
    "max_head_size": size(1),
    "max_header_count": integer(1),
}
LOCATION_VALUES: dict[str, Parser] = {
    "proxy_http_version": choice("1.0", "1.1"),
    "set_header": string,  # checked by _Builder._set_header (templates need the maps)
    "proxy_redirect": choice("default", "off"),
    "websocket": boolean,
    "upgrade_protocols": protocols,
    "tunnel_timeout": duration(True),
    "tunnel_fin_timeout": duration(True),
    "client_body_timeout": duration(True),
    "send_timeout": duration(True),
    "keepalive_timeout": duration(False),
    "proxy_connect_timeout": duration(True),
    "proxy_send_timeout": duration(True),
    "proxy_read_timeout": duration(True),
    "client_max_body_size": size(0),
    "buffer_size": size(1),
}
INHERITED = {**SERVER_VALUES, **LOCATION_VALUES}
MASTER_VALUES: dict[str, Parser] = {
    "workers": string,  # checked by _workers ("auto" or an integer)
    "shutdown_timeout": duration(True),
    "close_spread": duration(False),
    "max_draining_generations": integer(1),
    "drain_idle_grace": duration(False),
    "ready_timeout": duration(True),
    "pidfile": string,
    "control_socket": string,
    "error_log": string,
    "log_level": choice(*LOG_LEVELS),
    "access_log": string,
    "tunnel_log": string,
    "user": string,
    "group": string,
    "worker_connections": integer(1),
    "worker_rlimit_nofile": integer(0),
    "max_requests": integer(0),
    "max_worker_rss": size(0),
    "splice_pipes": integer(0),
    "splice_idle_pipes": integer(0),
    "pipe_size": size(4096),
}
UPSTREAM_VALUES: dict[str, Parser] = {
    "servers": string,  # checked by _Builder._upstream (a list of addresses)
    "keepalive": integer(0),
    "keepalive_timeout": duration(True),
    "keepalive_requests": integer(1),
}
LISTEN_KEYS = ("address", "backlog", "default_server", "reuseport")
TOP_KEYS = ("master", "map", "upstream", "http", "server")


def check_keys(table: dict[str, Any], allowed: Any, path: str) -> None:
    for name in table:
        if name not in allowed:
            raise ConfigError(cc.key(path, name), f'unknown key "{name}"{cc.did_you_mean(name, allowed)}')


def as_table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a table, got {show(value)}")
    return value


def array_of_tables(value: Any, path: str, example: str) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(path, f"expected an array of tables ({example})")
    return value


def parse_at(path: str, parser: Parser, value: Any) -> Any:
    try:
        return parser(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(path, str(err)) from None


def parse_listens(value: Any, path: str) -> tuple[Listen, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(path, 'expected at least one address (e.g. ["127.0.0.1:8000"])')
    out: list[Listen] = []
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        options: dict[str, Any] = {}
        if isinstance(item, dict):
            check_keys(item, LISTEN_KEYS, where)
            if "address" not in item:
                raise ConfigError(cc.key(where, "address"), 'required (e.g. "127.0.0.1:8000")')
            address = item["address"]
            if "backlog" in item:
                options["backlog"] = parse_at(cc.key(where, "backlog"), integer(1), item["backlog"])
            for flag in ("default_server", "reuseport"):
                if flag in item:
                    options[flag] = parse_at(cc.key(where, flag), boolean, item[flag])
        else:
            address = item
        host, port = parse_at(where, cc.parse_listen_address, address)
        for j, prior in enumerate(out):
            if (prior.host, prior.port) == (host, port):
                raise ConfigError(where, f"duplicate address {prior.address} (also {path}[{j}])")
        out.append(Listen(host=host, port=port, **options))
    return tuple(out)


def reconcile_listens(servers: tuple[Server, ...], tables: list[dict[str, Any]]) -> tuple[Server, ...]:
    """One socket per address: explicit backlog/reuseport must agree and are shared;
    at most one default_server per address."""
    explicit: dict[tuple[str, int], dict[str, tuple[Any, str]]] = {}
    defaults: dict[tuple[str, int], str] = {}
    for server, table in zip(servers, tables):
        raw = table["listen"] if isinstance(table["listen"], list) else [table["listen"]]
        for i, (listen, item) in enumerate(zip(server.listen, raw)):
            where = f"server[{server.index}].listen[{i}]"
            addr = (listen.host, listen.port)
            if listen.default_server:
                if addr in defaults:
                    raise ConfigError(where, f"{listen.address} already has a default_server"
                                      f" ({defaults[addr]})")
                defaults[addr] = where
            for option in ("backlog", "reuseport"):
                if not isinstance(item, dict) or option not in item:
                    continue
                value = getattr(listen, option)
                prior = explicit.setdefault(addr, {}).setdefault(option, (value, where))
                if prior[0] != value:
                    raise ConfigError(cc.key(where, option), f"conflicts with {option} ="
                                      f" {show(prior[0])} for {listen.address} at {prior[1]}")
    if not explicit:
        return servers
    out: list[Server] = []
    for server in servers:
        listens = tuple(
            replace(lst, **{k: v for k, (v, _) in explicit.get((lst.host, lst.port), {}).items()})
            for lst in server.listen
        )
        out.append(replace(server, listen=listens))
    return tuple(out)
