"""The command line of DESIGN.md (layer 5): run, check, control verbs, status.

    forkproxy [-c FILE]                                  run in the foreground
    forkproxy check -c FILE [--dump]                     validate (nginx -t / -T)
    forkproxy reload|stop|quit|reopen|upgrade [-c FILE]  ask the running master
    forkproxy status [-c FILE] [--json]                  processes, generations, counters

Invariants: every command exits 0 on success and 1 with one message on stderr
otherwise; control verbs print the master's own answer. Nothing is bound, written or
forked before the config validated. The default config is $FORKPROXY_CONFIG, else
./forkproxy.toml.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

from . import config as configmod
from . import control, locate, pidfile, status
from .errors import ConfigError, ForkproxyError

VERB_SIGNALS = {"reload": signal.SIGHUP, "stop": signal.SIGTERM, "quit": signal.SIGQUIT,
                "reopen": signal.SIGUSR1, "upgrade": signal.SIGUSR2}
VERB_HELP = {"reload": "re-read the config; exit 1 with the reason if it fails",
             "stop": "fast stop (SIGTERM); waits until the master is gone",
             "quit": "graceful stop (SIGQUIT): workers finish what they serve",
             "reopen": "reopen every log file (SIGUSR1)",
             "upgrade": "start a new master from the current code (SIGUSR2)"}


def _parser() -> argparse.ArgumentParser:
    default = os.environ.get("FORKPROXY_CONFIG", "forkproxy.toml")
    p = argparse.ArgumentParser(prog="forkproxy", description="A prefork reverse proxy for "
                                "HTTP/1.1 and WebSocket.")
    p.add_argument("-c", "--config", default=default, help=f"config file (default: {default})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", help="validate the config and exit 0 or 1 (nginx -t)")
    c.add_argument("-c", "--config", default=argparse.SUPPRESS)
    c.add_argument("--dump", action="store_true", help="print the effective config as TOML")
    for verb, text in VERB_HELP.items():
        v = sub.add_parser(verb, help=text)
        v.add_argument("-c", "--config", default=argparse.SUPPRESS)
        v.add_argument("--timeout", type=float, default=120.0,
                       help="seconds to wait for the master's answer (default 120)")
    s = sub.add_parser("status", help="every process with its counters")
    s.add_argument("-c", "--config", default=argparse.SUPPRESS)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = os.path.abspath(args.config)
    if args.command is None:
        return _run(path)
    if args.command == "check":
        return _check(path, args.dump)
    if args.command == "status":
        return status.main(locate.paths(path).pidfile, args.json)
    return _verb(path, args.command, args.timeout)


def _err(message: str) -> int:
    print(f"forkproxy: {message}", file=sys.stderr)
    return 1


def _check(path: str, dump: bool) -> int:
    try:
        cfg = configmod.load(path)
    except ConfigError as e:
        return _err(f"{e}\nforkproxy: configuration file {path} test failed")
    if dump:
        sys.stdout.write(configmod.dump(cfg))
    print(f"forkproxy: the configuration file {path} syntax is ok",
          file=sys.stderr if dump else sys.stdout)
    return 0


def _run(path: str) -> int:
    from . import log as logmod
    from .master import Master

    try:
        cfg = configmod.load(path)
    except ConfigError as e:
        return _err(str(e))
    m = cfg.master
    try:
        logmod.setup_error_log(m.error_log, m.log_level, "master")
    except OSError as e:
        return _err(f"cannot open error_log {m.error_log}: {e.strerror or e}")
    try:
        master = Master(path, cfg)
    except (ForkproxyError, OSError) as e:
        return _err(str(e))
    return master.run()


def _verb(path: str, verb: str, timeout: float) -> int:
    where = locate.paths(path)
    master = pidfile.running_master(where.pidfile)
    try:
        answer = control.request(where.control, verb, timeout)
    except control.ControlError as e:
        return _by_signal(where, verb, str(e))
    message = str(answer.get("message", ""))
    if not answer.get("ok"):
        return _err(message)
    print(f"forkproxy: {message}")
    if verb == "stop" and master is not None:
        return _wait_gone(master, timeout)
    return 0


def _by_signal(where: locate.Paths, verb: str, why: str) -> int:
    """No control socket: fall back to nginx's way (a signal to the pidfile's master)."""
    pid = pidfile.running_master(where.pidfile)
    if pid is None:
        return _err(f"{why}; and no master runs with pidfile {where.pidfile}")
    os.kill(pid, VERB_SIGNALS[verb])
    print(f"forkproxy: {why}; sent {VERB_SIGNALS[verb].name} to master pid {pid} instead "
          "(its answer is in the error log)")
    return 0


def _wait_gone(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while pidfile.is_master(pid):
        if time.monotonic() >= deadline:
            return _err(f"master pid {pid} still running after {timeout:g}s")
        time.sleep(0.05)
    return 0
