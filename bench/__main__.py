"""`python -m bench <subcommand> [args]`: dispatch to the module that implements it.

Each entry maps a subcommand to a module with a `main(argv) -> int` function.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "backend": ("bench.backend", "HTTP/1.1 + WebSocket echo backend"),
    "demo": ("bench.demo", "what `make run` does: backend + forkproxy + tips"),
    "run": ("bench.run", "forkproxy vs nginx vs direct: the benchmark table (--quick for CI)"),
    "growth": ("bench.growth", "forkproxy vs nginx as connections and tunnels grow: req/s, CPU, PSS"),
    "report": ("bench.report", "print the tables of a saved run (bench/out/*.json)"),
    "profile": ("bench.profile", "Python calls and syscalls per proxied request / tunnelled message"),
    "tune": ("bench.tune", "recommend tunnel_timeout / proxy_read_timeout (sweep or --from-log)"),
    "rawbackend": ("bench.rawbackend", "raw epoll backend: WebSocket sink/echo, uploads, fixed bodies"),
}


def usage() -> str:
    lines = ["usage: python -m bench <subcommand> [args]", "", "subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"unknown subcommand {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
