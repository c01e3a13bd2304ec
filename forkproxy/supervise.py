"""The master's worker table: spawn, reap, signal, deadlines, back-off (layer 5).

Invariants:
- Every child the master forks as a worker is in `Supervisor.workers` (by pid) from the
  moment fork returns until `reap` collects it with WNOHANG; its scoreboard slot is
  reserved before fork and released when it is reaped, never earlier.
- A worker "owns" its index in its generation until it is retired (told to drain or stop
  by the master); only an owning worker that dies is respawned, and only while its
  generation is active and the master is not stopping.
- A worker that dies young (before READY, or within CRASH_WINDOW seconds) counts as a
  crash of its index; consecutive crashes back off exponentially up to MAX_BACKOFF, so a
  crash loop never becomes a fork storm. One that lived longer is replaced at once.
- A retired worker has a kill deadline; past it the master sends SIGKILL once. A worker
  whose scoreboard heartbeat is HEARTBEAT_TIMEOUT old is hung: SIGABRT, then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import child
from .netio import Listener
from .scoreboard import EXITING, READY, Scoreboard

log = logging.getLogger("forkproxy.master")

CRASH_WINDOW = 10.0
MAX_BACKOFF = 30.0
FIRST_BACKOFF = 0.5
KILL_MARGIN = 5.0  # seconds past shutdown_timeout before a draining worker is killed
HEARTBEAT_TIMEOUT = 30.0  # a worker silent this long is hung: SIGABRT, then SIGKILL
ABORT_GRACE = 5.0


@dataclass(slots=True, eq=False)
class Generation:
    """One config's set of workers; states: starting, active, draining, failed, gone."""

    number: int
    config: Any
    listeners: list[Listener]
    wanted: int
    state: str = "starting"
    ready_deadline: float = 0.0
    announced: bool = False  # "generation N ready" was logged
    hurried: bool = False  # its final close_spread window was started (draining cap)
    waiters: list[Callable[[bool, str], None]] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class WorkerProc:
    pid: int
    index: int
    gen: Generation
    slot: int
    started: float
    ready: bool = False
    retired: bool = False  # no longer owns its index: never respawned
    quit_when_replaced: bool = False  # recycling: drain once a successor of its index is ready
    kill_at: float | None = None
    killed: bool = False
    aborted: bool = False


def describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Forks and tracks workers; the master decides when, this class knows how."""

    def __init__(self, board: Scoreboard, master_fds: Callable[[], list[Any]],
                 all_listeners: Callable[[], list[Listener]], master_signals: Sequence[int]) -> None:
        self.board = board
        self.workers: dict[int, WorkerProc] = {}
        self._master_fds = master_fds
        self._all_listeners = all_listeners
        self._master_signals = tuple(master_signals)
        self._crashes: dict[int, int] = {}
        self._respawn_at: dict[tuple[int, int], float] = {}
        self.others: dict[int, Callable[[int], None]] = {}  # non-worker children (a new master)

    # -- spawning -------------------------------------------------------------------

    def spawn(self, gen: Generation, index: int) -> WorkerProc:
        slot = self.board.reserve(gen.number, index)
        own = {id(ls.sock) for ls in gen.listeners}
        foreign: list[Any] = [ls.sock for ls in self._all_listeners() if id(ls.sock) not in own]
        private = self._master_fds() + foreign
        master_pid = os.getpid()
        board = self.board

        def run_child() -> int:
            return child.worker_main(config=gen.config, listeners=gen.listeners, index=index,
                                     generation=gen.number, board=board, slot_number=slot,
                                     master_pid=master_pid, master_signals=self._master_signals,
                                     master_fds=private)
        try:
            pid = child.fork(run_child)
        except OSError:
            self.board.release(slot)
            raise
        self.board.set_pid(slot, pid)
        proc = WorkerProc(pid, index, gen, slot, time.monotonic())
        self.workers[pid] = proc
        log.debug("spawned worker %d gen %d pid %d", index, gen.number, pid)
        return proc

    def fill(self, gen: Generation) -> None:
        """Spawn every index of `gen` that has no owner and no respawn pending."""
        owned = {w.index for w in self.of(gen) if not w.retired}
        for index in range(gen.wanted):
            if index not in owned and (gen.number, index) not in self._respawn_at:
                try:
                    self.spawn(gen, index)
                except OSError as e:
                    log.error("cannot fork worker %d gen %d: %s", index, gen.number, e)
                    self._schedule(gen, index, crashed=True)

    def respawn_due(self, gen: Generation | None, now: float) -> None:
        for key, due in list(self._respawn_at.items()):
            if gen is None or key[0] != gen.number or due <= now:
                del self._respawn_at[key]
        if gen is not None:
            self.fill(gen)

    def next_respawn(self) -> float | None:
        return min(self._respawn_at.values(), default=None)

    def _schedule(self, gen: Generation, index: int, crashed: bool) -> float:
        n = self._crashes.get(index, 0) + 1 if crashed else 1
        self._crashes[index] = n
        delay = 0.0 if n <= 1 else min(FIRST_BACKOFF * 2 ** (n - 2), MAX_BACKOFF)
        if delay > 0:
            self._respawn_at[(gen.number, index)] = time.monotonic() + delay
        return delay

    def reset_backoff(self) -> None:
        self._crashes.clear()
        self._respawn_at.clear()

    def forget_index(self, gen: Generation, index: int) -> None:
        self._respawn_at.pop((gen.number, index), None)

    # -- reaping --------------------------------------------------------------------

    def reap(self) -> list[tuple[WorkerProc, int]]:
        """Collect every exited child (WNOHANG); returns the workers with their status."""
        out: list[tuple[WorkerProc, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            proc = self.workers.pop(pid, None)
            if proc is not None:
                self.board.release(proc.slot)
                out.append((proc, status))
            elif pid in self.others:
                self.others.pop(pid)(status)
        return out

    def handle_exit(self, proc: WorkerProc, status: int, respawn: bool) -> None:
        """Log an exit and, for an owning worker of an active generation, respawn."""
        what = f"worker {proc.index} gen {proc.gen.number} (pid {proc.pid}) {describe_status(status)}"
        if proc.retired:
            log.info("%s", what)
            return
        if not respawn:
            log.warning("%s", what)
            return
        young = not proc.ready or time.monotonic() - proc.started < CRASH_WINDOW
        delay = self._schedule(proc.gen, proc.index, crashed=young)
        log.warning("%s; respawning %s", what, f"in {delay:.1f}s" if delay else "now")
        if delay == 0:
            self.fill(proc.gen)

    # -- signals and deadlines --------------------------------------------------------

    def of(self, gen: Generation) -> list[WorkerProc]:
        return [w for w in self.workers.values() if w.gen is gen]

    def send(self, procs: Iterable[WorkerProc], signum: int) -> None:
        for w in procs:
            try:
                os.kill(w.pid, signum)
            except ProcessLookupError:
                pass

    def retire(self, procs: Iterable[WorkerProc], signum: int, deadline: float) -> None:
        """Tell workers to stop (QUIT or TERM); SIGKILL them if still alive at `deadline`."""
        procs = list(procs)
        for w in procs:
            w.retired = True
            w.quit_when_replaced = False
            w.kill_at = deadline if w.kill_at is None else min(w.kill_at, deadline)
        self.send(procs, signum)

    def check_heartbeats(self, now: float) -> None:
        """A worker whose scoreboard heartbeat stopped is hung: SIGABRT, SIGKILL if that fails."""
        for w in self.workers.values():
            if w.aborted or w.killed:
                continue
            info = self.board.read(w.slot)
            if info is None or info.state == EXITING or now - info.heartbeat < HEARTBEAT_TIMEOUT:
                continue
            w.aborted = True
            w.kill_at = now + ABORT_GRACE if w.kill_at is None else min(w.kill_at, now + ABORT_GRACE)
            log.error("worker %d gen %d (pid %d) silent for %.0fs: SIGABRT", w.index, w.gen.number,
                      w.pid, now - info.heartbeat)
            self.send([w], signal.SIGABRT)

    def kill_overdue(self, now: float) -> None:
        for w in self.workers.values():
            if w.kill_at is not None and now >= w.kill_at and not w.killed:
                w.killed = True
                log.warning("worker %d gen %d (pid %d) still alive past its deadline: SIGKILL",
                            w.index, w.gen.number, w.pid)
                self.send([w], signal.SIGKILL)

    def next_deadline(self) -> float | None:
        return min((w.kill_at for w in self.workers.values() if w.kill_at is not None and not w.killed),
                   default=None)

    def refresh_ready(self) -> None:
        """Latch READY from the scoreboard; drain workers whose successor is ready."""
        for w in self.workers.values():
            if not w.ready and self.board.state_of(w.slot) == READY:
                w.ready = True
        for w in self.workers.values():
            if w.quit_when_replaced and any(
                    o.ready and not o.retired and o.index == w.index and o.gen is w.gen
                    for o in self.workers.values()):
                deadline = time.monotonic() + w.gen.config.master.shutdown_timeout + KILL_MARGIN
                self.retire([w], signal.SIGQUIT, deadline)

    def recycle(self, gen: Generation) -> None:
        """Replace, gracefully, workers over max_worker_rss or max_requests."""
        m = gen.config.master
        if not m.max_worker_rss and not m.max_requests:
            return
        for w in self.of(gen):
            if w.retired or not w.ready:
                continue
            reason = ""
            if m.max_requests:
                info = self.board.read(w.slot)
                if info is not None and info.requests >= m.max_requests:
                    reason = f"served {info.requests} requests (max_requests {m.max_requests})"
            if not reason and m.max_worker_rss:
                try:
                    rss = psutil.Process(w.pid).memory_info().rss
                except psutil.Error:
                    continue
                if rss > m.max_worker_rss:
                    reason = f"RSS {rss} bytes over max_worker_rss {m.max_worker_rss}"
            if reason:
                log.info("recycling worker %d gen %d (pid %d): %s", w.index, gen.number, w.pid, reason)
                w.retired = True
                w.quit_when_replaced = True
                w.kill_at = None
                self.fill(gen)

