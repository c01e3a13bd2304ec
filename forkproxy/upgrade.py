"""USR2: a new master from the current code inherits the listening sockets (layer 5).

The old master (nginx's binary upgrade):
1. renames its pidfile, scoreboard and control socket with `.oldbin`;
2. forks and execs `python -m forkproxy -c CONFIG` with the listening fds made
   inheritable and named in FORKPROXY_LISTEN_FDS, plus a pipe in FORKPROXY_UPGRADE_FD;
3. keeps serving. The new master writes `ready` on that pipe once its first generation
   is serving; if it exits before that, or never says so within its time, the old master
   renames its files back and reports the failure. If the new master exits later, the old
   one takes its names back too.
The operator then sends WINCH (drain the old workers) and QUIT to the old master.

Invariants: at most one upgrade at a time; the old master never closes a listening
socket because of an upgrade; the new master is not a worker (no PDEATHSIG), so it
outlives the old one.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable, MutableMapping

from . import child
from .control import Reply
from .listenset import ENV_FDS, ListenerSet, pass_to_child
from .supervise import Supervisor, describe_status

log = logging.getLogger("forkproxy.master")

ENV_UPGRADE_FD = "FORKPROXY_UPGRADE_FD"
ENV_GENERATION = "FORKPROXY_GENERATION"
GRACE = 30.0  # beyond ready_timeout, how long a new master may take to say it is ready


class Upgrade:
    """The old master's side of USR2."""

    def __init__(self, selector: selectors.BaseSelector, sup: Supervisor,
                 rename: Callable[[bool], str | None]) -> None:
        self._sel = selector
        self._sup = sup
        self._rename = rename  # True: to .oldbin; False: back; returns an error or None
        self.pid: int | None = None
        self.ready = False
        self._reply: Reply | None = None
        self._pipe: int | None = None
        self._deadline = float("inf")

    def fds(self) -> list[int]:
        return [self._pipe] if self._pipe is not None else []

    def start(self, argv: list[str], listeners: ListenerSet, generation: int,
              timeout: float, reply: Reply | None) -> None:
        if self.pid is not None:
            _say(reply, False, f"an upgrade is already running (new master pid {self.pid})")
            return
        err = self._rename(True)
        if err:
            _say(reply, False, f"upgrade refused: {err}")
            return
        env_fds, fds = listeners.export()
        rfd, wfd = os.pipe()
        env = dict(os.environ)
        env.update({ENV_FDS: env_fds, ENV_UPGRADE_FD: str(wfd), ENV_GENERATION: str(generation + 1)})
        cmd = [sys.executable, "-m", "forkproxy", *argv]

        def exec_new_master() -> int:
            signal.set_wakeup_fd(-1)
            os.close(rfd)
            pass_to_child([*fds, wfd])
            child.restore(set())
            os.execve(sys.executable, cmd, env)
            return 1  # not reached

        try:
            pid = child.fork(exec_new_master)
        except OSError as e:
            os.close(rfd)
            os.close(wfd)
            self._rename(False)
            _say(reply, False, f"upgrade failed: cannot fork: {e}")
            return
        os.close(wfd)
        os.set_blocking(rfd, False)
        self.pid, self.ready, self._reply, self._pipe = pid, False, reply, rfd
        self._deadline = time.monotonic() + timeout + GRACE
        self._sup.others[pid] = self._on_exit
        self._sel.register(rfd, selectors.EVENT_READ, self._on_pipe)
        log.info("upgrade: started new master pid %d (%s)", pid, " ".join(cmd))

    def _on_pipe(self) -> None:
        assert self._pipe is not None
        try:
            data = os.read(self._pipe, 64)
        except (BlockingIOError, InterruptedError):
            return
        if data.startswith(b"ready"):
            self.ready = True
            self._deadline = float("inf")
            _say(self._reply, True, f"upgrade: new master pid {self.pid} is serving; "
                                    f"send WINCH then QUIT to this old master (pid {os.getpid()})")
            self._reply = None
        if not data or self.ready:
            self._close_pipe()

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._sel.unregister(self._pipe)
            os.close(self._pipe)
            self._pipe = None

    def _on_exit(self, status: int) -> None:
        self._close_pipe()
        pid, self.pid = self.pid, None
        err = self._rename(False)
        if self.ready:
            log.warning("new master pid %s %s; this master takes its files back%s", pid,
                        describe_status(status), f" ({err})" if err else "")
        else:
            _say(self._reply, False, f"upgrade failed: new master pid {pid} {describe_status(status)} "
                                     "before it was serving; the old master keeps serving")
        self._reply = None
        self.ready = False

    def expire(self, now: float) -> None:
        if self.pid is not None and not self.ready and now >= self._deadline:
            log.error("upgrade: new master pid %d not serving in time: SIGTERM", self.pid)
            self._deadline = float("inf")
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def next_deadline(self) -> float | None:
        return self._deadline if self.pid is not None and self._deadline != float("inf") else None


def _say(reply: Reply | None, ok: bool, message: str) -> None:
    (log.info if ok else log.error)("%s", message)
    if reply is not None:
        reply(ok, message)


def take_ready_fd(environ: MutableMapping[str, str]) -> int | None:
    """New master: the pipe to announce readiness on, if an old master started us."""
    text = environ.pop(ENV_UPGRADE_FD, "")
    if not text.isdigit():
        return None
    fd = int(text)
    os.set_inheritable(fd, False)
    return fd


def first_generation(environ: MutableMapping[str, str]) -> int:
    text = environ.pop(ENV_GENERATION, "")
    return int(text) if text.isdigit() and int(text) > 0 else 1


def announce_ready(fd: int) -> None:
    try:
        os.write(fd, b"ready\n")
    except OSError:
        pass
    os.close(fd)
