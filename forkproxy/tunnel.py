"""An upgraded connection relayed as bytes both ways: splice or copy (layer 3).

One relay function, `_relay(flow)`, serves both directions (nginx `process_upgraded`):
a `_Flow` is one direction (client -> upstream is "up", upstream -> client is "down"),
an `_End` is one socket. Per flow, each readiness event: flush what is pending, then read
and write until the reader is drained, the writer pushes back, or the round limit.

Invariants:
- Bytes in flight live in exactly one place: the flow's pipe (`inpipe` counts them, from
  splice's return values) or its `pending` buffer. While a flow has bytes in flight its
  reader is not read (back-pressure) and its writer is watched for EPOLLOUT; otherwise the
  reader is watched for EPOLLIN and the writer is not watched for EPOLLOUT.
- A flow holds a pipe only while it has bytes in flight: an empty pipe goes back to the
  pool at the end of `_relay`; a pipe still holding bytes when the tunnel ends is killed.
  A flow holds a `pending` buffer only while its writer pushes back. An idle tunnel holds
  no pipe and no buffer; reads go through the worker's scratch buffer.
- Adaptive path per flow: it copies (recv_into/send) until one read fills SPLICE_AT,
  then splices; COPY_AFTER splice reads below COPY_BELOW in a row switch it back.
- EOF from a reader becomes `shutdown(SHUT_WR)` on its writer once its bytes in flight
  are delivered; the tunnel ends when both flows are done, or `fin_timeout` after the
  first FIN. An error on either socket aborts both (RST). An end that drops bytes still
  in flight towards a socket resets that socket; every other end is a FIN.
- One Timer per tunnel. Traffic only stores `loop.now` in `_last`; the timer fires at the
  earliest deadline it knows, recomputes the true one (idle, fin, send stall) and either
  acts or re-arms itself. Earlier deadlines (a first FIN, a writer pushing back) arm it.
  Idle means nothing moved and nothing waits: while bytes wait for a writer, only that
  writer's send timeout applies.
- An `_End` is registered in the loop while it has a mask or can still report a reset;
  once its write side is shut and nothing is wanted from it, it is removed (a fully shut
  socket would report EPOLLHUP forever).
- Exactly one record per tunnel goes to ctx.tunnel_log, written in `_finish`.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .context import SCRATCH_SIZE as _SCRATCH
from .loop import ERR, IN, OUT, Timer
from .netio import abort

log = logging.getLogger("forkproxy")

if TYPE_CHECKING:
    from .context import WorkerContext
    from .pipes import PipePool

_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)
_HUP = 0x10  # EPOLLHUP
_NO_SPLICE = frozenset((errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP))
_RESETS = frozenset((errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOTCONN))

# Adaptive path, chosen by measurement (README, "Splice and copy"): one 32 B..16 KiB message costs
# less through recv_into/send than through two splices and a pipe; bulk reads (hundreds
# of KiB) cost a third of the CPU per GB when spliced.
SPLICE_AT = 64 * 1024   # a read this large switches the flow to splice
COPY_BELOW = 16 * 1024  # a splice read smaller than this counts as small
COPY_AFTER = 4          # this many small splice reads in a row switch the flow back to copy
MAX_ROUNDS = 16         # reads per readiness event before other fds get their turn
_DISCARD_ROUNDS = 16    # reads of unread bytes thrown away before an orderly close


class _End:
    """One socket of the tunnel."""

    __slots__ = ("sock", "fd", "name", "mask", "watched", "wr_shut", "send_timeout", "handler")

    def __init__(self, sock: socket.socket, name: str, send_timeout: float,
                 handler: Callable[[int], None]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.mask = -1
        self.watched = False
        self.wr_shut = False
        self.send_timeout = send_timeout
        self.handler = handler


class _Flow:
    """One direction: bytes read from `src` and written to `dst`."""

    __slots__ = ("src", "dst", "other", "pipe", "inpipe", "pending", "eof", "done",
                 "splice", "small", "spliced", "copied", "blocked_at", "rbit", "wbit")
    # small: splice reads below COPY_BELOW in a row; -1 once this flow cannot splice at all

    def __init__(self, src: _End, dst: _End) -> None:
        self.src = src
        self.dst = dst
        self.other: _Flow = self
        self.pipe: tuple[int, int] | None = None
        self.inpipe = 0
        self.pending: memoryview | None = None
        self.eof = False
        self.done = False
        self.splice = False  # copy first (see SPLICE_AT)
        self.small = 0
        self.spliced = 0
        self.copied = 0
        self.blocked_at = 0.0
        self.rbit = 0  # IN once _sync has registered the reader
        self.wbit = 0


class Tunnel:
    __slots__ = ("_ctx", "_loop", "_pool", "_client", "_upstream", "_up", "_down", "_timer",
                 "_idle", "_fin_timeout", "_last", "_max_idle", "_fin_at", "_first_fin",
                 "_started", "_wall", "_closed", "location", "client_addr", "upstream_addr",
                 "protocol")

    def __init__(self, ctx: WorkerContext, client: socket.socket, upstream: socket.socket, *,
                 location: str, client_addr: str, upstream_addr: str, protocol: str,
                 idle_timeout: float, fin_timeout: float, send_timeout: float,
                 proxy_send_timeout: float, to_upstream: bytes = b"", to_client: bytes = b"") -> None:
        loop = ctx.loop
        self._ctx = ctx
        self._loop = loop
        pool = ctx.pipes
        self._pool: PipePool | None = pool if pool is not None and pool.cap > 0 else None
        self._client = c = _End(client, "client", send_timeout, self._on_client)
        self._upstream = u = _End(upstream, "upstream", proxy_send_timeout, self._on_upstream)
        self._up = up = _Flow(c, u)
        self._down = down = _Flow(u, c)
        up.other = down
        down.other = up
        self.location = location
        self.client_addr = client_addr
        self.upstream_addr = upstream_addr
        self.protocol = protocol
        self._idle = idle_timeout
        self._fin_timeout = fin_timeout
        now = loop.now
        self._started = now
        self._wall = time.time()
        self._last = now
        self._max_idle = 0.0
        self._fin_at: float | None = None
        self._first_fin = ""
        self._closed = False
        ctx.live.add(self)
        ctx.stats.tunnels += 1
        self._timer = Timer(self._on_timer)
        loop.arm(self._timer, now + idle_timeout)
        if to_upstream:
            up.pending = memoryview(to_upstream)
        if to_client:
            down.pending = memoryview(to_client)
        if to_upstream:
            self._relay(up)  # write first; EPOLLOUT only if the upstream pushes back
        else:
            self._sync(up)
        if self._closed:
            return
        if to_client:
            self._relay(down)
        else:
            self._sync(down)

    # -- readiness ---------------------------------------------------------------

    def _on_client(self, ev: int) -> None:
        try:
            if ev & ERR and self._error(self._client, ev):
                return
            if ev & IN:
                self._relay(self._up)
            if ev & OUT and not self._closed:
                self._relay(self._down)
        except Exception:
            self._internal_error()

    def _on_upstream(self, ev: int) -> None:
        try:
            if ev & ERR and self._error(self._upstream, ev):
                return
            if ev & IN:
                self._relay(self._down)
            if ev & OUT and not self._closed:
                self._relay(self._up)
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        """A bug costs this tunnel (both ends reset), never the worker and all it serves."""
        log.exception("internal error in the tunnel of client %s", self.client_addr)
        self._finish("internal error", reset=True)

    def _error(self, end: _End, ev: int) -> bool:
        """EPOLLERR/EPOLLHUP on `end`: True if the tunnel ended because of it."""
        err = end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(end, err)
            return True
        if ev & _HUP and not ev & IN and not end.wr_shut:
            self._fail(end, errno.ECONNRESET)  # closed under us with the error already taken
            return True
        return False

    # -- the relay ---------------------------------------------------------------

    def _relay(self, f: _Flow) -> None:
        """Move bytes for one direction until it is drained, blocked, or done."""
        if f.done:
            return
        if f.inpipe or f.pending is not None:
            if not self._flush(f):
                return
        now = self._loop.now
        read = False
        if not f.eof:
            src = f.src.sock
            dst = f.dst.sock
            pool = self._pool
            rounds = MAX_ROUNDS
            while rounds:
                rounds -= 1
                if f.splice and pool is not None:
                    pipe = f.pipe
                    if pipe is None:
                        pipe = f.pipe = pool.get()
                    if pipe is not None:
                        try:
                            n = os.splice(f.src.fd, pipe[1], pool.pipe_size, flags=_FLAGS)
                        except BlockingIOError:
                            break
                        except OSError as e:
                            if e.errno in _NO_SPLICE:  # this socket cannot splice: copy for good
                                f.splice = False
                                f.small = -1
                                continue
                            self._fail(f.src, e.errno)
                            return
                        if not n:
                            f.eof = True
                            break
                        read = True
                        try:
                            m = os.splice(pipe[0], f.dst.fd, n, flags=_FLAGS)
                        except BlockingIOError:
                            m = 0
                        except OSError as e:
                            f.inpipe = n
                            self._fail(f.dst, e.errno)
                            return
                        f.spliced += m
                        if m < n:
                            f.inpipe = n - m
                            f.blocked_at = now
                            break
                        if n < SPLICE_AT:
                            if n < COPY_BELOW:
                                f.small += 1
                                if f.small >= COPY_AFTER:
                                    f.splice = False
                            else:
                                f.small = 0
                            break
                        f.small = 0
                        continue
                view = self._ctx.scratch_view
                try:
                    n = src.recv_into(view)
                except BlockingIOError:
                    break
                except OSError as e:
                    self._fail(f.src, e.errno)
                    return
                if not n:
                    f.eof = True
                    break
                read = True
                try:
                    m = dst.send(view[:n])
                except BlockingIOError:
                    m = 0
                except OSError as e:
                    self._fail(f.dst, e.errno)
                    return
                f.copied += m
                if m < n:
                    f.pending = memoryview(bytes(view[m:n]))
                    f.blocked_at = now
                    break
                if n >= SPLICE_AT and pool is not None and f.small >= 0:
                    f.splice = True
                    f.small = 0
                if n < _SCRATCH:
                    break
            pipe = f.pipe
            if pipe is not None and not f.inpipe:
                f.pipe = None
                pool.put(pipe)  # type: ignore[union-attr]
        if read:
            gap = now - self._last
            if gap > self._max_idle:
                self._max_idle = gap
            self._last = now
        if f.inpipe or f.pending is not None:
            self._sync(f)  # the writer pushed back: stop reading, watch for EPOLLOUT
        elif f.eof:
            self._flow_done(f)
        elif f.wbit or not f.rbit:
            self._sync(f)  # back from a push-back; otherwise the masks are already right

    def _flush(self, f: _Flow) -> bool:
        """Write what the flow has in flight; True once nothing is left."""
        try:
            if f.inpipe:
                m = os.splice(f.pipe[0], f.dst.fd, f.inpipe, flags=_FLAGS)  # type: ignore[index]
                f.spliced += m
                f.inpipe -= m
                if not f.inpipe:
                    self._pool.put(f.pipe)  # type: ignore[union-attr, arg-type]
                    f.pipe = None
            else:
                data = f.pending
                m = f.dst.sock.send(data)  # type: ignore[arg-type]
                f.copied += m
                f.pending = None if m == len(data) else data[m:]  # type: ignore[arg-type, index]
        except BlockingIOError:
            m = 0
        except OSError as e:
            self._fail(f.dst, e.errno)
            return False
        if m:  # progress: the writer is alive, and a byte moved
            now = self._loop.now
            f.blocked_at = now
            gap = now - self._last
            if gap > self._max_idle:
                self._max_idle = gap
            self._last = now
        if f.inpipe or f.pending is not None:
            self._sync(f)
            return False
        if f.eof:
            self._flow_done(f)
            return False
        return True

    def _flow_done(self, f: _Flow) -> None:
        """A reader's EOF with nothing left in flight: FIN its writer."""
        f.done = True
        dst = f.dst
        try:
            dst.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self._fail(dst, e.errno)
            return
        dst.wr_shut = True
        if f.other.done:
            self._finish(self._first_fin or f.src.name, reset=False)
            return
        if self._fin_at is None:
            now = self._loop.now
            self._fin_at = now
            self._first_fin = f.src.name
            deadline = now + self._fin_timeout
            timer = self._timer
            if timer.deadline is None or deadline < timer.deadline:
                self._loop.arm(timer, deadline)
        self._sync(f)

    def _sync(self, f: _Flow) -> None:
        """Bring both sockets' epoll masks in line with the flow's state."""
        busy = f.inpipe or f.pending is not None
        f.rbit = 0 if busy or f.eof else IN
        if busy:
            if not f.wbit:
                f.wbit = OUT
                deadline = f.blocked_at + f.dst.send_timeout
                timer = self._timer
                if timer.deadline is None or deadline < timer.deadline:
                    self._loop.arm(timer, deadline)
        elif f.wbit:
            f.wbit = 0  # nothing waits any more: the idle deadline may be the earliest again
            deadline = self._last + self._idle
            timer = self._timer
            if timer.deadline is None or deadline < timer.deadline:
                self._loop.arm(timer, deadline)
        o = f.other
        mask = f.rbit | o.wbit
        if mask != f.src.mask:
            self._watch(f.src, mask)
        mask = o.rbit | f.wbit
        if mask != f.dst.mask:
            self._watch(f.dst, mask)

    def _watch(self, end: _End, mask: int) -> None:
        end.mask = mask
        loop = self._loop
        if not mask and end.wr_shut:
            if end.watched:
                end.watched = False
                loop.remove(end.fd)
        elif end.watched:
            loop.modify(end.fd, mask)
        else:
            end.watched = True
            loop.add(end.fd, mask, end.handler)

    # -- timeouts ----------------------------------------------------------------

    def _on_timer(self) -> None:
        """Idle (nothing moved, nothing waiting), fin and send-stall deadlines, in one timer.

        While bytes wait for a writer, the tunnel is not idle: that writer's send timeout
        decides (nginx would let proxy_read_timeout cut a slow reader short)."""
        if self._closed:
            return
        now = self._loop.now
        nxt = float("inf")
        waiting = False
        for f in (self._up, self._down):
            if f.inpipe or f.pending is not None:
                waiting = True
                deadline = f.blocked_at + f.dst.send_timeout
                if deadline <= now:
                    self._finish("timeout", reset=False)
                    return
                nxt = min(nxt, deadline)
        if not waiting:
            nxt = self._last + self._idle
            if nxt <= now:
                self._finish("timeout", reset=False)
                return
        if self._fin_at is not None:
            deadline = self._fin_at + self._fin_timeout
            if deadline <= now:
                self._finish("fin_timeout", reset=False)
                return
            nxt = min(nxt, deadline)
        self._loop.arm(self._timer, nxt)

    # -- the end -----------------------------------------------------------------

    def drain(self) -> None:
        """A draining worker keeps its tunnels until shutdown(): nothing to do."""

    def shutdown(self, reason: str) -> None:
        """End now: deliver what can be delivered without waiting, then FIN both ways."""
        if self._closed:
            return
        for f in (self._up, self._down):
            if f.inpipe or f.pending is not None:
                self._flush(f)
                if self._closed:
                    return
        self._finish(reason, reset=False)

    def _fail(self, end: _End, err: int | None) -> None:
        """An error on `end`: reset both sides and record who it was."""
        self._finish(end.name if err in _RESETS else "error", reset=True,
                     error=errno.errorcode.get(err or 0, str(err)))

    def _finish(self, reason: str, *, reset: bool, error: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        ctx = self._ctx
        loop = self._loop
        loop.disarm(self._timer)
        pool = self._pool
        for f in (self._up, self._down):
            pipe = f.pipe
            if pipe is not None:
                f.pipe = None
                if f.inpipe:
                    pool.kill(pipe)  # type: ignore[union-attr]
                else:
                    pool.put(pipe)  # type: ignore[union-attr]
        for end in (self._client, self._upstream):
            if end.watched:
                end.watched = False
                loop.remove(end.fd)
        up, down = self._up, self._down
        # A socket that will not get bytes it was owed is reset; otherwise FIN.
        self._close(self._upstream, reset or bool(up.inpipe) or up.pending is not None)
        self._close(self._client, reset or bool(down.inpipe) or down.pending is not None)
        up.pending = down.pending = None
        ctx.live.discard(self)
        ctx.stats.tunnels -= 1
        now = loop.now
        log = ctx.tunnel_log
        if log is not None:
            log.write_json({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "location": self.location,
                "client": self.client_addr, "upstream": self.upstream_addr, "protocol": self.protocol,
                "start": round(self._wall, 3), "duration": round(now - self._started, 3),
                "bytes_up": up.spliced + up.copied, "bytes_down": down.spliced + down.copied,
                "spliced_up": up.spliced, "spliced_down": down.spliced,
                "copied_up": up.copied, "copied_down": down.copied,
                "max_idle": round(max(self._max_idle, now - self._last), 3),
                "end": reason, "reset": reset, "error": error})

    def _close(self, end: _End, reset: bool) -> None:
        sock = end.sock
        if reset:
            abort(sock)
            return
        try:
            if not end.wr_shut:
                sock.shutdown(socket.SHUT_WR)
                end.wr_shut = True
            # Unread bytes at close() would turn the FIN into an RST: read them away.
            view = self._ctx.scratch_view
            for _ in range(_DISCARD_ROUNDS):
                if not sock.recv_into(view):
                    break
        except OSError:
            pass
        sock.close()

    # -- for tests and status ----------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def holds_pipes(self) -> int:
        return (self._up.pipe is not None) + (self._down.pipe is not None)
