"""Upgrade tunnels through the real master, with raw sockets (a WebSocket library cannot
half-close or send bytes in the same packet as a head): which upgrades tunnel, which do
not, half-close both ways, leftover bytes on both sides, and resets."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import UpgradeBackend
from harness import Proxy, wait_until

MiB = 1 << 20

BODY = """
[upstream.up]
servers = ["127.0.0.1:{port}"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/ws/"
proxy_pass = "http://up"
websocket = true
upgrade_protocols = ["websocket", "x-raw"]

[[server.location]]
path = "/plain/"
proxy_pass = "http://up"
"""


class Client:
    """A raw client connection: send exact bytes, read a head and keep what follows it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.rest = b""

    def upgrade(self, path: str, token: str = "websocket", extra: bytes = b"") -> bytes:
        """Send an upgrade request (plus `extra` in the same send); return the response head."""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: {token}\r\n"
                          f"Connection: Upgrade\r\n\r\n".encode() + extra)
        return self.head()

    def head(self) -> bytes:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = self.sock.recv(65536)
            assert data, f"EOF before a head: {buf!r}"
            buf += data
        head, _, self.rest = buf.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def read_exact(self, n: int) -> bytes:
        out = bytearray(self.rest[:n])
        self.rest = self.rest[n:]
        while len(out) < n:
            data = self.sock.recv(min(MiB, n - len(out)))
            assert data, f"EOF after {len(out)} of {n} bytes"
            out += data
        return bytes(out)

    def read_to_eof(self) -> bytes:
        out = bytearray(self.rest)
        self.rest = b""
        while data := self.sock.recv(MiB):
            out += data
        return bytes(out)

    def body(self) -> bytes:
        return self.read_to_eof()


def send_and_fin(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


@pytest.fixture
def run(make_proxy: Callable[..., Proxy], tmp_path: Path) -> Iterator[Callable[..., tuple[Proxy, UpgradeBackend]]]:
    backends: list[UpgradeBackend] = []

    def start(**kw: Any) -> tuple[Proxy, UpgradeBackend]:
        b = UpgradeBackend(**kw).start()
        backends.append(b)
        p = make_proxy(BODY.format(port=b.port), master={"tunnel_log": str(tmp_path / "tunnels.jsonl")})
        return p, b

    yield start
    for b in backends:
        b.stop()


def records(tmp_path: Path, n: int) -> list[dict[str, Any]]:
    path = tmp_path / "tunnels.jsonl"

    def read() -> list[dict[str, Any]] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(x) for x in lines] if len(lines) >= n else None
    got: list[dict[str, Any]] = wait_until(read, 10, f"{n} tunnel records")
    return got


def test_an_allowed_non_websocket_token_tunnels(run: Any, tmp_path: Path) -> None:
    p, b = run()
    c = Client(p.port)
    head = c.upgrade("/ws/raw", token="x-raw")
    assert head.startswith(b"HTTP/1.1 101 ")
    lower = head.lower()
    assert b"\r\nupgrade: x-raw\r\n" in lower and b"\r\nconnection: upgrade\r\n" in lower
    c.sock.sendall(b"any bytes at all \x00\xff")
    assert c.read_exact(19) == b"any bytes at all \x00\xff"
    c.sock.shutdown(socket.SHUT_WR)
    assert c.read_to_eof() == b""
    (rec,) = records(tmp_path, 1)
    assert (rec["protocol"], rec["location"], rec["end"]) == ("x-raw", "/ws/", "client")
    assert b.requests[0].header("upgrade") == "x-raw"


def test_client_fin_first_everything_sent_after_it_arrives(run: Any) -> None:
    p, b = run()  # echo: everything the client sent comes back, mostly after its FIN
    c = Client(p.port)
    assert c.upgrade("/ws/").startswith(b"HTTP/1.1 101")
    data = os.urandom(8 * MiB)
    sender = threading.Thread(target=send_and_fin, args=(c.sock, data))
    sender.start()
    assert c.read_to_eof() == data
    sender.join(10)
    assert b.tunnels[0].done.wait(5) and b.tunnels[0].ended == "eof"


def test_upstream_fin_first_everything_sent_after_it_arrives(run: Any, tmp_path: Path) -> None:
    server_data = os.urandom(2 * MiB)
    p, b = run(mode="server_first", server_data=server_data, record_limit=8 * MiB)
    c = Client(p.port)
    assert c.upgrade("/ws/").startswith(b"HTTP/1.1 101")
    assert c.read_to_eof() == server_data  # the upstream's FIN reached us
    after = os.urandom(5 * MiB)
    c.sock.sendall(after)  # and the other direction still carries everything
    c.sock.shutdown(socket.SHUT_WR)
    t = b.tunnels[0]
    assert t.done.wait(10) and t.ended == "eof"
    assert bytes(t.received) == after
    (rec,) = records(tmp_path, 1)
    assert rec["end"] == "upstream" and rec["bytes_up"] == len(after) and rec["reset"] is False


def test_bytes_in_the_same_packet_as_either_head_are_relayed(run: Any) -> None:
    p, b = run(early_data=b"server-spoke-first|")
    c = Client(p.port)
    head = c.upgrade("/ws/", extra=b"client-spoke-first|")  # one send: request + tunnel bytes
    assert head.startswith(b"HTTP/1.1 101")
    got = c.read_exact(len(b"server-spoke-first|client-spoke-first|"))
    assert got == b"server-spoke-first|client-spoke-first|"  # the echo of the client's early bytes follows
    c.sock.close()


def test_h2c_and_tokens_off_the_list_are_not_tunnelled(run: Any) -> None:
    p, b = run()
    for token in ("h2c", "x-other"):
        c = Client(p.port)
        head = c.upgrade("/ws/", token=token)
        assert head.startswith(b"HTTP/1.1 502 "), head
        assert b"\r\nConnection: keep-alive\r\n" in head  # the request was read whole, as in nginx
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert b"502 Bad Gateway" in c.read_exact(length)
        # no tunnel: the connection still speaks HTTP/1.1
        c.sock.sendall(b"GET /plain/x HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.head().startswith(b"HTTP/1.1 200 ")
        assert c.read_exact(11) == b"no upgrade\n"
        c.sock.close()
    assert all(t.done.wait(5) for t in b.tunnels)


def test_a_location_without_the_upgrade_headers_does_not_upgrade(run: Any) -> None:
    p, b = run()
    c = Client(p.port)
    head = c.upgrade("/plain/x")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert c.read_exact(11) == b"no upgrade\n"
    req = b.requests[0]
    assert not req.has_header("upgrade") and "upgrade" not in (req.header("connection") or "").lower()
    assert not b.tunnels


def test_a_101_nobody_asked_for_is_a_502(make_proxy: Callable[..., Proxy]) -> None:
    with UpgradeBackend(always_101=True) as b:
        p = make_proxy(BODY.format(port=b.port))
        c = Client(p.port)
        c.sock.sendall(b"GET /plain/ HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.head().startswith(b"HTTP/1.1 502 ")


def test_an_upstream_reset_becomes_a_client_reset(run: Any, tmp_path: Path) -> None:
    p, b = run(reset_after=MiB)
    c = Client(p.port)
    assert c.upgrade("/ws/").startswith(b"HTTP/1.1 101")
    with pytest.raises(ConnectionResetError):
        c.sock.sendall(os.urandom(64 * MiB))
        c.read_to_eof()
    (rec,) = records(tmp_path, 1)
    assert rec["end"] == "upstream" and rec["reset"] is True


def test_a_client_reset_becomes_an_upstream_reset(run: Any, tmp_path: Path) -> None:
    p, b = run()
    c = Client(p.port)
    assert c.upgrade("/ws/").startswith(b"HTTP/1.1 101")
    c.sock.sendall(b"x" * 1000)
    assert c.read_exact(1000) == b"x" * 1000
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    assert b.tunnels[0].done.wait(5) and b.tunnels[0].ended == "reset"
    (rec,) = records(tmp_path, 1)
    assert rec["end"] == "client" and rec["reset"] is True
