"""`python -m bench.profiled -c FILE`: forkproxy whose workers can be profiled on demand.

The same master and workers as `python -m forkproxy -c FILE`, with one difference: each
worker runs under a cProfile profiler that is off until the bench sends it SIGRTMIN
(enable) and SIGRTMIN+1 (disable, then dump the stats to
$FORKPROXY_BENCH_PROFILE/worker-<pid>.prof). forkproxy ignores real-time signals, so the
toggles do not disturb its own handling; outside the window the profiler costs nothing.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from typing import Any

import forkproxy.worker as worker_module
from forkproxy import cli

PROFILE_ON = signal.SIGRTMIN
PROFILE_OFF = signal.SIGRTMIN + 1
_run = worker_module.run


def _profiled_run(*args: Any, **kwargs: Any) -> int:
    out = os.environ.get("FORKPROXY_BENCH_PROFILE", ".")
    holder: list[cProfile.Profile] = []

    def on(signum: int, frame: object) -> None:
        holder[:] = [cProfile.Profile()]  # each window starts from zero
        holder[0].enable()

    def off(signum: int, frame: object) -> None:
        if holder:
            holder[0].disable()
            holder[0].dump_stats(os.path.join(out, f"worker-{os.getpid()}.prof"))

    signal.signal(PROFILE_ON, on)
    signal.signal(PROFILE_OFF, off)
    return int(_run(*args, **kwargs))


def main(argv: list[str] | None = None) -> int:
    worker_module.run = _profiled_run  # child.worker_main calls worker.run through the module
    return int(cli.main(sys.argv[1:] if argv is None else argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
