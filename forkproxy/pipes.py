"""Pipes for zero-copy relays: a per-worker pool and a probe for splice (layer 2).

Invariants:
- A pipe is a `(read_fd, write_fd)` pair, both non-blocking and close-on-exec.
- `alive` counts every pipe this pool created and has not closed (lent out or idle);
  it never exceeds `cap`. `cap == 0` means the pool never lends (callers copy).
- Only an EMPTY pipe goes back with `put()`; the caller knows how many bytes it left
  in a pipe from splice's return values. A pipe that may still hold bytes goes to
  `kill()` and is closed, so one connection's bytes never reach another.
- At most `idle_cap` pipes wait idle; a pipe returned beyond that is closed, so an idle
  worker holds at most `2 * idle_cap` pipe fds.
- The pipe size is set with F_SETPIPE_SZ, clamped to /proc/sys/fs/pipe-max-size (the
  unprivileged limit). When the user is over `pipe-user-pages-soft` the kernel refuses
  (EPERM) and the pipe keeps its default size: the pool then stops asking.
- Running out of fds (EMFILE/ENFILE) is not an error: `get()` returns None and the
  caller takes the copy path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_DEFAULT_MAX_SIZE = 1 << 20
_PAGE = 4096

_supported: bool | None = None


def pipe_max_size() -> int:
    """The largest pipe an unprivileged process may ask for (fs.pipe-max-size)."""
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as f:
            return max(_PAGE, int(f.read().strip()))
    except (OSError, ValueError):
        return _DEFAULT_MAX_SIZE


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        a = socket.create_connection(lsock.getsockname()[:2], timeout=2.0)
        b, _ = lsock.accept()
    return a, b


def _probe() -> bool:
    if not hasattr(os, "splice"):
        return False
    try:
        a, b = _loopback_pair()
    except OSError:
        return False
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        a.sendall(b"xy")
        b.settimeout(2.0)
        b.recv(1, socket.MSG_PEEK)  # wait until the bytes are there
        flags = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
        n = os.splice(b.fileno(), w, 2, flags=flags)
        if n != 2:
            return False
        n = os.splice(r, a.fileno(), 2, flags=flags)
        return n == 2 and b.recv(2) == b"xy"
    except OSError:
        return False
    finally:
        os.close(r)
        os.close(w)
        a.close()
        b.close()


def splice_supported() -> bool:
    """Whether os.splice moves bytes socket -> pipe -> socket here (probed once per process)."""
    global _supported
    if _supported is None:
        _supported = _probe()
    return _supported


class PipePool:
    """Pipes lent to tunnel directions while they have bytes in flight."""

    __slots__ = ("cap", "idle_cap", "pipe_size", "alive", "_idle", "_resize")

    def __init__(self, cap: int, idle_cap: int, pipe_size: int) -> None:
        self.cap = max(0, cap)
        self.idle_cap = max(0, min(idle_cap, self.cap))
        self.pipe_size = max(_PAGE, min(pipe_size, pipe_max_size()))
        self.alive = 0
        self._idle: list[tuple[int, int]] = []
        self._resize = True  # False once the kernel refused a resize (EPERM)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def get(self) -> tuple[int, int] | None:
        """An empty pipe, or None when the cap is reached or fds ran out (then copy)."""
        idle = self._idle
        if idle:
            return idle.pop()
        if self.alive >= self.cap:
            return None
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                return None
            raise
        if self._resize:
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, self.pipe_size)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL, errno.ENOMEM):
                    os.close(r)
                    os.close(w)
                    raise
                self._resize = False  # over pipe-user-pages-soft: keep default-sized pipes
        self.alive += 1
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        """Return an EMPTY pipe; it waits idle, or is closed beyond idle_cap."""
        if len(self._idle) < self.idle_cap:
            self._idle.append(pipe)
        else:
            self.kill(pipe)

    def kill(self, pipe: tuple[int, int]) -> None:
        """Close a pipe that may hold bytes; it is never reused."""
        self.alive -= 1
        for fd in pipe:
            try:
                os.close(fd)
            except OSError:
                pass

    def size_of(self, pipe: tuple[int, int]) -> int:
        """The kernel's size of a pipe (for tests and status)."""
        return int(fcntl.fcntl(pipe[1], _F_GETPIPE_SZ))

    def close(self) -> None:
        """Close the idle pipes (a worker exiting); lent pipes are closed by their tunnels."""
        while self._idle:
            self.kill(self._idle.pop())
