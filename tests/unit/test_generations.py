"""A failed reload: what happens to the starting generation's workers (real child
processes stand in for workers, so the signals they get are real)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

from forkproxy.confmodel import MasterConfig
from forkproxy.generations import Generations
from forkproxy.listenset import ListenerSet
from forkproxy.scoreboard import Scoreboard
from forkproxy.supervise import KILL_MARGIN, Generation, Supervisor, WorkerProc


def test_a_failed_generation_drains_its_ready_workers_and_kills_the_others(tmp_path: Path) -> None:
    board = Scoreboard.create(str(tmp_path / "board"), 8)
    sup = Supervisor(board, list, list, [])
    gens = Generations(sup, ListenerSet(), 1)
    config = SimpleNamespace(master=MasterConfig(workers=2, shutdown_timeout=30.0))
    gen = Generation(2, config, [], 2)
    gens.starting = gen
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        ready, unready = (WorkerProc(c.pid, i, gen, i, time.monotonic()) for i, c in enumerate(children))
        ready.ready = True
        sup.workers = {w.pid: w for w in (ready, unready)}
        before = time.monotonic()
        gens.step(before + 3600)  # past the ready deadline: the reload fails
        assert gens.starting is None and gen.state == "failed"
        assert [c.wait(10) for c in children] == [-signal.SIGQUIT, -signal.SIGKILL]
        assert ready.retired and unready.retired
        assert ready.kill_at is not None and ready.kill_at >= before + 30.0 + KILL_MARGIN
        assert unready.kill_at is not None and unready.kill_at <= time.monotonic()
    finally:
        for c in children:
            c.kill()
            c.wait()
        board.unlink()
