"""The master: binds, forks, supervises; never serves a request (layer 5).

Invariants:
- Signal handlers only record the signal number; `signal.set_wakeup_fd` on a
  non-blocking pipe wakes the selector loop, which dispatches through the one SIGNALS
  table (signal -> handle_* -> control verb; nginx's signals[], gunicorn's handle_*).
  Nothing is logged in a handler, and nothing in the loop sleeps.
- Every loop iteration reaps with WNOHANG, so a lost wakeup byte cannot leave zombies,
  then steps the generation state machine and the deadlines.
- Listening sockets are bound here and closed only when no living generation's config
  names them (generations.py, listenset.py). During a stop nothing is respawned.
- On exit the master removes exactly what it created (pidfile, scoreboard, control
  socket), each only if it is still its own, and leaves no child behind it: it exits
  only once every worker has been reaped.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from typing import Any

from . import config as configmod
from . import log as logmod
from . import osutil, pidfile, upgrade
from .control import ControlServer, Reply
from .errors import ConfigError, ForkproxyError
from .generations import Generations
from .listenset import ListenerSet
from .scoreboard import (
    DEFAULT_SLOTS,
    MASTER_IDLE,
    MASTER_RUNNING,
    MASTER_STOPPING,
    Scoreboard,
)
from .sdnotify import Notifier
from .supervise import KILL_MARGIN, Supervisor

log = logging.getLogger("forkproxy.master")

# signal, handler method, control-socket verb (None: signal only)
SIGNALS: tuple[tuple[signal.Signals, str, str | None], ...] = (
    (signal.SIGHUP, "handle_hup", "reload"),
    (signal.SIGQUIT, "handle_quit", "quit"),
    (signal.SIGTERM, "handle_term", "stop"),
    (signal.SIGINT, "handle_int", None),
    (signal.SIGUSR1, "handle_usr1", "reopen"),
    (signal.SIGUSR2, "handle_usr2", "upgrade"),
    (signal.SIGWINCH, "handle_winch", None),
    (signal.SIGTTIN, "handle_ttin", None),
    (signal.SIGTTOU, "handle_ttou", None),
    (signal.SIGCHLD, "handle_chld", None),
)
VERBS: dict[str, str] = {verb: method for _, method, verb in SIGNALS if verb is not None}
VERBS["status"] = "handle_status"

TICK = 1.0  # idle loop period; shorter while a generation starts
FAST_TICK = 0.05
RECYCLE_EVERY = 2.0


class Master:
    def __init__(self, config_path: str, config: Any) -> None:
        other = pidfile.running_master(config.master.pidfile)
        if other is not None and other != os.getpid():
            raise ForkproxyError(f"already running as pid {other} (pidfile {config.master.pidfile})")
        self.config_path = config_path
        self.config = config
        self.pid = os.getpid()
        self.sel = selectors.PollSelector()  # no fd of its own for a worker to inherit
        self.listeners = ListenerSet()
        self._pending: list[int] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        m = config.master
        self._pidfile_base = m.pidfile  # a reload never moves it (a restart or upgrade does)
        self.pidfile = m.pidfile
        slots = max(DEFAULT_SLOTS, 8 * m.workers)  # room for draining generations and TTIN
        self.board = Scoreboard.create(pidfile.scoreboard_path(m.pidfile), slots)
        self.control: ControlServer | None = None
        self.sup = Supervisor(self.board, self._private_fds, self.listeners.all,
                              [s for s, _, _ in SIGNALS])
        self.gens = Generations(self.sup, self.listeners, upgrade.first_generation(os.environ))
        self.upgrade = upgrade.Upgrade(self.sel, self.sup, self._rename_files)
        self._ready_fd = upgrade.take_ready_fd(os.environ)
        self.state = "running"  # running | idle | quitting | stopping
        self._reload_queue: list[Reply | None] = []
        self._next_recycle = 0.0
        self._oldbin = False
        self.notify = Notifier()
        self._notified = 0  # the generation systemd was last told is serving
        self._reloading = False

    # -- startup and shutdown -----------------------------------------------------------

    def run(self) -> int:
        self._install_signals()  # a signal during startup is acted on by the first loop turn
        try:
            self.listeners.adopt_from_env(os.environ)
            m = self.config.master
            osutil.fit_nofile(m.worker_connections, m.worker_rlimit_nofile)
            self.listeners.ensure(self.config)
            self.listeners.prune([self.config])
            self.control = ControlServer(pidfile.control_path(m.pidfile, m.control_socket),
                                         self.sel, self._on_verb)
            pidfile.write(self.pidfile, self.pid)
            self.gens.start_first(self.config)
            self._publish()
        except OSError as e:
            log.error("cannot start: %s", e.strerror if e.strerror and not e.filename else e)
            self._cleanup()
            return 1
        code = 0
        try:
            self._loop()
        except Exception:
            log.exception("master failed; its workers exit with it (PR_SET_PDEATHSIG)")
            code = 1
        finally:
            self._cleanup()
        log.info("master exits")
        self._ignore_late_signals()
        return code

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum, _, _ in SIGNALS:
            signal.signal(signum, self._record)

    @staticmethod
    def _ignore_late_signals() -> None:
        """Python restores the default actions while it finalises; a stop signal sent again
        then would end the master by that signal instead of with its exit code."""
        for signum, _, _ in SIGNALS:
            if signum != signal.SIGCHLD:
                signal.signal(signum, signal.SIG_IGN)

    def _record(self, signum: int, frame: object) -> None:
        self._pending.append(signum)

    def _cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        if self.control is not None:
            self.control.close()
        pidfile.remove(self.pidfile, self.pid)
        self.board.unlink()
        self.listeners.close_all()
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        logmod.flush_logs()

    def _private_fds(self) -> list[Any]:
        """What a forked worker must close: everything of the master but listeners."""
        fds: list[Any] = [self._wake_r, self._wake_w, *self.upgrade.fds()]
        if self.control is not None:
            fds += self.control.sockets()
        if self._ready_fd is not None:
            fds.append(self._ready_fd)
        return fds

    def _publish(self) -> None:
        """Title and scoreboard header: the generation serving (or last started) and state."""
        active = self.gens.active
        number = active.number if active is not None else self.gens.newest_number
        old = " (old)" if self._oldbin else ""
        osutil.set_title(f"forkproxy: master{old} gen {number} -c {self.config_path}")
        state = {"running": MASTER_RUNNING, "idle": MASTER_IDLE}.get(self.state, MASTER_STOPPING)
        self.board.set_master(generation=number, state=state)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            for key, _ in self.sel.select(self._timeout()):
                key.data()
            self._dispatch_signals()
            now = time.monotonic()
            for proc, status in self.sup.reap():
                self.gens.on_exit(proc, status, respawn=self.state == "running")
            self.sup.refresh_ready()
            self.gens.step(now)
            self._after_step(now)
            if self.state in ("quitting", "stopping") and not self.sup.workers:
                return

    def _timeout(self) -> float:
        if self._pending:
            return 0.0
        if self.gens.starting is not None or (self.gens.active and not self.gens.active.announced):
            return FAST_TICK
        if any(w.quit_when_replaced for w in self.sup.workers.values()):
            return FAST_TICK
        now = time.monotonic()
        due = [t for t in (self.sup.next_respawn(), self.sup.next_deadline(), self.upgrade.next_deadline())
               if t is not None]
        return max(0.0, min([TICK, *(t - now for t in due)]))

    def _after_step(self, now: float) -> None:
        self.sup.check_heartbeats(now)
        self.sup.kill_overdue(now)
        self.upgrade.expire(now)
        if self.control is not None:
            self.control.expire(now)
        if self.state == "running":
            self.sup.respawn_due(self.gens.active, now)
            if now >= self._next_recycle and self.gens.active is not None:
                self._next_recycle = now + RECYCLE_EVERY
                self.sup.recycle(self.gens.active)
        active = self.gens.active
        if active is not None and active.announced:
            if self._ready_fd is not None:
                upgrade.announce_ready(self._ready_fd)
                self._ready_fd = None
            if active.number != self._notified or (self._reloading and self.gens.starting is None):
                self._notified, self._reloading = active.number, False
                self.notify.ready(f"generation {active.number} serving")
                self._publish()
        if self.gens.starting is None and self._reload_queue and self.state in ("running", "idle"):
            queue, self._reload_queue = self._reload_queue, []
            self._reload(queue)

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _dispatch_signals(self) -> None:
        pending, self._pending = self._pending, []
        for signum in pending:
            for sig, method, _ in SIGNALS:
                if sig == signum:
                    getattr(self, method)(None)

    def _on_verb(self, verb: str, reply: Reply) -> None:
        method = VERBS.get(verb)
        if method is None:
            reply(False, f"unknown command {verb!r} (known: {', '.join(VERBS)})")
            return
        log.info("control: %s", verb)
        getattr(self, method)(reply)

    # -- handlers (each takes the control reply, or None for a signal) -------------------

    def handle_hup(self, reply: Reply | None) -> None:
        if self.state not in ("running", "idle"):
            _say(reply, False, "reload refused: the master is stopping")
            return
        self._reload_queue.append(reply)
        if self.gens.starting is None:
            queue, self._reload_queue = self._reload_queue, []
            self._reload(queue)

    def _reload(self, waiters: list[Reply | None]) -> None:
        log.info("reloading %s", self.config_path)
        self._reloading = self.notify.reloading()
        replies = [r for r in waiters if r is not None]

        def answer(ok: bool, message: str) -> None:
            for r in replies:
                r(ok, message)

        try:
            config = configmod.load(self.config_path)
        except ConfigError as e:
            log.error("reload failed: %s; the running workers are untouched", e)
            answer(False, f"reload failed: {e}")
            return
        except OSError as e:
            log.error("reload failed: cannot read %s: %s", self.config_path, e)
            answer(False, f"reload failed: cannot read {self.config_path}: {e.strerror or e}")
            return
        self._apply_master_settings(config)
        self.gens.begin_reload(config, answer if replies else None)
        if self.state == "idle" and self.gens.starting is not None:
            self.state = "running"
            self._publish()

    def _apply_master_settings(self, config: Any) -> None:
        old, new = self.config.master, config.master
        for key in ("pidfile", "control_socket"):
            if getattr(old, key) != getattr(new, key):
                log.warning("master.%s changed: a reload cannot apply it (restart or upgrade)", key)
        if (old.error_log, old.log_level) != (new.error_log, new.log_level):
            logmod.setup_error_log(new.error_log, new.log_level, "master")
        osutil.fit_nofile(new.worker_connections, new.worker_rlimit_nofile)
        self.config = config

    def handle_quit(self, reply: Reply | None) -> None:
        if self.state in ("quitting", "stopping"):
            _say(reply, True, f"already {self.state}")
            return
        log.info("graceful stop: workers finish what they serve, then exit")
        self.notify.stopping()
        self.state = "quitting"
        self._publish()
        self.gens.stop(fast=False)
        _say(reply, True, f"quitting: {len(self.sup.workers)} workers draining")

    def handle_term(self, reply: Reply | None) -> None:
        if self.state == "stopping":
            _say(reply, True, "already stopping")
            return
        log.info("fast stop")
        self.notify.stopping()
        self.state = "stopping"
        self._publish()
        self.gens.stop(fast=True)
        _say(reply, True, f"stopping: {len(self.sup.workers)} workers")

    handle_int = handle_term

    def handle_usr1(self, reply: Reply | None) -> None:
        logmod.reopen_logs()
        log.info("reopened the logs; asking %d workers to reopen theirs", len(self.sup.workers))
        self.sup.send(self.sup.workers.values(), signal.SIGUSR1)
        _say(reply, True, "logs reopened")

    def handle_usr2(self, reply: Reply | None) -> None:
        if self.state != "running" or self._oldbin:
            _say(reply, False, "upgrade refused: this master is "
                 + ("already an old master" if self._oldbin else self.state))
            return
        self.upgrade.start(["-c", self.config_path], self.listeners, self.gens.newest_number,
                           self.config.master.ready_timeout, reply)

    def handle_winch(self, reply: Reply | None) -> None:
        if osutil.attached_to_terminal():
            log.info("WINCH ignored: the master runs in the foreground of a terminal")
            return
        if self.state != "running" or self.gens.active is None:
            return
        self.gens.drain(self.gens.active, "WINCH")
        self.state = "idle"
        self._publish()

    def handle_ttin(self, reply: Reply | None) -> None:
        gen = self.gens.active
        if self.state == "running" and gen is not None:
            gen.wanted += 1
            log.info("TTIN: generation %d now has %d workers", gen.number, gen.wanted)
            self.sup.fill(gen)

    def handle_ttou(self, reply: Reply | None) -> None:
        gen = self.gens.active
        if self.state != "running" or gen is None or gen.wanted <= 1:
            return
        gen.wanted -= 1
        log.info("TTOU: generation %d now has %d workers", gen.number, gen.wanted)
        self.sup.forget_index(gen, gen.wanted)
        victims = [w for w in self.sup.of(gen) if w.index >= gen.wanted and not w.retired]
        deadline = time.monotonic() + gen.config.master.shutdown_timeout + KILL_MARGIN
        self.sup.retire(victims, signal.SIGQUIT, deadline)

    def handle_chld(self, reply: Reply | None) -> None:
        pass  # the loop reaps on every iteration

    def handle_status(self, reply: Reply | None) -> None:
        parts = [f"master pid {self.pid} {self.state}{' (old)' if self._oldbin else ''}"]
        for gen in self.gens.all():
            parts.append(f"generation {gen.number} {gen.state}: {len(self.sup.of(gen))} workers")
        _say(reply, True, "; ".join(parts), quiet=True)

    # -- USR2 file names --------------------------------------------------------------

    def _rename_files(self, to_oldbin: bool) -> str | None:
        """Move pidfile, scoreboard and control socket to `.oldbin` names, or back."""
        base = self._pidfile_base
        suffix = pidfile.OLDBIN
        src, dst = (base, base + suffix) if to_oldbin else (base + suffix, base)
        if to_oldbin and os.path.exists(dst):
            return f"{dst} exists: another upgrade is in progress"
        if not to_oldbin and os.path.exists(dst):
            return f"{dst} belongs to another master"
        pidfile.rename(src, dst)
        self.pidfile = dst
        self.board.rename(self.board.path + suffix if to_oldbin else self.board.path[:-len(suffix)])
        if self.control is not None:
            path = self.control.path
            self.control.rename(path + suffix if to_oldbin else path[:-len(suffix)])
        self._oldbin = to_oldbin
        self._publish()
        if not to_oldbin:
            self.notify.ready(f"generation {self.gens.newest_number} serving")  # MAINPID back to us
        return None


def _say(reply: Reply | None, ok: bool, message: str, quiet: bool = False) -> None:
    if not quiet:
        (log.info if ok else log.error)("%s", message)
    if reply is not None:
        reply(ok, message)
