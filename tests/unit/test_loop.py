"""The event loop: readiness handlers on real sockets, and the timing wheel."""

from __future__ import annotations

import gc
import socket
import time
import weakref

from forkproxy.loop import EXCLUSIVE, IN, OUT, EventLoop, Timer


def run_until(loop: EventLoop, cond, timeout: float = 3.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        loop.run_once(0.01)


def test_handlers_get_readiness_and_modify_is_lazy():
    loop = EventLoop()
    a, b = socket.socketpair()
    a.setblocking(False)
    seen: list[int] = []
    loop.add(a.fileno(), IN, seen.append)
    b.send(b"x")
    run_until(loop, lambda: seen)
    assert seen[0] & IN
    loop.modify(a.fileno(), IN)  # unchanged: no syscall, no error
    loop.modify(a.fileno(), OUT)
    assert loop.mask(a.fileno()) == OUT
    loop.remove(a.fileno())
    assert not loop.watching(a.fileno())
    loop.remove(a.fileno())  # removing twice is harmless
    a.close(), b.close()
    loop.close()


def test_exclusive_listener_accepts():
    loop = EventLoop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    accepted = []
    loop.add(lsock.fileno(), IN | EXCLUSIVE, lambda ev: accepted.append(lsock.accept()))
    c = socket.create_connection(lsock.getsockname())
    run_until(loop, lambda: accepted)
    accepted[0][0].close(), c.close(), lsock.close()
    loop.close()


def test_timers_fire_once_in_deadline_order_and_extend_cheaply():
    loop = EventLoop(tick=0.01)
    fired: list[str] = []
    t1 = loop.call_later(0.05, lambda: fired.append("a"))
    loop.call_later(0.02, lambda: fired.append("b"))
    t1.deadline = loop.now + 0.15  # an extension is an assignment
    run_until(loop, lambda: fired == ["b"])
    time.sleep(0.06)
    loop.run_once(0)
    assert fired == ["b"], "an extended timer fired at its old deadline"
    run_until(loop, lambda: fired == ["b", "a"])
    time.sleep(0.05)
    loop.run_once(0)
    assert fired == ["b", "a"]


def test_earlier_rearm_and_disarm():
    loop = EventLoop(tick=0.01)
    fired: list[int] = []
    t = Timer(lambda: fired.append(1))
    loop.arm(t, loop.now + 10)
    loop.arm(t, loop.now + 0.02)  # earlier: moves to an earlier bucket
    run_until(loop, lambda: fired)
    u = loop.call_later(0.02, lambda: fired.append(2))
    loop.disarm(u)
    time.sleep(0.05)
    loop.run_once(0)
    assert fired == [1]


def test_disarm_drops_the_wheels_reference():
    """A closed connection with a long timeout must be freed now, not when its bucket comes up."""
    loop = EventLoop()

    class Owner:
        def __init__(self) -> None:
            self.timer = Timer(self.expire)

        def expire(self) -> None:
            pass

    owner = Owner()
    loop.arm(owner.timer, loop.now + 3600)
    ref = weakref.ref(owner)
    loop.disarm(owner.timer)
    del owner
    gc.collect()
    assert ref() is None
