# Loading and dumping the configuration (layer 1).
#
# Invariants:
# - load/loads either return a fully validated Config or raise ConfigError; they bind,
#   open and resolve nothing except reading the one file (validation before binding).
# - Relative paths in [master] are resolved against the config file's directory (the
#   current directory for loads() of a string), so a Config never depends on the cwd
#   of whoever uses it later.
# - dump(c) is TOML with every effective value written out; loads(dump(c)) == c.
"""forkproxy.toml: load, validate, dump. The value types live in confmodel."""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

import toml

from forkproxy.confbuild import CONNECTION_UPGRADE, build
from forkproxy.confcheck import format_address
from forkproxy.confmodel import (
    Config,
    FrozenMap,
    Listen,
    Location,
    MapConfig,
    MasterConfig,
    Server,
    Upstream,
)
from forkproxy.errors import ConfigError
from forkproxy.units import format_duration, format_size

__all__ = [
    "CONNECTION_UPGRADE", "Config", "ConfigError", "FrozenMap", "Listen", "Location",
    "MapConfig", "MasterConfig", "Server", "Upstream", "dump", "load", "loads",
]

_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def loads(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; `source` names the file it came from."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        at = _AT.search(message)
        if at is not None:
            message = f"line {at.group(1)}, column {at.group(2)}: {message[: at.start()]}"
        raise ConfigError("", f"TOML syntax error at {message}") from None
    if source.startswith("<"):
        base_dir = os.getcwd()
    else:
        base_dir = os.path.dirname(os.path.abspath(source))
    return build(raw, source, base_dir)


def load(path: str) -> Config:
    """Read, parse and validate the config file at `path`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ConfigError("", f"cannot read {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("", f"{path} is not UTF-8 (byte {err.start})") from None
    return loads(text, source=path)


# -- dump --------------------------------------------------------------------------

_MASTER_DURATIONS = ("shutdown_timeout", "close_spread", "drain_idle_grace", "ready_timeout")
_SERVER_DURATIONS = ("client_header_timeout", "keepalive_timeout")
_SERVER_SIZES = ("max_request_line", "max_head_size")
_LOCATION_DURATIONS = (
    "tunnel_timeout", "tunnel_fin_timeout", "client_body_timeout", "send_timeout",
    "keepalive_timeout", "proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout",
)
_LOCATION_SIZES = ("client_max_body_size", "buffer_size")


def _master(m: MasterConfig) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(m, name) for name in m.__slots__}
    for name in _MASTER_DURATIONS:
        out[name] = format_duration(out[name])
    out["max_worker_rss"] = format_size(m.max_worker_rss)
    out["pipe_size"] = format_size(m.pipe_size)
    return out


def _map(m: MapConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"source": m.source, "default": m.default}
    if m.values:
        out["values"] = dict(m.values)
    return out


def _upstream(u: Upstream) -> dict[str, Any]:
    return {
        "servers": [format_address(host, port) for host, port in u.servers],
        "keepalive": u.keepalive,
        "keepalive_timeout": format_duration(u.keepalive_timeout),
        "keepalive_requests": u.keepalive_requests,
    }


def _listen(lst: Listen) -> dict[str, Any]:
    return {
        "address": lst.address,
        "backlog": lst.backlog,
        "default_server": lst.default_server,
        "reuseport": lst.reuseport,
    }


def _location(loc: Location) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": loc.path,
        "proxy_pass": f"http://{loc.proxy_pass_upstream}{loc.proxy_pass_uri or ''}",
    }
    skip = ("path", "modifier", "pattern", "proxy_pass_upstream", "proxy_pass_uri")
    for name in loc.__slots__:
        if name in skip:
            continue
        value = getattr(loc, name)
        if name in _LOCATION_DURATIONS:
            if value is None:
                continue  # tunnel_timeout unset: TOML has no null, absence means unset
            value = format_duration(value)
        elif name in _LOCATION_SIZES:
            value = format_size(value)
        elif name == "set_header":
            if not value:
                continue  # an empty table would vanish from the TOML anyway
            value = dict(value)
        elif name == "upgrade_protocols":
            value = list(value)
        out[name] = value
    return out


def _server(s: Server) -> dict[str, Any]:
    out: dict[str, Any] = {
        "listen": [_listen(lst) for lst in s.listen],
        "server_name": list(s.server_name),
    }
    for name in _SERVER_DURATIONS:
        out[name] = format_duration(getattr(s, name))
    for name in _SERVER_SIZES:
        out[name] = format_size(getattr(s, name))
    out["max_header_count"] = s.max_header_count
    out["location"] = [_location(loc) for loc in s.locations]
    return out


def dump(config: Config) -> str:
    """The effective config as TOML, every default written out; loads() reads it back."""
    sections: list[dict[str, Any]] = [{"master": _master(config.master)}]
    if config.maps:
        sections.append({"map": {name: _map(m) for name, m in config.maps.items()}})
    if config.upstreams:
        sections.append({"upstream": {n: _upstream(u) for n, u in config.upstreams.items()}})
    sections.append({"server": [_server(s) for s in config.servers]})
    header = f"# effective configuration of {config.source}, every default filled in\n\n"
    return header + "\n".join(toml.dumps(section) for section in sections)
