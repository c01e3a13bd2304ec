"""The master's listening sockets, keyed by the address the config names (layer 5).

Invariants:
- One socket per distinct configured address (host, port), bound once and kept for as
  long as any living generation's config names it, so a reload never closes or re-binds
  a socket that clients are connecting to. A port-0 address keeps its socket (and the
  port the OS picked) across reloads, because the key is the configured address.
- An address is closed only by `prune`, which the master calls when a generation is gone
  and no config still in use names that address.
- After USR2 the new master adopts the sockets it inherited (fds named in the
  environment) instead of binding, and closes the inherited ones its config does not name.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable, MutableMapping
from typing import Any

from .netio import Listener, bind_listener

log = logging.getLogger("forkproxy.master")

Address = tuple[str, int]
ENV_FDS = "FORKPROXY_LISTEN_FDS"


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wanted(config: Any) -> dict[Address, tuple[int, bool]]:
    """Every distinct listen address of a config, with its backlog and reuseport flag."""
    out: dict[Address, tuple[int, bool]] = {}
    for server in config.servers:
        for ls in server.listen:
            key = (ls.host, int(ls.port))
            backlog, reuse = out.get(key, (0, False))
            out[key] = (max(backlog, int(ls.backlog)), reuse or bool(ls.reuseport))
    return out


class ListenerSet:
    __slots__ = ("_backlog", "_by_addr", "_inherited")

    def __init__(self) -> None:
        self._by_addr: dict[Address, Listener] = {}
        self._backlog: dict[Address, int] = {}
        self._inherited: set[Address] = set()

    def adopt_from_env(self, environ: MutableMapping[str, str]) -> None:
        """Take the sockets a previous master passed in the environment (USR2)."""
        text = environ.pop(ENV_FDS, "")
        if not text:
            return
        for item in json.loads(text):
            sock = socket.socket(fileno=int(item["fd"]))
            sock.set_inheritable(False)
            sock.setblocking(False)
            key = (str(item["host"]), int(item["port"]))
            self._by_addr[key] = Listener(sock, key)
            self._inherited.add(key)

    def export(self) -> tuple[str, list[int]]:
        """The environment value and fds that hand every socket to a new master."""
        items = [{"host": h, "port": p, "fd": ls.sock.fileno()} for (h, p), ls in self._by_addr.items()]
        return json.dumps(items), [ls.sock.fileno() for ls in self._by_addr.values()]

    def ensure(self, config: Any) -> list[Listener]:
        """Bind the addresses `config` names that are not bound yet; return its listeners.

        On failure every socket bound by this call is closed again and OSError is raised
        with the address in its message; sockets bound before are untouched.
        """
        fresh: list[Address] = []
        try:
            for key, (backlog, reuse) in wanted(config).items():
                have = self._by_addr.get(key)
                if have is None:
                    try:
                        sock = bind_listener(key[0], key[1], backlog, reuse)
                    except OSError as e:
                        raise OSError(e.errno, f"cannot listen on {_fmt(*key)}: {e.strerror or e}") from e
                    self._by_addr[key] = Listener(sock, key)
                    self._backlog[key] = backlog
                    fresh.append(key)
                    log.info("listening on %s", _fmt(*self._by_addr[key].bound))
                elif key in self._inherited:
                    self._inherited.discard(key)
                    have.sock.listen(backlog)
                    self._backlog[key] = backlog
                    log.info("listening on %s (inherited)", _fmt(*have.bound))
                elif self._backlog.get(key) != backlog:
                    have.sock.listen(backlog)  # Linux applies a new backlog to a listening socket
                    self._backlog[key] = backlog
        except BaseException:
            for key in fresh:
                self._by_addr.pop(key).sock.close()
                self._backlog.pop(key, None)
            raise
        return self.for_config(config)

    def for_config(self, config: Any) -> list[Listener]:
        return [self._by_addr[key] for key in wanted(config) if key in self._by_addr]

    def prune(self, configs_in_use: Iterable[Any]) -> None:
        """Close every socket no config in use names (and inherited ones nobody took)."""
        keep: set[Address] = set()
        for config in configs_in_use:
            keep.update(wanted(config))
        for key in [k for k in self._by_addr if k not in keep]:
            listener = self._by_addr.pop(key)
            self._backlog.pop(key, None)
            self._inherited.discard(key)
            log.info("closing listener %s (no longer configured)", _fmt(*listener.bound))
            listener.sock.close()

    def all(self) -> list[Listener]:
        return list(self._by_addr.values())

    def close_all(self) -> None:
        for listener in self._by_addr.values():
            listener.sock.close()
        self._by_addr.clear()
        self._backlog.clear()


def pass_to_child(fds: Iterable[int]) -> None:
    """In a forked child about to exec: let these fds survive execve."""
    for fd in fds:
        os.set_inheritable(fd, True)
