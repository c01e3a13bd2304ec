"""The scoreboard: slots reserved by the master, written by a forked child, read by name."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from forkproxy import scoreboard as sb


def test_reserve_publish_read_release(tmp_path: Path) -> None:
    board = sb.Scoreboard.create(str(tmp_path / "board"), nslots=4)
    n = board.reserve(generation=3, index=1)
    reader = sb.Scoreboard.open(str(tmp_path / "board"))
    assert reader.entries() == []  # reserved, pid unknown yet: invisible
    board.set_pid(n, 4242)
    info = reader.read(n)
    assert info is not None and info.pid == 4242 and info.state == sb.STARTING
    slot = board.slot(n, generation=3, index=1)
    slot.publish(state=sb.READY, connections=5, tunnels=2, requests=99)
    (info,) = reader.entries()
    assert (info.pid, info.generation, info.index, info.state_name) == (os.getpid(), 3, 1, "ready")
    assert (info.connections, info.tunnels, info.requests) == (5, 2, 99)
    assert info.heartbeat > 0 and info.started > 0
    board.release(n)
    assert reader.entries() == []
    reader.close()
    board.close()


def test_a_forked_child_writes_through_the_shared_mapping(tmp_path: Path) -> None:
    board = sb.Scoreboard.create(str(tmp_path / "board"), nslots=2)
    n = board.reserve(generation=1, index=0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        board.slot(n, 1, 0).publish(state=sb.DRAINING, connections=1, tunnels=0, requests=7)
        os._exit(0)
    board.set_pid(n, pid)
    os.waitpid(pid, 0)
    assert board.state_of(n) == sb.DRAINING
    info = board.read(n)
    assert info is not None and info.pid == pid and info.requests == 7


def test_full_board_and_header(tmp_path: Path) -> None:
    board = sb.Scoreboard.create(str(tmp_path / "board"), nslots=1)
    board.set_master(generation=5, state=sb.MASTER_IDLE)
    board.reserve(1, 0)
    with pytest.raises(OSError, match="full"):
        board.reserve(1, 1)
    m = sb.Scoreboard.open(board.path).master()
    assert (m.pid, m.generation, m.state_name) == (os.getpid(), 5, "idle")


def test_create_replaces_atomically_and_rename(tmp_path: Path) -> None:
    path = str(tmp_path / "board")
    old = sb.Scoreboard.create(path, nslots=2)
    old.rename(path + ".oldbin")
    new = sb.Scoreboard.create(path, nslots=2)
    assert os.path.exists(path) and os.path.exists(path + ".oldbin")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    new.unlink()
    old.unlink()
    assert list(tmp_path.iterdir()) == []


def test_not_a_scoreboard(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"x" * 200)
    with pytest.raises(ValueError):
        sb.Scoreboard.open(str(bad))


def _worker(board: sb.Scoreboard, pid: int, generation: int, state: int, connections: int,
            tunnels: int = 0) -> sb.Slot:
    n = board.reserve(generation=generation, index=0)
    board.set_pid(n, pid)
    slot = board.slot(n, generation, 0)
    slot.pid = pid  # stand-ins for other processes
    slot.publish(state=state, connections=connections, tunnels=tunnels, requests=0)
    return slot


def test_siblings_see_only_ready_workers_of_their_generation(tmp_path: Path) -> None:
    board = sb.Scoreboard.create(str(tmp_path / "board"), nslots=8)
    me = _worker(board, 100, 2, sb.READY, 9)
    _worker(board, 101, 2, sb.READY, 7, tunnels=3)   # load 10
    _worker(board, 102, 2, sb.READY, 4, tunnels=2)   # load 6: the least
    _worker(board, 103, 2, sb.DRAINING, 0)           # not accepting
    _worker(board, 104, 1, sb.READY, 0)              # an older generation
    siblings = me.siblings()
    assert not siblings and siblings.least(0.0, 1.0) is None  # nothing until the first refresh
    siblings.refresh()
    now = time.monotonic()  # the heartbeat clock
    assert siblings.least(now, 60.0) == (6, 102)
    assert siblings.load_of(101) == 10 and siblings.load_of(103) is None


def test_siblings_follow_published_load_and_skip_stale_or_replaced_ones(tmp_path: Path) -> None:
    board = sb.Scoreboard.create(str(tmp_path / "board"), nslots=8)
    me = _worker(board, 100, 1, sb.READY, 0)
    a = _worker(board, 101, 1, sb.READY, 5)
    b = _worker(board, 102, 1, sb.READY, 3)
    siblings = me.siblings()
    siblings.refresh()
    now = time.monotonic()
    assert siblings.least(now, 60.0) == (3, 102)
    b.set_load(8, 1)  # b accepted a burst: a is now the least loaded
    assert siblings.least(now, 60.0) == (5, 101)
    assert siblings.least(now + 120.0, 60.0) is None  # every heartbeat stale
    siblings.ignore(101)  # a did not answer a kick
    assert siblings.least(now, 60.0) == (9, 102)
    siblings.refresh()
    assert siblings.least(now, 60.0) == (5, 101)
    a.publish(state=sb.DRAINING, connections=5, tunnels=0, requests=0)
    assert siblings.least(now, 60.0) == (9, 102)  # left READY since the refresh
