# Syntax of single configuration values (layer 1, pure).
#
# Invariants:
# - Every parser takes one TOML value and either returns it in canonical form or
#   raises ValueError (TypeError for a wrong TOML type) with a message that reads well
#   after "<key path>: ".
# - Canonical forms: IP hosts as ipaddress prints them (no brackets), "*" as 0.0.0.0,
#   "localhost" as 127.0.0.1; server names lowercase (regexes kept as written).
# - No I/O: no name resolution, no filesystem access.
"""Parsers for addresses, server names, location paths and proxy_pass, plus key paths."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable

from forkproxy.errors import BadRequest
from forkproxy.units import show
from forkproxy.uri import encode_path, normalize_path

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PORT = re.compile(r"\d{1,5}")
_LOCATION = re.compile(r"(=|\^~|~\*|~)?\s*(.*)", re.DOTALL)
_DNS_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def key(base: str, name: str) -> str:
    """The path of table key `name` under `base`, quoted when it is not a bare key."""
    shown = name if _BARE_KEY.fullmatch(name) else '"' + name.replace('"', '\\"') + '"'
    return f"{base}.{shown}" if base else shown


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def is_token(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def _host(text: str, allow_any: bool) -> str:
    if text == "localhost":
        return "127.0.0.1"
    if allow_any and text == "*":
        return "0.0.0.0"
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        try:
            return ipaddress.IPv6Address(inner).compressed
        except ValueError:
            raise ValueError(f"invalid IPv6 address {show(inner)}") from None
    try:
        return ipaddress.IPv4Address(text).compressed
    except ValueError:
        pass
    raise ValueError(
        f'expected an IP address or "localhost" (names are not resolved), got {show(text)}'
    )


def _split_port(text: str) -> tuple[str, str] | None:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest == "":
            return text, ""
        if not rest.startswith(":"):
            return None
        return text[: end + 1], rest[1:]
    if text.count(":") > 1:
        return None  # an IPv6 address needs brackets to carry a port
    host, sep, port = text.partition(":")
    return host, port if sep else ""


def _port(text: str, low: int) -> int:
    if not _PORT.fullmatch(text) or not low <= int(text) <= 65535:
        raise ValueError(f"invalid port {show(text)} (expected {low}..65535)")
    return int(text)


def parse_listen_address(value: object) -> tuple[str, int]:
    """nginx `listen`: "host:port", "[v6]:port", "*:port", "port" or "host" (port 80)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'expected "host:port", got {show(value)}')
    if _PORT.fullmatch(value):
        return "0.0.0.0", _port(value, 0)
    split = _split_port(value)
    if split is None or not split[0]:
        raise ValueError(f'expected "host:port" (IPv6 as "[::1]:8000"), got {show(value)}')
    host, port = split
    return _host(host, allow_any=True), _port(port, 0) if port else 80


def parse_server_address(value: object) -> tuple[str, int]:
    """An upstream server: "host:port" with an IP address or localhost."""
    if not isinstance(value, str):
        raise TypeError(f'expected "host:port", got {show(value)}')
    split = _split_port(value)
    if split is None or not split[0] or not split[1]:
        raise ValueError(f'expected "host:port", got {show(value)}')
    return _host(split[0], allow_any=False), _port(split[1], 1)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_location_path(value: object) -> tuple[str, str]:
    """(modifier, pattern) of nginx location syntax; prefixes must be normalised paths."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'expected a location such as "/app/", "= /", "~ \\.php$", got {show(value)}')
    match = _LOCATION.fullmatch(value.strip())
    assert match is not None  # the pattern accepts any string
    modifier, pattern = match.group(1) or "", match.group(2)
    if not pattern:
        raise ValueError(f"missing path after {show(modifier)}")
    if modifier in ("~", "~*"):
        return modifier, pattern
    if pattern.startswith("@"):
        raise ValueError("named locations (@name) are not supported")
    if not pattern.startswith("/"):
        raise ValueError(f"a location path must start with '/', got {show(pattern)}")
    raw = pattern.encode()
    try:
        canonical = normalize_path(encode_path(raw))[0]
    except BadRequest as err:
        raise ValueError(f"invalid location path {show(pattern)}: {err}") from None
    if canonical != raw or b"?" in raw:
        raise ValueError(
            f"location path {show(pattern)} can never match a normalised request path;"
            f" write {show(canonical.decode())}"
        )
    return modifier, pattern


def parse_server_name(value: object) -> str:
    """A server_name entry: exact, "*.example.com", ".example.com", "mail.*", "~regex"."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {show(value)}")
    if value.startswith("~"):
        if len(value) == 1:
            raise ValueError("empty regex")
        return value
    name = value.lower().rstrip(".") if value not in ("", ".") else value
    if name == "":
        return name
    core = name
    if core.startswith("*."):
        core = core[2:]
    elif core.startswith("."):
        core = core[1:]
    elif core.endswith(".*"):
        core = core[:-2]
    if "*" in core or not _DNS_NAME.fullmatch(core):
        raise ValueError(
            f"invalid server name {show(value)} (a wildcard is only allowed as"
            ' "*.example.com", ".example.com" or "www.example.*")'
        )
    return name


def parse_proxy_pass(value: object) -> tuple[str, str | None]:
    """(authority, URI part or None) of `proxy_pass = "http://name[:port][/uri]"`."""
    if not isinstance(value, str):
        raise TypeError(f'expected "http://upstream[/uri]", got {show(value)}')
    if value.lower().startswith("https://"):
        raise ValueError("https upstreams are not supported (forkproxy speaks plain HTTP upstream)")
    if not value.lower().startswith("http://"):
        raise ValueError(f'expected "http://upstream[/uri]", got {show(value)}')
    rest = value[7:]
    slash = rest.find("/")
    authority, uri = (rest, None) if slash < 0 else (rest[:slash], rest[slash:])
    if not authority or "@" in authority:
        raise ValueError(f"missing or invalid upstream name in {show(value)}")
    if "$" in value:
        raise ValueError("variables in proxy_pass are not supported")
    if uri is not None and (encode_path(uri.encode()) != uri.encode() or "?" in uri or "#" in uri):
        raise ValueError(f"invalid URI part {show(uri)} (write other characters percent-encoded)")
    return authority, uri


def implicit_upstream(authority: str) -> tuple[str, tuple[str, int]] | None:
    """(name, server) when `authority` is an address literal (port 80 if absent)."""
    split = _split_port(authority)
    if split is None or not split[0]:
        return None
    try:
        host = _host(split[0], allow_any=False)
        port = _port(split[1], 1) if split[1] else 80
    except ValueError:
        return None
    return authority, (host, port)
