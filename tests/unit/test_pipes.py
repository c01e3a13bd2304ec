"""PipePool: lending, the cap, the idle cap, kills, sizes, and running out of fds."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from forkproxy import pipes


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_splice_is_supported_here_and_probed_once() -> None:
    assert pipes.splice_supported() is True
    assert pipes.splice_supported() is True


def test_get_lends_non_blocking_pipes_up_to_the_cap() -> None:
    pool = pipes.PipePool(cap=2, idle_cap=2, pipe_size=65536)
    a, b = pool.get(), pool.get()
    assert a is not None and b is not None and a != b
    assert pool.get() is None  # the cap: the caller copies instead
    assert (pool.alive, pool.idle) == (2, 0)
    r, w = a
    assert not os.get_blocking(r) and not os.get_blocking(w)
    with pytest.raises(BlockingIOError):
        os.read(r, 1)
    pool.put(a)
    assert (pool.alive, pool.idle) == (2, 1)
    assert pool.get() == a  # an idle pipe is reused before a new one is made
    pool.put(a)
    pool.put(b)
    pool.close()
    assert (pool.alive, pool.idle) == (0, 0)
    assert not any(_is_open(fd) for fd in (*a, *b))


def test_cap_zero_never_lends() -> None:
    pool = pipes.PipePool(cap=0, idle_cap=16, pipe_size=65536)
    assert pool.get() is None
    assert (pool.alive, pool.idle, pool.idle_cap) == (0, 0, 0)


def test_put_beyond_idle_cap_closes() -> None:
    pool = pipes.PipePool(cap=8, idle_cap=1, pipe_size=65536)
    lent = [pool.get() for _ in range(3)]
    assert all(p is not None for p in lent)
    for p in lent:
        pool.put(p)  # type: ignore[arg-type]
    assert (pool.alive, pool.idle) == (1, 1)
    assert [_is_open(p[0]) for p in lent] == [True, False, False]  # type: ignore[index]
    pool.close()


def test_kill_closes_a_pipe_that_holds_bytes() -> None:
    pool = pipes.PipePool(cap=4, idle_cap=4, pipe_size=65536)
    p = pool.get()
    assert p is not None
    os.write(p[1], b"someone else's bytes")
    pool.kill(p)
    assert (pool.alive, pool.idle) == (0, 0)
    assert not _is_open(p[0]) and not _is_open(p[1])
    fresh = pool.get()
    assert fresh is not None
    with pytest.raises(BlockingIOError):
        os.read(fresh[0], 100)  # a new pipe starts empty
    pool.put(fresh)
    pool.close()


def test_pipe_size_is_set_and_clamped_to_pipe_max_size() -> None:
    limit = pipes.pipe_max_size()
    pool = pipes.PipePool(cap=2, idle_cap=2, pipe_size=1 << 30)
    assert pool.pipe_size == limit
    p = pool.get()
    assert p is not None and pool.size_of(p) == limit
    pool.put(p)
    small = pipes.PipePool(cap=1, idle_cap=1, pipe_size=100)
    assert small.pipe_size == 4096  # at least a page
    q = small.get()
    assert q is not None and small.size_of(q) == 4096
    small.put(q)
    pool.close()
    small.close()


def test_pipe_carries_socket_bytes_with_splice() -> None:
    pool = pipes.PipePool(cap=1, idle_cap=1, pipe_size=1 << 20)
    a, b = socket.socketpair()
    with a, b:
        p = pool.get()
        assert p is not None
        a.sendall(b"x" * 5000)
        n = os.splice(b.fileno(), p[1], 1 << 20, flags=os.SPLICE_F_NONBLOCK)
        assert n == 5000
        assert os.splice(p[0], a.fileno(), n, flags=os.SPLICE_F_NONBLOCK) == 5000
        assert b.recv(10000) == b"x" * 5000
        pool.put(p)
    pool.close()


def test_running_out_of_fds_means_copy_not_an_error() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            pool = pipes.PipePool(cap=100, idle_cap=4, pipe_size=65536)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            nfds = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (nfds + 4, hard))
            got = [pool.get() for _ in range(10)]
            lent = [p for p in got if p is not None]
            code = 0 if got[-1] is None and pool.alive == len(lent) < 10 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
