"""Generations and reload: a state machine the master loop steps, never a wait (layer 5).

    starting --all workers READY--> active --reload committed / WINCH / QUIT--> draining
    starting --a worker died, or ready_timeout--> failed      (old one untouched)
    draining | failed --last worker reaped--> gone            (listeners pruned)

Invariants:
- At most one generation is active and at most one is starting. The old generation is
  told to drain (SIGQUIT) only after every worker of the new one reported READY in the
  scoreboard, so some generation is always accepting on every listening socket.
- A failed reload touches nothing that ran before it: the starting generation's workers
  that never reported READY are SIGKILLed; those that did (they accept at once, so they
  may hold clients) drain like an old generation. Its freshly bound listeners are pruned
  when its workers are gone, and every waiter gets the reason. The reason is also
  logged, once.
- Draining generations beyond max_draining_generations get SIGUSR2 (their final
  close_spread window starts now), oldest first, once each; nothing is killed early:
  each draining worker's kill deadline stays shutdown_timeout + KILL_MARGIN after its QUIT.
- Listening sockets are closed only by `ListenerSet.prune`, after a generation is gone.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from .control import Reply
from .listenset import ListenerSet
from .supervise import KILL_MARGIN, Generation, Supervisor, WorkerProc, describe_status

log = logging.getLogger("forkproxy.master")

FAST_STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL on a fast stop


class Generations:
    def __init__(self, sup: Supervisor, listeners: ListenerSet, first_number: int) -> None:
        self.sup = sup
        self.listeners = listeners
        self.active: Generation | None = None
        self.starting: Generation | None = None
        self.draining: list[Generation] = []  # draining and failed, oldest first
        self._next_number = first_number

    def _new(self, config: Any) -> Generation:
        listeners = self.listeners.ensure(config)  # raises OSError with the address
        gen = Generation(self._next_number, config, listeners, config.master.workers)
        self._next_number += 1
        return gen

    @property
    def newest_number(self) -> int:
        return self._next_number - 1

    # -- start, reload ----------------------------------------------------------------

    def start_first(self, config: Any) -> Generation:
        """The initial generation is active at once (its workers crash-loop with back-off)."""
        gen = self._new(config)
        gen.state = "active"
        self.active = gen
        self.sup.fill(gen)
        return gen

    def begin_reload(self, config: Any, reply: Reply | None) -> None:
        """Fork a new generation for a validated config; the loop commits or fails it."""
        try:
            gen = self._new(config)
        except OSError as e:
            self.listeners.prune(self.configs_in_use())
            self._verdict(reply, False, f"reload failed: {e.strerror or e}")
            return
        gen.ready_deadline = time.monotonic() + config.master.ready_timeout
        if reply is not None:
            gen.waiters.append(reply)
        self.starting = gen
        log.info("reload: starting generation %d (%d workers)", gen.number, gen.wanted)
        self.sup.fill(gen)

    def step(self, now: float) -> None:
        """Advance: commit or fail the starting generation, announce the active one."""
        gen = self.starting
        if gen is not None:
            workers = self.sup.of(gen)
            if len(workers) >= gen.wanted and all(w.ready for w in workers):
                self._commit(gen)
            elif now >= gen.ready_deadline:
                missing = sum(1 for w in workers if not w.ready) + max(0, gen.wanted - len(workers))
                self._fail(gen, f"{missing} of {gen.wanted} workers not ready after "
                                f"{gen.config.master.ready_timeout:g}s")
        self.sweep()
        active = self.active
        if active is not None and not active.announced:
            workers = [w for w in self.sup.of(active) if not w.retired]
            if len(workers) >= active.wanted and all(w.ready for w in workers):
                active.announced = True
                log.info("generation %d ready: %d workers serving", active.number, active.wanted)

    def _commit(self, gen: Generation) -> None:
        old, self.active, self.starting = self.active, gen, None
        gen.state = "active"
        gen.announced = True
        self.sup.reset_backoff()
        log.info("generation %d ready: %d workers serving", gen.number, gen.wanted)
        if old is not None:
            self.drain(old, "reload")
        self._cap(gen.config.master.max_draining_generations)
        self._answer(gen, True, f"generation {gen.number} ready: {gen.wanted} workers serving")

    def _fail(self, gen: Generation, why: str) -> None:
        self.starting = None
        gen.state = "failed"
        self.draining.append(gen)
        # a worker that reported READY accepts already and may hold clients: it drains
        # like an old generation; the others are killed
        workers = self.sup.of(gen)
        ready = [w for w in workers if w.ready and not w.retired]
        now = time.monotonic()
        self.sup.retire(ready, signal.SIGQUIT, now + gen.config.master.shutdown_timeout + KILL_MARGIN)
        self.sup.retire([w for w in workers if w not in ready], signal.SIGKILL, now)
        self._answer(gen, False, f"reload failed: generation {gen.number}: {why}; "
                                 "the running workers are untouched")

    def _answer(self, gen: Generation, ok: bool, message: str) -> None:
        waiters, gen.waiters = gen.waiters, []
        if not waiters and not ok:  # success was logged by _commit already
            log.error("%s", message)
        for i, reply in enumerate(waiters):
            self._verdict(reply, ok, message, quiet=i > 0)

    @staticmethod
    def _verdict(reply: Reply | None, ok: bool, message: str, quiet: bool = False) -> None:
        if not quiet and not ok:
            log.error("%s", message)
        if reply is not None:
            reply(ok, message)

    # -- draining ---------------------------------------------------------------------

    def drain(self, gen: Generation, why: str) -> None:
        """Tell a generation's workers to drain (SIGQUIT), with their kill deadline."""
        if gen is self.active:
            self.active = None
        gen.state = "draining"
        if gen not in self.draining:
            self.draining.append(gen)
        m = gen.config.master
        deadline = time.monotonic() + m.shutdown_timeout + KILL_MARGIN
        procs = [w for w in self.sup.of(gen) if not w.retired or w.quit_when_replaced]
        log.info("generation %d draining (%s): %d workers, shutdown_timeout %gs",
                 gen.number, why, len(procs), m.shutdown_timeout)
        self.sup.retire(procs, signal.SIGQUIT, deadline)

    def _cap(self, cap: int) -> None:
        patient = [g for g in self.draining if g.state == "draining" and not g.hurried]
        while len(patient) > max(cap, 0):
            gen = patient.pop(0)
            gen.hurried = True
            log.info("more than %d generations draining: generation %d starts its final "
                     "close_spread window now", cap, gen.number)
            self.sup.send(self.sup.of(gen), signal.SIGUSR2)

    def stop(self, fast: bool) -> None:
        """QUIT (graceful) or TERM (fast) every generation; nothing is respawned after."""
        if self.starting is not None:
            self._fail(self.starting, "the master is stopping")
        if fast:
            deadline = time.monotonic() + FAST_STOP_GRACE
            if self.active is not None:
                self.draining.append(self.active)
            for gen in self.draining:
                gen.state = "draining"
            self.active = None
            self.sup.retire(list(self.sup.workers.values()), signal.SIGTERM, deadline)
        elif self.active is not None:
            self.drain(self.active, "stop")

    # -- exits --------------------------------------------------------------------------

    def on_exit(self, proc: WorkerProc, status: int, respawn: bool) -> None:
        gen = proc.gen
        if gen is self.starting and not proc.retired:
            self.sup.handle_exit(proc, status, respawn=False)
            self._fail(gen, f"worker {proc.index} (pid {proc.pid}) {describe_status(status)} "
                            "before it was ready")
        else:
            self.sup.handle_exit(proc, status, respawn=respawn and gen is self.active)
        self.sweep()

    def sweep(self) -> None:
        """Forget draining or failed generations with no worker left; prune listeners."""
        gone = [g for g in self.draining if not self.sup.of(g)]
        for gen in gone:
            self.draining.remove(gen)
            if gen.state == "draining":
                log.info("generation %d finished", gen.number)
            gen.state = "gone"
        if gone:
            self.listeners.prune(self.configs_in_use())

    def configs_in_use(self) -> list[Any]:
        gens = [g for g in (self.active, self.starting) if g is not None] + self.draining
        return [g.config for g in gens]

    def all(self) -> list[Generation]:
        return [g for g in (self.starting, self.active) if g is not None] + self.draining[::-1]
