"""A worker process: accept, run the loop, drain on QUIT, stop on TERM (layer 4).

Invariants:
- `run()` is called in the child right after fork with signals still blocked; it
  installs its own handlers and wakeup fd first, then unblocks. Handlers only record
  the signal; the loop acts on it at the next iteration.
- Listeners are watched with EPOLLEXCLUSIVE (one or a few workers woken per
  connection, no thundering herd), and re-registered after each accept batch: the
  kernel wakes the first idle waiter in the listener's queue, and re-adding moves this
  worker to the back, so long-lived connections spread instead of piling onto one. Pausing accept means
  remove + add (EPOLL_CTL_MOD cannot carry EPOLLEXCLUSIVE).
- A burst of connections (clients reconnecting at once, a load generator) is queued before
  any other worker is woken, so re-adding alone cannot spread it. Each worker publishes its
  connection and tunnel counts on the scoreboard whenever they change; a worker about
  to accept while it holds more than a sibling of its generation (beyond a small slack)
  steps aside instead: it pauses accepting and wakes the least-loaded sibling with KICK,
  which accepts what is queued. The one that stepped aside resumes after STEP_ASIDE, or at
  once when kicked back. A sibling whose heartbeat is stale is not waited for.
- Accept in batches; on EMFILE/ENFILE, or at `worker_connections`, stop accepting
  and retry on a later tick.
- Draining: stop accepting (remove the listeners from epoll before closing this
  worker's copy), let every connection finish, keep tunnels until `shutdown_timeout`
  and close the ones still open at random moments within the last `close_spread`.
- The worker never parses HTTP; connections do.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import random
import signal
from typing import TYPE_CHECKING
from collections.abc import Callable, Sequence

from . import log as logs
from .conn import ClientConnection
from .context import WorkerContext
from .loop import EXCLUSIVE, IN, EventLoop, Timer
from .netio import accept_queue_length, set_nodelay
from .pipes import PipePool, splice_supported
from .routes import Router
from .scoreboard import DRAINING, EXITING, READY
from .tunnel import Tunnel
from .upstream import UpstreamPools

if TYPE_CHECKING:
    from .config import Config
    from .netio import Listener
    from .scoreboard import Slot

log = logging.getLogger("forkproxy")

TICK = 0.5                 # heartbeat, log flush, parent check
ACCEPT_BATCH = 64
KICK = signal.SIGURG       # "take the queued connections": ignored by default, so never fatal
STEP_ASIDE = 0.05          # a worker that stepped aside resumes accepting after this
SIBLING_STALE = 3 * TICK   # a sibling whose heartbeat is older is not stepped aside for
EMFILE_BACKOFF = 0.5
INF = float("inf")
_ACCEPT_PAUSE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _set_title(text: str) -> None:
    try:
        import setproctitle
        setproctitle.setproctitle(text)
    except ImportError:  # pragma: no cover - a declared dependency
        pass


class Worker:
    __slots__ = ("ctx", "listeners", "slot", "signals", "stopping", "final_window", "ppid", "accepting",
                 "tick_timer", "wake_r", "wake_w", "servers", "title", "cap", "siblings", "acceptors",
                 "stepped_aside", "kicked", "look_again")

    def __init__(self, config: Config, listeners: Sequence[Listener], index: int, generation: int,
                 slot: Slot) -> None:
        loop = EventLoop()
        m = config.master
        pipes = None
        if m.splice_pipes > 0 and splice_supported():
            pipes = PipePool(m.splice_pipes, m.splice_idle_pipes, m.pipe_size)
        self.ctx = WorkerContext(loop, config, Router(config), UpstreamPools(loop), pipes,
                                 logs.open_record_log(m.access_log), logs.open_record_log(m.tunnel_log),
                                 index, generation)
        self.listeners = list(listeners)
        self.slot = slot
        self.signals: list[int] = []
        self.stopping = False
        self.final_window = False
        self.ppid = os.getppid()
        self.accepting = False
        self.cap = m.worker_connections
        self.title = f"forkproxy: worker {index} gen {generation}"
        router = self.ctx.router
        # the server that answers on each listener before Host is known (its timeouts and limits)
        self.servers = {id(li): router.default_server(li.address) for li in self.listeners}
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.tick_timer = Timer(self._tick)
        self.siblings = slot.siblings()  # refreshed every tick: TTIN/TTOU change the generation
        # a generation's workers start together: until the others show up on the board,
        # look for them when accepting (at most every 10 ms)
        self.look_again = loop.now if m.workers > 1 else INF
        self.stepped_aside = Timer(self._after_step_aside)
        self.kicked: tuple[int, int] | None = None  # (its load, pid) of the sibling we stepped aside for
        self.acceptors = {li.sock.fileno(): self._acceptor(li) for li in self.listeners}

    # -- signals -----------------------------------------------------------------

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGWINCH, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, KICK):
            signal.signal(sig, self._record)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.ctx.loop.add(self.wake_r, IN, self._on_wake)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    def _record(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _on_wake(self, events: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass
        pending, self.signals = self.signals, []
        for sig in pending:
            if sig == signal.SIGTERM:
                self.stop("SIGTERM")
            elif sig == signal.SIGQUIT:
                self.drain()
            elif sig == signal.SIGUSR1:
                logs.reopen_logs()
            elif sig == signal.SIGUSR2 and self.ctx.draining:
                self._start_final_window()
            elif sig == KICK:
                self._kicked()

    # -- accepting ---------------------------------------------------------------

    def _resume_accept(self) -> None:
        loop = self.ctx.loop
        loop.disarm(self.stepped_aside)
        if self.accepting or self.ctx.draining or self.stopping:
            return
        for fd, acceptor in self.acceptors.items():
            loop.add(fd, IN | EXCLUSIVE, acceptor)
        self.accepting = True

    def _pause_accept(self) -> None:
        if not self.accepting:
            return
        loop = self.ctx.loop
        for fd in self.acceptors:
            loop.remove(fd)
        self.accepting = False

    def _publish_load(self) -> None:
        stats = self.ctx.stats
        self.slot.set_load(stats.connections, stats.tunnels)

    def _step_aside(self, sibling: tuple[int, int]) -> None:
        """Leave the queued connections to a less-loaded sibling and wake it."""
        ctx = self.ctx
        self._publish_load()
        self._pause_accept()
        self.kicked = sibling
        ctx.loop.arm(self.stepped_aside, ctx.loop.now + STEP_ASIDE)
        try:
            os.kill(sibling[1], KICK)
        except OSError:  # it has just exited; the timer resumes us
            pass

    def _after_step_aside(self) -> None:
        kicked, self.kicked = self.kicked, None
        if kicked is not None and self.siblings.load_of(kicked[1]) == kicked[0]:
            self.siblings.ignore(kicked[1])  # it took nothing (stopped, busy): not waited for until the next tick
        self._resume_accept()

    def _kicked(self) -> None:
        """A sibling stepped aside: take what is queued (unless paused for another reason)."""
        if self.stepped_aside.deadline is not None:
            self.kicked = None
            self._resume_accept()
        self._take_queued()

    def _take_queued(self) -> None:
        """Accept what waits in the queues now, without waiting for a wake-up."""
        if self.accepting:
            for acceptor in list(self.acceptors.values()):
                acceptor(IN)

    def _acceptor(self, li: Listener):  # type: ignore[no-untyped-def]
        lsock = li.sock
        server = self.servers[id(li)]
        ctx = self.ctx
        live = ctx.live
        siblings = self.siblings

        fd = lsock.fileno()
        loop = ctx.loop

        def on_accept(events: int) -> None:
            accepted = 0
            if not siblings and loop.now >= self.look_again:
                siblings.refresh()
                self.look_again = loop.now + 0.01 if not siblings else INF  # the ticks take over
            try:
                for _ in range(ACCEPT_BATCH):
                    load = len(live)
                    if load >= self.cap:
                        self._pause_accept()
                        return
                    if siblings:
                        least = siblings.least(loop.now, SIBLING_STALE)
                        if least is not None and load > least[0] + 1 + least[0] // 8:
                            if accept_queue_length(lsock):
                                self._step_aside(least)
                            return
                    try:
                        sock, addr = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError as e:
                        if e.errno in _ACCEPT_PAUSE:
                            log.error("accept: %s; pausing accept for %.1fs", e, EMFILE_BACKOFF)
                            self._pause_accept()
                            loop.call_later(EMFILE_BACKOFF, self._resume_accept)
                        elif e.errno not in (errno.ECONNABORTED, errno.EPROTO):
                            log.error("accept: %s", e)
                        return
                    accepted += 1
                    sock.setblocking(False)
                    set_nodelay(sock)
                    try:
                        ClientConnection(ctx, sock, addr, li, server)
                    except OSError as e:  # the client vanished between accept and registration
                        log.info("accepted connection failed at once: %s", e)
                        sock.close()
            finally:
                if accepted and loop.watching(fd):
                    # EPOLLEXCLUSIVE wakes the first idle waiter in the listener's queue;
                    # re-adding moves this worker to the back, so the next connection goes
                    # to another worker (long-lived tunnels do not pile onto one)
                    loop.remove(fd)
                    loop.add(fd, IN | EXCLUSIVE, on_accept)

        return on_accept

    # -- lifecycle ---------------------------------------------------------------

    def _publish(self, state: int) -> None:
        ctx = self.ctx
        self.slot.publish(state=state, connections=ctx.stats.connections,
                          tunnels=ctx.stats.tunnels, requests=ctx.stats.requests)

    def _tick(self) -> None:
        ctx = self.ctx
        loop = ctx.loop
        logs.flush_logs()
        if os.getppid() != self.ppid:
            log.error("master %d is gone; worker exits", self.ppid)
            self.stop("master died")
            return
        if ctx.draining:
            self._publish(DRAINING)
        else:
            self._publish(READY)
            self.siblings.refresh()
            if not self.accepting and len(ctx.live) < self.cap and self.stepped_aside.deadline is None:
                self._resume_accept()
            # a safety net: a wake-up that went to a sibling which then stalled leaves
            # connections queued; look at the queue ourselves once a tick
            self._take_queued()
        if not self.stopping:
            loop.arm(self.tick_timer, loop.now + TICK)

    def drain(self) -> None:
        ctx = self.ctx
        if ctx.draining:
            return
        ctx.draining = True
        self.title += " draining"
        _set_title(self.title)
        log.info("draining: %d connections, %d tunnels", ctx.stats.connections, ctx.stats.tunnels)
        self._pause_accept()
        for li in self.listeners:
            li.sock.close()  # the master keeps its copy; ours is out of epoll already
        self.listeners = []
        self.acceptors = {}
        for c in list(ctx.live):
            c.drain()
        self._publish(DRAINING)
        m = ctx.config.master
        ctx.loop.call_later(m.shutdown_timeout - m.close_spread, self._start_final_window)
        ctx.loop.call_later(m.shutdown_timeout, lambda: self.stop("shutdown_timeout"))

    def _start_final_window(self) -> None:
        """Close the tunnels still open at random moments within the next close_spread.

        HTTP exchanges in flight are not cut here: they finish, or meet shutdown_timeout.
        SIGUSR2 (too many draining generations) starts this window early."""
        if self.final_window:
            return
        self.final_window = True
        ctx = self.ctx
        spread = ctx.config.master.close_spread
        for c in list(ctx.live):
            if isinstance(c, Tunnel):
                ctx.loop.call_later(random.uniform(0, spread), self._closer(c))

    def _closer(self, tunnel: Tunnel) -> Callable[[], None]:
        live = self.ctx.live

        def close() -> None:
            if tunnel in live:
                tunnel.shutdown("shutdown")
        return close

    def stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        ctx = self.ctx
        log.info("worker stopping (%s)", why)
        self._pause_accept()
        for c in list(ctx.live):
            c.shutdown("shutdown")
        ctx.pools.close_all()
        ctx.loop.running = False

    def serve(self) -> int:
        ctx = self.ctx
        loop = ctx.loop
        _set_title(self.title)
        logs.set_role(f"worker {ctx.index} gen {ctx.generation}")
        self._resume_accept()
        loop.arm(self.tick_timer, loop.now + TICK)
        self._publish(READY)
        self.siblings.refresh()
        gc.collect()
        live = ctx.live
        published = -1
        while loop.running:
            loop.run_once()
            if len(live) != published:
                published = len(live)  # siblings balance accepts on it
                self._publish_load()
            if ctx.draining and not live:
                self.stop("drained")
        self.slot.publish(state=EXITING, connections=0, tunnels=ctx.stats.tunnels, requests=ctx.stats.requests)
        logs.flush_logs()
        logs.close_record_logs()
        loop.close()
        return 0


def run(config: Config, listeners: Sequence[Listener], index: int, generation: int, slot: Slot) -> int:
    """The worker's entry point, called in the child after fork; returns the exit code."""
    worker = Worker(config, listeners, index, generation, slot)
    worker.install_signals()
    try:
        return worker.serve()
    except Exception:
        log.exception("worker %d crashed", index)
        logs.flush_logs()
        return 1

