"""Tunnels at scale through the real master: splice carries bulk, memory stays flat, pipes
stay clean and bounded, and the tunnel timeouts close what they should.

The backend is `Hub`: a raw upgrade server with one blocking thread per connection (an idle
connection costs it nothing), whose behaviour is chosen by the request path:
  /ws/echo        echo every byte; on EOF, FIN back
  /ws/sink        read and hash until EOF, then send "<sha256> <count>" and FIN
  /ws/stall/S     read nothing for S seconds, then reset (RST)
  /ws/delay/S     (no Upgrade) answer 200 after S seconds
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import Proxy, http_get, wait_until

MiB = 1 << 20
_RST = struct.pack("ii", 1, 0)

BODY = """
[upstream.hub]
servers = ["127.0.0.1:{port}"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/ws/"
proxy_pass = "http://hub"
websocket = true
tunnel_timeout = "{tunnel_timeout}"
proxy_read_timeout = "{read_timeout}"
tunnel_fin_timeout = "5s"

[[server.location]]
path = "/nt/"
proxy_pass = "http://hub/ws/"
websocket = true
proxy_read_timeout = "1s"
"""


class Hub:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
        self.port: int = self.listener.getsockname()[1]
        self.socks: set[socket.socket] = set()
        self.sink_results: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.socks.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if b"\nupgrade:" not in head.lower():
                time.sleep(float(path.rsplit("/", 1)[1]))
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nslept\n")
                return
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
            if path.startswith("/ws/stall/"):
                time.sleep(float(path.rsplit("/", 1)[1]))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                return
            if path == "/ws/sink":
                h, n = hashlib.sha256(rest), len(rest)
                buf2 = bytearray(MiB)
                while k := sock.recv_into(buf2):
                    h.update(memoryview(buf2)[:k])
                    n += k
                self.sink_results.append((h.hexdigest(), n))
                sock.sendall(f"{h.hexdigest()} {n}".encode())
            else:  # echo
                data = rest
                while True:
                    if data:
                        sock.sendall(data)
                    data = sock.recv(256 * 1024)
                    if not data:
                        break
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass
        finally:
            with self._lock:
                self.socks.discard(sock)
            sock.close()

    def stop(self) -> None:
        self._stopping = True
        self.listener.close()
        with self._lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def hub() -> Iterator[Hub]:
    h = Hub()
    yield h
    h.stop()


def start(make_proxy: Callable[..., Proxy], hub: Hub, tmp_path: Path, *, tunnel_timeout: str = "1h",
          read_timeout: str = "60s", workers: int = 1, **master: Any) -> tuple[Proxy, Path]:
    log = tmp_path / "tunnels.jsonl"
    settings = {"tunnel_log": str(log), "worker_connections": 4096, **master}
    p = make_proxy(BODY.format(port=hub.port, tunnel_timeout=tunnel_timeout, read_timeout=read_timeout),
                   workers=workers, master=settings)
    return p, log


def records(log: Path, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]] | None:
        try:
            lines = log.read_text().splitlines()
        except FileNotFoundError:
            return None
        return [json.loads(x) for x in lines] if len(lines) >= n else None
    got: list[dict[str, Any]] = wait_until(read, timeout, f"{n} tunnel records")
    return got


def open_tunnel(port: int, path: str, timeout: float = 20.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode())
    expect_101(s)
    return s


def expect_101(s: socket.socket) -> None:
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # read byte by byte: no tunnel byte is taken
        b = s.recv(1)
        assert b, f"EOF before the 101: {head!r}"
        head += b
    assert head.startswith(b"HTTP/1.1 101"), head


def pipe_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                n += 1
        except OSError:
            pass
    return n


def rst(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    s.close()


def send_counted(s: socket.socket, size: int) -> str:
    """Send `size` bytes of numbered 1 MiB blocks; return their sha256."""
    h = hashlib.sha256()
    block = bytearray(os.urandom(MiB))
    for i in range(size // MiB):
        block[:8] = i.to_bytes(8, "big")
        s.sendall(block)
        h.update(block)
    return h.hexdigest()


def test_a_256mib_echo_is_spliced_both_ways(make_proxy: Callable[..., Proxy], hub: Hub, tmp_path: Path) -> None:
    p, log = start(make_proxy, hub, tmp_path)
    s = open_tunnel(p.port, "/ws/echo")
    size = 256 * MiB
    got: list[tuple[str, int]] = []

    def reader() -> None:
        h, n, buf = hashlib.sha256(), 0, bytearray(MiB)
        while k := s.recv_into(buf):
            h.update(memoryview(buf)[:k])
            n += k
        got.append((h.hexdigest(), n))
    th = threading.Thread(target=reader)
    th.start()
    sent = send_counted(s, size)
    s.shutdown(socket.SHUT_WR)
    th.join(60)
    s.close()
    assert got == [(sent, size)]
    (rec,) = records(log, 1)
    assert rec["bytes_up"] == size
    assert size <= rec["bytes_down"] <= size + 1024  # the 101 head may be counted: the tunnel sent it
    for way in ("up", "down"):
        assert rec[f"spliced_{way}"] >= size - 2 * MiB, rec
        assert rec[f"copied_{way}"] <= 2 * MiB, rec
    assert rec["end"] == "client" and rec["reset"] is False


def test_1gib_through_one_tunnel_keeps_rss_flat(make_proxy: Callable[..., Proxy], hub: Hub, tmp_path: Path) -> None:
    p, log = start(make_proxy, hub, tmp_path)
    (worker,) = p.workers()
    warm = open_tunnel(p.port, "/ws/sink")
    send_counted(warm, 32 * MiB)
    warm.shutdown(socket.SHUT_WR)
    assert warm.recv(200).split()[1] == str(32 * MiB).encode()
    warm.close()
    base = worker.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak.append(worker.memory_info().rss)
    sampler = threading.Thread(target=sample)
    sampler.start()
    s = open_tunnel(p.port, "/ws/sink")
    size = 1024 * MiB
    sent = send_counted(s, size)
    s.shutdown(socket.SHUT_WR)
    answer = s.recv(200).decode().split()
    stop.set()
    sampler.join()
    s.close()
    assert answer == [sent, str(size)]
    assert max(peak) - base < 4 * MiB, f"RSS grew by {(max(peak) - base) / MiB:.1f} MiB"
    rec = records(log, 2)[1]
    assert rec["bytes_up"] == size and rec["spliced_up"] >= size - 2 * MiB


@pytest.mark.parametrize("cap", [1024, 0])
def test_resets_mid_transfer_then_fresh_tunnels_carry_only_their_bytes(
        make_proxy: Callable[..., Proxy], hub: Hub, tmp_path: Path, cap: int) -> None:
    p, log = start(make_proxy, hub, tmp_path, splice_pipes=cap, splice_idle_pipes=2)
    (worker,) = p.workers()
    before = pipe_fds(worker.pid)
    doomed = [open_tunnel(p.port, "/ws/stall/0.7") for _ in range(4)]
    senders = []
    for s in doomed:  # push until the upstream's reset stops the sender
        th = threading.Thread(target=lambda s=s: _push_until_error(s), daemon=True)
        th.start()
        senders.append(th)
    for th in senders:
        th.join(20)
        assert not th.is_alive()
    recs = records(log, 4)
    assert all(r["end"] == "upstream" and r["reset"] for r in recs), recs
    fresh = [open_tunnel(p.port, "/ws/echo") for _ in range(6)]
    payloads = [os.urandom(3 * MiB + i) for i in range(6)]
    for s, data in zip(fresh, payloads, strict=True):
        threading.Thread(target=send_and_fin, args=(s, data), daemon=True).start()
    for s, data in zip(fresh, payloads, strict=True):
        got = bytearray()
        while chunk := s.recv(MiB):
            got += chunk
        assert got == data
        s.close()
    recs = records(log, 10)
    if cap:
        assert sum(r["spliced_up"] for r in recs[4:]) > 0  # pipes were in use
    else:
        assert all(r["spliced_up"] == r["spliced_down"] == 0 for r in recs)
    assert pipe_fds(worker.pid) <= before + 2 * 2  # the idle cap, in fds


def send_and_fin(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def _push_until_error(s: socket.socket) -> None:
    block = b"\xee" * MiB
    try:
        while True:
            s.sendall(block)
    except OSError:
        pass
    s.close()


def test_1000_idle_tunnels_hold_no_more_pipes_than_the_idle_cap(
        make_proxy: Callable[..., Proxy], hub: Hub, tmp_path: Path) -> None:
    idle_cap = 4
    p, log = start(make_proxy, hub, tmp_path, workers=2, splice_idle_pipes=idle_cap)
    workers = p.workers()
    before = {w.pid: pipe_fds(w.pid) for w in workers}
    socks = []
    for _ in range(10):  # in batches: the handshakes of a batch are pipelined
        batch = [socket.create_connection(("127.0.0.1", p.port), timeout=20) for _ in range(100)]
        for s in batch:
            s.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        for s in batch:
            expect_101(s)
        socks += batch
    chunk = b"\x5a" * (256 * 1024)
    for i in range(0, len(socks), 50):  # bulk through every tunnel, so pipes get used
        group = socks[i:i + 50]
        for s in group:
            s.sendall(chunk)
        for s in group:
            n = 0
            while n < len(chunk):
                n += len(s.recv(len(chunk)))
    time.sleep(0.3)
    tunnels = 0
    for w in workers:
        fds = pipe_fds(w.pid)
        assert fds <= before[w.pid] + 2 * idle_cap, (w.pid, before[w.pid], fds)
        tunnels += sum(1 for c in w.net_connections() if c.status == psutil.CONN_ESTABLISHED) // 2
    assert tunnels >= 1000
    for s in socks:
        s.close()
    recs = records(log, 1000, 20)
    assert sum(1 for r in recs if r["spliced_up"]) > 500  # most tunnels did splice


def test_tunnel_timeouts(make_proxy: Callable[..., Proxy], hub: Hub, tmp_path: Path) -> None:
    p, log = start(make_proxy, hub, tmp_path, tunnel_timeout="1s", read_timeout="2s")
    idle = open_tunnel(p.port, "/ws/echo")
    no_tt = open_tunnel(p.port, "/nt/echo")  # no tunnel_timeout: proxy_read_timeout (1s) bounds it
    busy = open_tunnel(p.port, "/ws/sink")
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < 3.5:  # more than 3x tunnel_timeout, client to server only
        busy.sendall(b"tick")
        sent += 4
        time.sleep(0.25)
    assert idle.recv(10) == b"" and no_tt.recv(10) == b""  # closed with a FIN
    busy.shutdown(socket.SHUT_WR)
    assert busy.recv(200).decode().split()[1] == str(sent)
    recs = {r["location"] + r["end"]: r for r in records(log, 3)}
    assert 0.9 < recs["/ws/timeout"]["duration"] < 2.0 and recs["/ws/timeout"]["reset"] is False
    assert 0.9 < recs["/nt/timeout"]["duration"] < 2.0
    assert recs["/ws/client"]["duration"] > 3.4 and recs["/ws/client"]["bytes_up"] == sent
    # Plain HTTP on the same location keeps proxy_read_timeout (2s), not tunnel_timeout (1s).
    assert http_get(p.port, "/ws/delay/1.5")[0] == 200
    t0 = time.monotonic()
    assert http_get(p.port, "/ws/delay/4")[0] == 504
    assert 1.8 < time.monotonic() - t0 < 3.5
