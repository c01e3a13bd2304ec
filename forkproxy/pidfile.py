"""The pidfile and the files named after it (layer 5).

Invariants:
- A pidfile is trusted only if the pid it names is alive and is a forkproxy master (its
  process title, which setproctitle writes into /proc/PID/cmdline, starts with
  `forkproxy: master`). A stale or foreign pid is treated as no master at all.
- A master removes only a pidfile that still holds its own pid, so a master that lost its
  pidfile to an upgrade never deletes its successor's.
- Files that belong to one master live next to its pidfile: the scoreboard
  (`PIDFILE.scoreboard`) and, by default, the control socket (`PIDFILE.sock`). After USR2
  the old master renames all of them with the `.oldbin` suffix (nginx's rule).
"""

from __future__ import annotations

import os

import psutil

MASTER_TITLE = "forkproxy: master"
OLDBIN = ".oldbin"


def scoreboard_path(pidfile: str) -> str:
    return pidfile + ".scoreboard"


def control_path(pidfile: str, configured: str) -> str:
    return configured or pidfile + ".sock"


def read(path: str) -> int | None:
    """The pid written in `path`, or None if missing or unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_master(pid: int) -> bool:
    """True if `pid` is a live forkproxy master (not a zombie, not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return " ".join(proc.cmdline()).startswith(MASTER_TITLE)
    except (psutil.Error, OSError):
        return False


def running_master(path: str) -> int | None:
    """The pid of the master named by the pidfile at `path`, if there is one."""
    pid = read(path)
    return pid if pid is not None and is_master(pid) else None


def write(path: str, pid: int) -> None:
    """Write atomically (a reader never sees an empty pidfile)."""
    tmp = f"{path}.{pid}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def remove(path: str, pid: int) -> None:
    """Remove the pidfile if it still names `pid`."""
    if read(path) == pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def rename(src: str, dst: str) -> bool:
    """Move a file if it exists and `dst` does not; True if moved."""
    if os.path.exists(dst) and src != dst:
        return False
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    return True
