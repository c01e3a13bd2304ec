"""The master's UNIX control socket and its client (layer 5; HAProxy's master CLI).

Protocol: the client connects, sends one verb and a newline (`reload\\n`), and reads one
JSON line back: `{"ok": true|false, "message": "...", ...}`; then both sides close.

Invariants:
- The server never blocks the master loop: the listening socket and every connection
  are non-blocking and driven by the master's selector; a connection that sends no
  complete line within CONN_TIMEOUT, or more than MAX_LINE bytes, is closed.
- A verb is answered exactly once, possibly much later (`reload` answers when the new
  generation is ready or has failed), through the `Reply` callable handed to dispatch.
- The socket file is unlinked only by the master that bound it (checked by inode), so a
  master never removes its successor's socket.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("forkproxy.master")

Reply = Callable[[bool, str], None]
Dispatch = Callable[[str, Reply], None]

MAX_LINE = 1024
CONN_TIMEOUT = 5.0


class ControlError(Exception):
    """The control socket could not be reached or answered nonsense."""


class _Conn:
    __slots__ = ("answered", "buf", "deadline", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.deadline = time.monotonic() + CONN_TIMEOUT
        self.answered = False


class ControlServer:
    def __init__(self, path: str, selector: selectors.BaseSelector, dispatch: Dispatch) -> None:
        self.path = path
        self._sel = selector
        self._dispatch = dispatch
        self._conns: dict[int, _Conn] = {}
        _clear_stale(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(path)
            os.chmod(path, 0o600)
            self._sock.listen(16)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._ino = os.stat(path).st_ino
        selector.register(self._sock, selectors.EVENT_READ, self._on_accept)

    def sockets(self) -> list[socket.socket]:
        """Everything a forked worker must close."""
        return [self._sock] + [c.sock for c in self._conns.values()]

    def _on_accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("control socket accept: %s", e)
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, self._reader(conn))

    def _reader(self, conn: _Conn) -> Callable[[], None]:
        return lambda: self._on_read(conn)

    def _on_read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_LINE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        if b"\n" not in conn.buf:
            if len(conn.buf) > MAX_LINE:
                self._drop(conn)
            return
        verb = conn.buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        self._sel.unregister(conn.sock)
        conn.deadline = float("inf")  # the answer may take as long as a reload takes
        self._dispatch(verb, lambda ok, message: self._answer(conn, ok, message))

    def _answer(self, conn: _Conn, ok: bool, message: str, **extra: Any) -> None:
        if conn.answered:
            return
        conn.answered = True
        line = json.dumps({"ok": ok, "message": message, **extra}).encode() + b"\n"
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(line)
        except OSError:
            pass  # the client gave up waiting; the master's verdict is in the error log
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _drop(self, conn: _Conn) -> None:
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline < now]:
            self._drop(conn)

    def rename(self, path: str) -> None:
        os.replace(self.path, path)
        self.path = path

    def close(self) -> None:
        for conn in list(self._conns.values()):
            if not conn.answered and conn.deadline == float("inf"):
                self._answer(conn, False, "the master is exiting")
            else:
                self._drop(conn)
        try:
            self._sel.unregister(self._sock)
        except (KeyError, ValueError):
            pass
        self._sock.close()
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to steal a live one."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"control socket {path} is in use by another master")


def request(path: str, verb: str, timeout: float) -> dict[str, Any]:
    """Send one verb to the master at `path` and return its JSON answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as e:
            raise ControlError(f"cannot reach the master at {path}: {e.strerror or e}") from e
        sock.sendall(verb.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            try:
                data = sock.recv(65536)
            except TimeoutError as e:
                raise ControlError(f"no answer from the master within {timeout:g}s") from e
            if not data:
                break
            buf += data
    finally:
        sock.close()
    try:
        answer = json.loads(buf.split(b"\n", 1)[0])
    except ValueError as e:
        raise ControlError("the master closed the control connection without an answer") from e
    if not isinstance(answer, dict):
        raise ControlError("the master answered nonsense")
    return answer
