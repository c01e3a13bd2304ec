"""Forking a worker, and what the child does before the worker's code runs (layer 5).

Invariants (DESIGN.md, fork safety):
- Logs are flushed and the heap frozen (`gc.freeze`) before fork (the master unfreezes its
  own right after, so its garbage is still collected); every signal is blocked
  across fork. The parent restores its mask at once; the child leaves signals blocked,
  resets the master's handlers and wakeup fd, and `worker.run` installs its own handlers
  before it unblocks them. SIGCHLD is never set to SIG_IGN.
- The child closes every fd that belongs to the master (wakeup pipe, control socket and
  its connections, the upgrade pipe) and the listening sockets its generation does not
  use, drops to user/group, then sets PR_SET_PDEATHSIG (a credential change clears it,
  so it must come after the drop) and checks getppid() to close the race with a master
  that died before that.
- The child never returns into master frames: it ends with `os._exit` after flushing logs.
"""

from __future__ import annotations

import ctypes

# getaddrinfo imports this lazily; after the privilege drop the interpreter's own files may
# be unreadable by the worker's user, so the master imports it before any fork.
import encodings.idna  # noqa: F401
import gc
import grp
import logging
import os
import pwd
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import setproctitle

from . import log as logmod
from . import worker
from .netio import Listener
from .scoreboard import Scoreboard

log = logging.getLogger("forkproxy.master")

_PR_SET_PDEATHSIG = 1
EXIT_SETUP_FAILED = 70  # the child could not become a worker (privilege drop, ...)


def block_all() -> set[int | signal.Signals]:
    """Block every signal; returns the previous mask for `restore`."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


def restore(mask: Iterable[int]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def fork(child: Callable[[], int]) -> int:
    """fork() with the safety rules above; `child` runs in the child, then `os._exit`."""
    logmod.flush_logs()
    gc.freeze()
    mask = block_all()
    try:
        pid = os.fork()
    except BaseException:
        restore(mask)
        gc.unfreeze()
        raise
    if pid == 0:
        code = EXIT_SETUP_FAILED
        try:
            code = child()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - the child must never unwind into master frames
            log.error("worker failed:\n%s", traceback.format_exc().rstrip())
            code = EXIT_SETUP_FAILED
        finally:
            try:
                logmod.flush_logs()
            finally:
                os._exit(code)
    restore(mask)
    gc.unfreeze()  # only the child keeps the inherited heap out of its collections
    return pid


def reset_master_signals(signals: Iterable[int]) -> None:
    """Child side: forget the master's wakeup fd and handlers (signals are still blocked)."""
    signal.set_wakeup_fd(-1)
    for signum in signals:
        if signum in (signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)  # the default would stop the worker
        else:
            signal.signal(signum, signal.SIG_DFL)


def close_master_fds(objects: Iterable[socket.socket | int]) -> None:
    for obj in objects:
        try:
            if isinstance(obj, int):
                os.close(obj)
            else:
                obj.close()
        except OSError:
            pass


def drop_privileges(user: str, group: str) -> None:
    """Become `user` (and `group`, or the user's primary group); no-op when not asked."""
    if not user and not group:
        return
    if os.geteuid() != 0:
        want_uid = pwd.getpwnam(user).pw_uid if user else os.getuid()
        if want_uid != os.geteuid():
            raise PermissionError(f"cannot switch to user {user!r}: the master is not root")
        return
    pw = pwd.getpwnam(user) if user else None
    gid = grp.getgrnam(group).gr_gid if group else (pw.pw_gid if pw else os.getgid())
    if pw is not None:
        os.initgroups(pw.pw_name, gid)
    else:
        os.setgroups([gid])
    os.setgid(gid)
    if pw is not None:
        os.setuid(pw.pw_uid)


def set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def worker_main(*, config: Any, listeners: Sequence[Listener], index: int, generation: int,
                board: Scoreboard, slot_number: int, master_pid: int, master_signals: Iterable[int],
                master_fds: Iterable[socket.socket | int]) -> int:
    """The child's whole life: setup, then `worker.run`; returns the exit code."""
    reset_master_signals(master_signals)
    close_master_fds(master_fds)
    setproctitle.setproctitle(f"forkproxy: worker {index} gen {generation}")
    logmod.set_role(f"worker {index} gen {generation}")
    m = config.master
    drop_privileges(m.user, m.group)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != master_pid:
        return 1  # the master died before PR_SET_PDEATHSIG was armed
    gc.enable()
    slot = board.slot(slot_number, generation, index)
    sys.stdout.flush()
    return int(worker.run(config, listeners, index, generation, slot))
