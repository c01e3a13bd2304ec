"""Tunnel over real loopback TCP sockets and a real EventLoop, in one process.

Each rig is: test's client socket <-> Tunnel <-> test's upstream socket. Peers that must
move bytes while the loop runs do blocking I/O in threads; the main thread runs the loop.
One suite (a mixin) runs over the splice relay and the copy relay (pool cap 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forkproxy import tunnel as tunnel_mod
from forkproxy.context import SCRATCH_SIZE, WorkerContext
from forkproxy.log import RecordLog
from forkproxy.loop import IN, EventLoop
from forkproxy.pipes import PipePool
from forkproxy.tunnel import Tunnel

MiB = 1 << 20


def _pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(test's end: blocking, proxy's end: non-blocking), both TCP_NODELAY."""
    outer = socket.create_connection(listener.getsockname()[:2])
    inner, _ = listener.accept()
    for s in (outer, inner):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inner.setblocking(False)
    outer.settimeout(20.0)
    return outer, inner


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _recv_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        b = sock.recv(MiB)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


class Rig:
    """One tunnel and the two test-side sockets around it."""

    def __init__(self, env: Env, **kw: Any) -> None:
        self.client, inner_c = _pair(env.listener)
        self.upstream, inner_u = _pair(env.listener)
        args: dict[str, Any] = dict(location="/ws/", client_addr="127.0.0.1:1", upstream_addr="127.0.0.1:2",
                                    protocol="websocket", idle_timeout=30.0, fin_timeout=30.0,
                                    send_timeout=30.0, proxy_send_timeout=30.0)
        args.update(kw)
        self.tunnel = Tunnel(env.ctx, inner_c, inner_u, **args)


class Env:
    def __init__(self, tmp: Path, cap: int, idle_cap: int = 4) -> None:
        self.loop = EventLoop(tick=0.02)
        self.pool = PipePool(cap, idle_cap, MiB)
        self.log_path = tmp / "tunnel.log"
        self.ctx = WorkerContext(self.loop, None, None, None, self.pool,  # type: ignore[arg-type]
                                 None, RecordLog(str(self.log_path)))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)

    def rig(self, **kw: Any) -> Rig:
        return Rig(self, **kw)

    def spin(self, cond: Callable[[], bool], limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while not cond():
            assert time.monotonic() < deadline, "condition not reached in time"
            self.loop.run_once(0.005)

    def records(self) -> list[dict[str, Any]]:
        self.ctx.tunnel_log.flush()  # type: ignore[union-attr]
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def close(self) -> None:
        for t in list(self.ctx.live):
            t.shutdown("test")
        self.listener.close()
        self.pool.close()
        self.loop.close()


def _thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run fn in a thread; its result (or the OSError it raised) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except OSError as e:
            out.append(e)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def _send_then_fin(sock: socket.socket, size: int, seed: int) -> Callable[[], str]:
    def run() -> str:
        h = hashlib.sha256()
        block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            sock.sendall(chunk)
            h.update(chunk)
            left -= len(chunk)
        sock.shutdown(socket.SHUT_WR)
        return h.hexdigest()
    return run


def _peek(sock: socket.socket, n: int) -> bytes:
    """What is waiting on a test socket, without waiting and without taking it."""
    if not select.select([sock], [], [], 0)[0]:
        return b""
    return sock.recv(n, socket.MSG_PEEK)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        b = sock.recv(min(n, MiB))
        assert b, "early EOF"
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _hash_until_eof(sock: socket.socket) -> Callable[[], tuple[str, int]]:
    def run() -> tuple[str, int]:
        h = hashlib.sha256()
        n = 0
        buf = bytearray(MiB)
        while True:
            k = sock.recv_into(buf)
            if not k:
                return h.hexdigest(), n
            h.update(memoryview(buf)[:k])
            n += k
    return run


class TunnelSuite:
    cap = 64

    @pytest.fixture
    def env(self, tmp_path: Path) -> Iterator[Env]:
        e = Env(tmp_path, self.cap)
        yield e
        e.close()

    def test_leftover_bytes_are_relayed_first(self, env: Env) -> None:
        r = env.rig(to_upstream=b"GET-rest|", to_client=b"HTTP/1.1 101\r\n\r\nframe0|")
        r.client.sendall(b"frame1")
        r.upstream.sendall(b"frame2")
        got_u = b""
        got_c = b""
        while len(got_u) < 15 or len(got_c) < 29:
            env.loop.run_once(0.01)
            for sock, name in ((r.upstream, "u"), (r.client, "c")):
                sock.setblocking(False)
                try:
                    data = sock.recv(100)
                except BlockingIOError:
                    data = b""
                if name == "u":
                    got_u += data
                else:
                    got_c += data
        assert got_u == b"GET-rest|frame1"
        assert got_c == b"HTTP/1.1 101\r\n\r\nframe0|frame2"

    def test_bulk_both_ways_arrives_intact(self, env: Env) -> None:
        size = 64 * MiB
        r = env.rig()
        ups = [_thread(_send_then_fin(r.client, size, 1)), _thread(_hash_until_eof(r.upstream))]
        downs = [_thread(_send_then_fin(r.upstream, size, 2)), _thread(_hash_until_eof(r.client))]
        env.spin(lambda: r.tunnel.closed, 60)
        for th, _ in ups + downs:
            th.join(20)
        assert ups[1][1][0] == (ups[0][1][0], size)
        assert downs[1][1][0] == (downs[0][1][0], size)
        (rec,) = env.records()
        assert rec["bytes_up"] == rec["bytes_down"] == size
        assert rec["end"] in ("client", "upstream") and rec["reset"] is False
        for way in ("up", "down"):
            assert rec[f"spliced_{way}"] + rec[f"copied_{way}"] == size
            if self.cap:
                assert rec[f"copied_{way}"] <= 2 * SCRATCH_SIZE  # until the first big read
            else:
                assert rec[f"spliced_{way}"] == 0
        assert env.pool.alive == env.pool.idle <= env.pool.idle_cap
        assert env.ctx.stats.tunnels == 0 and not env.ctx.live

    @pytest.mark.parametrize("first", ["client", "upstream"])
    def test_half_close_delivers_everything_after_the_fin(self, env: Env, first: str) -> None:
        r = env.rig()
        a, b = (r.client, r.upstream) if first == "client" else (r.upstream, r.client)
        a.sendall(b"before-fin")
        a.shutdown(socket.SHUT_WR)
        th, out = _thread(lambda: _recv_all(b))
        env.spin(lambda: not th.is_alive())
        assert out == [b"before-fin"]
        assert not r.tunnel.closed  # the other direction is still open
        reply = os.urandom(3 * MiB)
        th2, got = _thread(lambda: _recv_all(a))
        def send_reply() -> None:
            b.sendall(reply)
            b.shutdown(socket.SHUT_WR)
        _thread(send_reply)
        env.spin(lambda: r.tunnel.closed)
        th2.join(10)
        assert got == [reply]
        (rec,) = env.records()
        assert rec["end"] == first and rec["reset"] is False

    @pytest.mark.parametrize("first", ["client", "upstream"])
    def test_reset_propagates_as_reset(self, env: Env, first: str) -> None:
        r = env.rig()
        a, b = (r.client, r.upstream) if first == "client" else (r.upstream, r.client)
        a.sendall(b"x" * 1000)
        env.spin(lambda: len(_peek(b, 1000)) == 1000)
        _rst(a)
        env.spin(lambda: r.tunnel.closed, 5)
        b.recv(1000)
        with pytest.raises(ConnectionResetError):
            b.recv(10)
        (rec,) = env.records()
        assert rec["end"] == first and rec["reset"] is True

    def test_idle_timeout_closes_with_fin(self, env: Env) -> None:
        r = env.rig(idle_timeout=0.3)
        r.client.sendall(b"hello")
        t0 = time.monotonic()
        env.spin(lambda: r.tunnel.closed, 5)
        assert 0.25 < time.monotonic() - t0 < 1.5
        assert r.upstream.recv(100) == b"hello"
        assert r.upstream.recv(100) == b"" and r.client.recv(100) == b""  # FIN, not RST
        (rec,) = env.records()
        assert rec["end"] == "timeout" and rec["reset"] is False
        assert 0.25 < rec["max_idle"] < 1.5 and 0.25 < rec["duration"] < 1.5

    def test_one_way_traffic_keeps_it_alive(self, env: Env) -> None:
        r = env.rig(idle_timeout=0.3)
        until = time.monotonic() + 1.0  # more than 3x the idle timeout
        sent = 0
        while time.monotonic() < until:
            r.client.sendall(b"tick")
            sent += 4
            end = time.monotonic() + 0.08
            while time.monotonic() < end:
                env.loop.run_once(0.01)
            assert not r.tunnel.closed
        env.spin(lambda: r.tunnel.closed, 5)
        (rec,) = env.records()
        assert rec["end"] == "timeout" and rec["bytes_up"] == sent and rec["bytes_down"] == 0
        assert rec["duration"] > 1.0

    def test_fin_timeout(self, env: Env) -> None:
        r = env.rig(fin_timeout=0.3)
        r.client.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        env.spin(lambda: r.tunnel.closed, 5)
        assert 0.25 < time.monotonic() - t0 < 1.5
        (rec,) = env.records()
        assert rec["end"] == "fin_timeout"
        assert r.upstream.recv(10) == b""

    def test_a_writer_that_stops_reading_times_out(self, env: Env) -> None:
        r = env.rig(proxy_send_timeout=0.3)
        r.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        r.client.settimeout(0.05)
        t0 = time.monotonic()
        while not r.tunnel.closed:
            assert time.monotonic() - t0 < 10
            try:
                r.client.send(b"z" * 65536)
            except (TimeoutError, OSError):
                pass
            env.loop.run_once(0.01)
        (rec,) = env.records()
        assert rec["end"] == "timeout"

    def test_back_pressure_bounds_what_the_tunnel_holds(self, env: Env) -> None:
        r = env.rig()
        size = 48 * MiB
        sender, hashes = _thread(_send_then_fin(r.client, size, 3))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # upstream reads nothing for 2 s
            env.loop.run_once(0.01)
            up = r.tunnel._up
            assert up.pending is None or len(up.pending) <= SCRATCH_SIZE
        assert sender.is_alive()  # the client is pushed back, not buffered
        assert env.loop.mask(r.tunnel._client.fd) & IN == 0
        reader, got = _thread(_hash_until_eof(r.upstream))
        env.spin(lambda: not reader.is_alive(), 30)
        sender.join(10)
        assert got == [(hashes[0], size)]

    def test_a_slow_reader_that_drains_keeps_it_alive(self, env: Env) -> None:
        r = env.rig(idle_timeout=0.4, proxy_send_timeout=5.0)
        r.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        size = 24 * MiB
        sender, hashes = _thread(_send_then_fin(r.client, size, 5))
        h, got, t0 = hashlib.sha256(), 0, time.monotonic()
        while time.monotonic() - t0 < 1.6:  # 4x the idle timeout, draining slowly
            env.loop.run_once(0.05)
            if _peek(r.upstream, 1):
                chunk = r.upstream.recv(256 * 1024)
                h.update(chunk)
                got += len(chunk)
        assert not r.tunnel.closed and got < size
        rest = _thread(_hash_until_eof(r.upstream))
        r.upstream.shutdown(socket.SHUT_WR)
        env.spin(lambda: r.tunnel.closed, 30)
        rest[0].join(10)
        sender.join(10)
        assert got + rest[1][0][1] == size

    def test_idle_timeout_after_a_stall_is_counted_from_the_last_byte(self, env: Env) -> None:
        r = env.rig(idle_timeout=0.3)
        size = 16 * MiB
        sender, _ = _thread(_send_then_fin(r.client, size, 9))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.8:  # the upstream reads nothing: a stall, not idleness
            env.loop.run_once(0.01)
        assert not r.tunnel.closed
        reader, got = _thread(lambda: _recv_exact(r.upstream, size))
        env.spin(lambda: not reader.is_alive(), 20)
        last = time.monotonic()
        env.spin(lambda: r.tunnel.closed, 5)
        assert time.monotonic() - last < 1.0
        (rec,) = env.records()
        assert rec["end"] == "timeout" and rec["bytes_up"] == size and len(got[0]) == size

    def test_a_reset_while_paused_propagates(self, env: Env) -> None:
        r = env.rig()
        r.client.settimeout(0.05)
        try:  # the upstream reads nothing: fill everything until the client is pushed back
            for _ in range(2000):
                r.client.send(b"p" * 65536)
                env.loop.run_once(0)
        except TimeoutError:
            pass
        env.loop.run_once(0.01)
        assert env.loop.mask(r.tunnel._client.fd) & IN == 0
        _rst(r.client)
        env.spin(lambda: r.tunnel.closed, 2)
        (rec,) = env.records()
        assert rec["end"] == "client" and rec["reset"] is True
        with pytest.raises(ConnectionResetError):
            while r.upstream.recv(MiB):
                pass

    def test_shutdown_is_a_fin_both_ways(self, env: Env) -> None:
        r = env.rig()
        r.client.sendall(b"ping")
        env.spin(lambda: _peek(r.upstream, 4) == b"ping")
        assert env.ctx.stats.tunnels == 1 and r.tunnel in env.ctx.live
        r.tunnel.drain()
        assert not r.tunnel.closed
        r.tunnel.shutdown("shutdown")
        assert r.upstream.recv(10) == b"ping" and r.upstream.recv(10) == b""
        assert r.client.recv(10) == b""
        (rec,) = env.records()
        assert rec["end"] == "shutdown" and rec["reset"] is False
        assert env.ctx.stats.tunnels == 0 and not env.ctx.live

    def test_record_fields(self, env: Env) -> None:
        r = env.rig()
        r.client.sendall(b"abc")
        env.spin(lambda: _peek(r.upstream, 3) == b"abc")
        r.client.shutdown(socket.SHUT_WR)
        r.upstream.recv(3)
        r.upstream.shutdown(socket.SHUT_WR)
        env.spin(lambda: r.tunnel.closed)
        (rec,) = env.records()
        assert set(rec) == {"time", "location", "client", "upstream", "protocol", "start", "duration",
                            "bytes_up", "bytes_down", "spliced_up", "spliced_down", "copied_up",
                            "copied_down", "max_idle", "end", "reset", "error"}
        assert (rec["location"], rec["client"], rec["upstream"], rec["protocol"]) == \
            ("/ws/", "127.0.0.1:1", "127.0.0.1:2", "websocket")
        assert (rec["bytes_up"], rec["copied_up"], rec["end"]) == (3, 3, "client")
        assert abs(rec["start"] - time.time()) < 10

    def test_resets_mid_transfer_then_fresh_tunnels_carry_only_their_bytes(self, env: Env) -> None:
        for _ in range(3):
            rigs = [env.rig() for _ in range(4)]
            senders = [_thread(_send_then_fin(r.client, 256 * MiB, 7)) for r in rigs]
            # The upstreams read nothing: pipes and socket buffers fill, then clients reset.
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                env.loop.run_once(0.01)
            if self.cap:  # the point of the test: pipes hold bytes when the resets come
                assert any(r.tunnel._up.inpipe for r in rigs)
            for r in rigs:
                _rst(r.upstream)
            tunnels = [r.tunnel for r in rigs]
            env.spin(lambda: all(t.closed for t in tunnels), 10)  # noqa: B023 - used at once
            for th, _ in senders:
                th.join(10)
            assert env.pool.alive == env.pool.idle <= env.pool.idle_cap
        fresh = [env.rig() for _ in range(4)]
        work = []
        for i, r in enumerate(fresh):
            work.append((_thread(_send_then_fin(r.client, 5 * MiB + i, 100 + i)), _thread(_hash_until_eof(r.upstream))))
            r.upstream.shutdown(socket.SHUT_WR)
        env.spin(lambda: all(r.tunnel.closed for r in fresh), 30)
        for (s, sent), (rd, got) in work:
            s.join(10)
            rd.join(10)
            assert got[0][0] == sent[0]
        assert env.pool.alive == env.pool.idle <= env.pool.idle_cap

    def test_idle_tunnels_hold_no_pipes(self, env: Env) -> None:
        rigs = [env.rig() for _ in range(50)]
        for r in rigs:
            r.client.sendall(b"q" * (2 * MiB))
        for r in rigs:
            _thread(lambda r=r: _recv_exact(r.upstream, 2 * MiB))  # type: ignore[misc]
        env.spin(lambda: all(r.tunnel._up.spliced + r.tunnel._up.copied == 2 * MiB for r in rigs), 30)
        assert all(r.tunnel.holds_pipes() == 0 for r in rigs)
        assert all(r.tunnel._up.pending is None and r.tunnel._down.pending is None for r in rigs)
        assert env.pool.alive == env.pool.idle <= env.pool.idle_cap
        assert env.ctx.stats.tunnels == 50


class TestSplice(TunnelSuite):
    cap = 64


class TestCopy(TunnelSuite):
    cap = 0


def test_a_tiny_pool_falls_back_to_copy(tmp_path: Path) -> None:
    env = Env(tmp_path, cap=1, idle_cap=1)
    try:
        rigs = [env.rig() for _ in range(4)]
        work = [(_thread(_send_then_fin(r.client, 16 * MiB, i)), _thread(_hash_until_eof(r.upstream)))
                for i, r in enumerate(rigs)]
        for r in rigs:
            r.upstream.shutdown(socket.SHUT_WR)
        env.spin(lambda: all(r.tunnel.closed for r in rigs), 30)
        for (s, sent), (rd, got) in work:
            s.join(10)
            rd.join(10)
            assert got[0] == (sent[0], 16 * MiB)
        assert env.pool.alive <= 1
    finally:
        env.close()


def test_bulk_switches_to_splice_and_small_messages_back_to_copy(tmp_path: Path) -> None:
    env = Env(tmp_path, cap=8)
    try:
        r = env.rig()
        f = r.tunnel._up
        reader, _ = _thread(lambda: _recv_exact(r.upstream, 32 * MiB))
        sender, _ = _thread(lambda: r.client.sendall(b"b" * (32 * MiB)))
        env.spin(lambda: not reader.is_alive(), 30)
        assert f.splice and f.spliced > 30 * MiB
        copied = f.copied
        for _ in range(tunnel_mod.COPY_AFTER + 3):
            r.client.sendall(b"s" * 100)
            env.spin(lambda: _peek(r.upstream, 100) != b"")
            r.upstream.recv(100)
        assert not f.splice and f.copied > copied  # back on the copy path
        assert r.tunnel.holds_pipes() == 0
    finally:
        env.close()


def test_small_messages_take_the_copy_path(tmp_path: Path) -> None:
    env = Env(tmp_path, cap=8)
    try:
        r = env.rig()
        for _ in range(50):
            r.client.sendall(b"m" * 32)
            env.spin(lambda: _peek(r.upstream, 64) != b"")
            assert r.upstream.recv(64) == b"m" * 32
        assert r.tunnel._up.spliced == 0 and r.tunnel._up.copied == 50 * 32
        assert tunnel_mod.SPLICE_AT > 32
    finally:
        env.close()


def test_a_bug_in_one_tunnel_resets_that_tunnel_and_spares_the_others(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path, cap=4)
    try:
        broken, healthy = env.rig(), env.rig()

        relay = Tunnel._relay

        def buggy(self: Tunnel, flow: Any) -> None:
            if self is broken.tunnel:
                raise RuntimeError("a bug")
            relay(self, flow)
        monkeypatch.setattr(Tunnel, "_relay", buggy)
        broken.client.sendall(b"x")
        env.spin(lambda: broken.tunnel.closed, 5)
        for end in (broken.client, broken.upstream):
            with pytest.raises(ConnectionResetError):
                end.recv(10)
        assert broken.tunnel not in env.ctx.live and healthy.tunnel in env.ctx.live
        healthy.client.sendall(b"still here")
        env.spin(lambda: _peek(healthy.upstream, 100) == b"still here")
        rec = next(r for r in env.records() if r["end"] == "internal error")
        assert rec["reset"] is True
    finally:
        env.close()
