"""The worker's event loop: epoll readiness, handlers per fd, a timing wheel (layer 2).

Invariants:
- One Python call per ready fd: `handlers[fd](events)`; no Handle objects, no queue.
- Masks are raw epoll bits, so listeners can use EPOLLEXCLUSIVE (the stock
  selectors.EpollSelector only passes READ/WRITE). EPOLL_CTL_MOD cannot carry
  EPOLLEXCLUSIVE, so a listener is paused by remove() and resumed by add().
- `modify` is a no-op when the mask does not change (no syscall).
- Remove an fd before closing it: a closed fd whose file is shared with another
  process (a listening socket) would otherwise stay in the epoll set and keep firing.
- Timers live in a hashed timing wheel keyed by tick number. Extending a timer is an
  assignment to `timer.deadline`; the wheel notices when the timer's bucket comes up
  and moves it on. Cost grows with timers that come due, not with all timers.
"""

from __future__ import annotations

import errno
import select
import time
from collections.abc import Callable

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP
EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)

Handler = Callable[[int], None]


class Timer:
    """A deadline and what to call when it passes. `deadline = None` disarms it."""

    __slots__ = ("deadline", "callback", "bucket")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.deadline: float | None = None
        self.bucket = -1


class EventLoop:
    __slots__ = ("_epoll", "_handlers", "_masks", "_buckets", "_tick", "_last_tick", "_next_tick_at", "now",
                 "running")

    def __init__(self, tick: float = 0.1) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._masks: dict[int, int] = {}
        self._buckets: dict[int, set[Timer]] = {}
        self._tick = tick
        self.now = time.monotonic()
        self._last_tick = int(self.now / tick)
        self._next_tick_at = (self._last_tick + 1) * tick
        self.running = True

    # -- readiness ---------------------------------------------------------------

    def add(self, fd: int, mask: int, handler: Handler) -> None:
        self._epoll.register(fd, mask)
        self._handlers[fd] = handler
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        if self._masks[fd] != mask:
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask

    def set_handler(self, fd: int, handler: Handler) -> None:
        self._handlers[fd] = handler

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            del self._masks[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def watching(self, fd: int) -> bool:
        return fd in self._handlers

    def mask(self, fd: int) -> int:
        return self._masks.get(fd, 0)

    def __len__(self) -> int:
        return len(self._handlers)

    # -- timers ------------------------------------------------------------------

    def arm(self, timer: Timer, deadline: float) -> None:
        """Set a timer's deadline; an extension is cheap (the wheel moves it lazily)."""
        timer.deadline = deadline
        bucket = int(deadline / self._tick)
        if timer.bucket < 0 or bucket < timer.bucket:
            if bucket <= self._last_tick:
                bucket = self._last_tick + 1
            old = self._buckets.get(timer.bucket) if timer.bucket >= 0 else None
            if old is not None:
                old.discard(timer)
            timer.bucket = bucket
            group = self._buckets.get(bucket)
            if group is None:
                self._buckets[bucket] = {timer}
            else:
                group.add(timer)

    def disarm(self, timer: Timer) -> None:
        """Forget a timer; the wheel drops its reference so the owner can be freed at once."""
        timer.deadline = None
        if timer.bucket >= 0:
            group = self._buckets.get(timer.bucket)
            if group is not None:
                group.discard(timer)
                if not group:
                    del self._buckets[timer.bucket]
            timer.bucket = -1

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        t = Timer(callback)
        self.arm(t, self.now + delay)
        return t

    def _run_timers(self) -> None:
        tick_now = int(self.now / self._tick)
        last = self._last_tick
        if tick_now <= last:
            return
        self._last_tick = tick_now
        self._next_tick_at = (tick_now + 1) * self._tick
        buckets = self._buckets
        if not buckets:
            return
        if tick_now - last > len(buckets):
            due = sorted(b for b in buckets if b <= tick_now)
        else:
            due = [b for b in range(last + 1, tick_now + 1) if b in buckets]
        now = self.now
        for b in due:
            for timer in buckets.pop(b):
                if timer.bucket != b:
                    continue  # re-armed earlier into another bucket
                timer.bucket = -1
                deadline = timer.deadline
                if deadline is None:
                    continue
                if deadline > now:
                    self.arm(timer, deadline)
                else:
                    timer.deadline = None
                    timer.callback()

    # -- running -----------------------------------------------------------------

    def run_once(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self._tick if self._buckets else 1.0
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            events = []
        self.now = time.monotonic()
        handlers = self._handlers
        for fd, ev in events:
            handler = handlers.get(fd)
            if handler is not None:
                handler(ev)
        if self.now >= self._next_tick_at:  # most iterations end within the current tick
            self._run_timers()

    def close(self) -> None:
        self._handlers.clear()
        self._masks.clear()
        self._buckets.clear()
        try:
            self._epoll.close()
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
