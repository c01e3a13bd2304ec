# The validated configuration as values (layer 1, pure data).
#
# Invariants:
# - Every class is a frozen, slotted dataclass; a Config is hashable and compares by
#   value (FrozenMap included), so a reload can tell "unchanged" with ==.
# - Every field holds its effective value: defaults filled in, [http] -> server ->
#   location inheritance already applied, durations as float seconds, sizes as int
#   bytes, paths absolute. Nothing downstream looks anything up again.
# - Only confbuild creates these from TOML; tests and tools may build them directly.
"""Frozen dataclasses of a forkproxy configuration (re-exported by forkproxy.config)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

V = TypeVar("V")


class FrozenMap(Mapping[str, V]):
    """A read-only, hashable mapping that keeps insertion order."""

    __slots__ = ("_dict", "_items")

    _items: tuple[tuple[str, V], ...]
    _dict: dict[str, V]

    def __init__(self, items: Iterable[tuple[str, V]] = ()) -> None:
        pairs = tuple(items)
        object.__setattr__(self, "_items", pairs)
        object.__setattr__(self, "_dict", dict(pairs))

    def __getitem__(self, key: str) -> V:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._dict == other._dict
        if isinstance(other, Mapping):
            return self._dict == dict(other.items())
        return NotImplemented

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("FrozenMap is read-only")

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._items)!r})"


@dataclass(frozen=True, slots=True)
class MasterConfig:
    workers: int
    shutdown_timeout: float = 600.0
    close_spread: float = 60.0
    max_draining_generations: int = 4
    drain_idle_grace: float = 1.0
    ready_timeout: float = 10.0
    pidfile: str = "forkproxy.pid"
    control_socket: str = ""
    error_log: str = "stderr"
    log_level: str = "info"
    access_log: str = "off"
    tunnel_log: str = "stderr"
    user: str = ""
    group: str = ""
    worker_connections: int = 1024
    worker_rlimit_nofile: int = 0
    max_requests: int = 0
    max_worker_rss: int = 0
    splice_pipes: int = 1024
    splice_idle_pipes: int = 16
    pipe_size: int = 1 << 20


@dataclass(frozen=True, slots=True)
class MapConfig:
    """nginx `map source $name { key value; ... default value; }`."""

    name: str
    source: str
    default: str = ""
    values: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    servers: tuple[tuple[str, int], ...]
    keepalive: int = 32
    keepalive_timeout: float = 4.0
    keepalive_requests: int = 1000


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int
    backlog: int = 511
    default_server: bool = False
    reuseport: bool = False

    @property
    def address(self) -> str:
        """The address as the config writes it: "host:port", IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Location:
    path: str
    modifier: str
    pattern: str
    proxy_pass_upstream: str
    proxy_pass_uri: str | None = None
    proxy_http_version: str = "1.1"
    set_header: tuple[tuple[str, str], ...] = ()
    proxy_redirect: str = "default"
    websocket: bool = False
    upgrade_protocols: tuple[str, ...] = ("websocket",)
    tunnel_timeout: float | None = None
    tunnel_fin_timeout: float = 30.0
    client_body_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    proxy_connect_timeout: float = 60.0
    proxy_send_timeout: float = 60.0
    proxy_read_timeout: float = 60.0
    client_max_body_size: int = 0
    buffer_size: int = 65536


@dataclass(frozen=True, slots=True)
class Server:
    index: int
    listen: tuple[Listen, ...]
    server_name: tuple[str, ...] = ("",)
    locations: tuple[Location, ...] = ()
    client_header_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_request_line: int = 8192
    max_head_size: int = 32768
    max_header_count: int = 100


@dataclass(frozen=True, slots=True)
class Config:
    master: MasterConfig
    maps: FrozenMap[MapConfig] = field(default_factory=FrozenMap)
    upstreams: FrozenMap[Upstream] = field(default_factory=FrozenMap)
    servers: tuple[Server, ...] = ()
    # Where it was read from; provenance only, so it takes no part in ==.
    source: str = field(default="<string>", compare=False)

    def listen_addresses(self) -> tuple[Listen, ...]:
        """One Listen per distinct (host, port), in config order: the sockets to bind."""
        seen: dict[tuple[str, int], Listen] = {}
        for server in self.servers:
            for listen in server.listen:
                seen.setdefault((listen.host, listen.port), listen)
        return tuple(seen.values())


# Values a server or location inherits when neither it nor [http] sets them.
SERVER_DEFAULTS = Server(index=0, listen=())
LOCATION_DEFAULTS = Location(path="/", modifier="", pattern="/", proxy_pass_upstream="")
MASTER_DEFAULTS = MasterConfig(workers=1)
UPSTREAM_DEFAULTS = Upstream(name="", servers=())
LISTEN_DEFAULTS = Listen(host="", port=0)
