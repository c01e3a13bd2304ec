"""Sockets: listeners, non-blocking connects and socket options (layer 2).

Invariants: every socket this module hands out is non-blocking; listeners are bound
once by the master and inherited by workers through fork; nothing here knows HTTP.
"""

from __future__ import annotations

import errno
import socket
import struct

# SO_LINGER with a zero timeout: close() sends RST instead of FIN (aborts only).
_LINGER_ABORT = struct.pack("ii", 1, 0)
_PEEK_NOWAIT = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # a plain int: IntFlag "|" runs Python code
# struct tcp_info up to tcpi_unacked, which a listening socket fills with its accept queue length
_TCP_INFO_UNACKED = struct.Struct("24xI")


class Listener:
    """A listening socket, the address the config asked for, and the one bound."""

    __slots__ = ("sock", "address", "bound")

    def __init__(self, sock: socket.socket, address: tuple[str, int], bound: tuple[str, int] | None = None) -> None:
        self.sock = sock
        self.address = address
        if bound is None:
            host, port = sock.getsockname()[:2]
            bound = (host, port)
        self.bound = bound

    def __repr__(self) -> str:
        return f"Listener({self.address[0]}:{self.address[1]} bound {self.bound[0]}:{self.bound[1]})"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_listener(host: str, port: int, backlog: int, reuseport: bool = False) -> socket.socket:
    """Bind and listen; non-blocking, SO_REUSEADDR so a restart does not wait for TIME_WAIT."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def start_connect(host: str, port: int) -> socket.socket:
    """Begin a non-blocking connect; the caller waits for writability, then calls connect_error()."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = sock.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
        sock.close()
        raise OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err, err)}")
    return sock


def connect_error(sock: socket.socket) -> int:
    """0 once a non-blocking connect succeeded, else its errno."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def accept_queue_length(sock: socket.socket) -> int:
    """How many connections wait in a listening TCP socket's accept queue."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_UNACKED.size)
    return int(_TCP_INFO_UNACKED.unpack_from(info)[0])


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def abort(sock: socket.socket) -> None:
    """Close with RST: the peer must not mistake an aborted exchange for a complete one."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass
    sock.close()


def input_pending(sock: socket.socket) -> bool:
    """True if EOF, an error or bytes wait on a socket that looked idle (MSG_PEEK, no wait)."""
    try:
        sock.recv(1, _PEEK_NOWAIT)
        return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
