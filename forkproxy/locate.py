"""Finding a running master from a config file path (layer 5, used by the CLI).

Invariants:
- A valid config names the pidfile and control socket exactly (`config.load`).
- A config that does not validate must still let `forkproxy reload` reach the master
  and report its verdict, so the paths are then read from the raw TOML with the same
  defaults and the same rule (relative to the config file's directory); a file that is
  not even TOML falls back to the default names next to it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass

from . import config as configmod
from . import pidfile
from .errors import ConfigError

DEFAULT_PIDFILE = "forkproxy.pid"


@dataclass(frozen=True, slots=True)
class Paths:
    pidfile: str
    control: str
    config_error: str  # "" when the config is valid

    def oldbin(self) -> Paths:
        return Paths(self.pidfile + pidfile.OLDBIN, self.control + pidfile.OLDBIN, self.config_error)


def paths(config_path: str) -> Paths:
    try:
        cfg = configmod.load(config_path)
    except ConfigError as e:
        return _lenient(config_path, str(e))
    m = cfg.master
    return Paths(m.pidfile, pidfile.control_path(m.pidfile, m.control_socket), "")


def _lenient(config_path: str, error: str) -> Paths:
    base = os.path.dirname(os.path.abspath(config_path))
    master: dict[str, object] = {}
    try:
        with open(config_path, "rb") as f:
            raw = tomllib.load(f)
        table = raw.get("master", {})
        if isinstance(table, dict):
            master = table
    except (OSError, tomllib.TOMLDecodeError):
        pass
    pid = master.get("pidfile") or DEFAULT_PIDFILE
    ctl = master.get("control_socket") or ""
    pid = os.path.join(base, str(pid))
    ctl = os.path.join(base, str(ctl)) if ctl else ""
    return Paths(pid, pidfile.control_path(pid, ctl), error)
