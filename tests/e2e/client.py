"""A raw-socket HTTP/1.1 client for end-to-end tests: send exact bytes, read whole responses.

`read_response` reads one response off a socket (Content-Length, chunked or until EOF,
no body for HEAD/1xx/204/304) and returns it with its raw head, so tests can assert on
exactly what the proxy sent.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes
    version: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Conn:
    """One client connection with a read buffer (pipelined responses share it)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(256 * 1024)
        if not data:
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"EOF after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("EOF in a line")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self, method: str = "GET") -> Reply:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"EOF before a complete head: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ")[:2]
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        reply = Reply(int(status), headers, b"", head + b"\r\n\r\n", version)
        code = reply.status
        if method == "HEAD" or code < 200 or code in (204, 304):
            return reply
        te = (reply.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                parts.append(self._take(size))
                self._take(2)
            reply.body = b"".join(parts)
        elif reply.header("content-length") is not None:
            reply.body = self._take(int(reply.header("content-length") or 0))
        else:
            while self._fill():
                pass
            reply.body, self.buf = self.buf, b""
        return reply

    def request(self, method: str = "GET", target: str = "/", headers: dict[str, str] | None = None,
                body: bytes = b"", host: str = "test") -> Reply:
        hdrs = {"Host": host, **(headers or {})}
        if body and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        self.send(head.encode("latin-1") + body)
        return self.response(method)

    def closed_by_peer(self, timeout: float = 5.0) -> str:
        """Wait for the proxy to end the connection: 'eof' (FIN) or 'reset' (RST)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return "eof"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "open"
        return "open"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> Reply:
    """Send raw bytes on a fresh connection and read one response."""
    with Conn(port, timeout) as c:
        c.send(raw)
        return c.response()
