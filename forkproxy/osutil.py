"""OS facts the master needs: terminal attachment, fd limits, titles (layer 5).

Invariants: nothing here keeps state; every function reads or sets one property of the
calling process and is safe to call again on reload.
"""

from __future__ import annotations

import logging
import os
import resource

import setproctitle

log = logging.getLogger("forkproxy.master")

# fds a worker needs besides its connections: listeners, logs, epoll, pipes, the scoreboard.
_FD_OVERHEAD = 128
# a proxied connection holds a client and an upstream socket; a tunnel may hold a pipe too.
_FDS_PER_CONNECTION = 3


def attached_to_terminal() -> bool:
    """True if we are in the foreground process group of a controlling terminal.

    Then a terminal resize sends WINCH (and Ctrl-C sends INT) to us and our workers, so
    the master must not read WINCH as "stop the old workers".
    """
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def fit_nofile(worker_connections: int, worker_rlimit_nofile: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by workers) to fit the config; returns the soft limit."""
    need = worker_rlimit_nofile or worker_connections * _FDS_PER_CONNECTION + _FD_OVERHEAD
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
        return need
    except (ValueError, OSError):
        pass
    ceiling = hard if hard != resource.RLIM_INFINITY else need
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, ceiling), hard))
    except (ValueError, OSError):
        pass
    got = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.warning("RLIMIT_NOFILE is %d, below the %d that worker_connections = %d needs",
                got, need, worker_connections)
    return got


def set_title(title: str) -> None:
    setproctitle.setproctitle(title)
