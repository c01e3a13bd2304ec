"""Reloads, upgrades and worker deaths under load: no client may see an error.

The load clients count as a failure any connection error, EOF or reset before a complete
response, and never retry a request. Like browsers, they check an idle connection for
EOF before reusing it and open a fresh one if it was closed (that is not a retry).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from client import Conn
from harness import Proxy, pids_alive, wait_until
from websockets.sync.client import connect as ws_connect

from bench.backend import Backend

BODY = """
[map.connection_upgrade]
source = "$http_upgrade"
default = "upgrade"
values = {{ "" = "close" }}

[upstream.app]
servers = ["127.0.0.1:{port}"]
keepalive = 8

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/ws/"
proxy_pass = "http://app"
tunnel_timeout = "1h"
set_header = {{ Upgrade = "$http_upgrade", Connection = "$connection_upgrade" }}

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend().start()
    yield b
    b.stop()


class LoadClient(threading.Thread):
    """One keep-alive client: back to back (pause None) or pausing a random while."""

    def __init__(self, port: int, pause: tuple[float, float] | None, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.pause, self.stop = port, pause, stop
        self.ok = 0
        self.opened = 0
        self.failures: list[tuple[float, str]] = []
        self.idle_resets = 0

    def _usable(self, conn: Conn | None) -> Conn | None:
        """The EOF check a browser makes before reusing an idle connection."""
        if conn is None:
            return None
        timeout = conn.sock.gettimeout()
        conn.sock.setblocking(False)  # a socket timeout would make recv wait for readability
        try:
            peek = conn.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            conn.sock.settimeout(timeout)
            return conn
        except ConnectionResetError:
            self.idle_resets += 1
            peek = b""
        if not peek and conn.buf:
            peek = conn.buf[:1]
        if peek:
            self.failures.append((time.monotonic(), f"unexpected bytes on an idle connection: {peek!r}"))
        conn.close()
        return None

    def run(self) -> None:
        conn: Conn | None = None
        n = 0
        while not self.stop.is_set():
            conn = self._usable(conn)
            try:
                if conn is None:
                    conn = Conn(self.port, timeout=15)
                    self.opened += 1
                n += 1
                reply = conn.request("GET", f"/size/{100 + n % 50}", host="load")
                if reply.status != 200 or len(reply.body) != 100 + n % 50:
                    self.failures.append((time.monotonic(), f"status {reply.status}, {len(reply.body)} bytes"))
                self.ok += 1
                if (reply.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, EOFError) as e:
                self.failures.append((time.monotonic(), repr(e)))
                if conn is not None:
                    conn.close()
                conn = None
            if self.pause:
                self.stop.wait(random.uniform(*self.pause))
        if conn is not None:
            conn.close()


class SlowRequest(threading.Thread):
    """A /sleep request on its own connection; records the outcome."""

    def __init__(self, port: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.port, self.seconds = port, seconds
        self.result = ""
        self.started = 0.0

    def run(self) -> None:
        self.started = time.time()
        try:
            with Conn(self.port, timeout=self.seconds + 20) as c:
                reply = c.request("GET", f"/sleep/{self.seconds}", host="slow")
                self.result = "ok" if reply.status == 200 else f"status {reply.status}"
        except (OSError, EOFError) as e:
            self.result = repr(e)


def _start_load(port: int, stop: threading.Event) -> list[LoadClient]:
    clients = [LoadClient(port, None, stop) for _ in range(3)]
    clients += [LoadClient(port, (0.3, 1.5), stop) for _ in range(3)]
    for c in clients:
        c.start()
    return clients


def _finish_load(clients: list[LoadClient], stop: threading.Event) -> list[tuple[float, str]]:
    stop.set()
    for c in clients:
        c.join(20)
    assert all(c.ok > 0 for c in clients), [c.ok for c in clients]
    assert sum(c.idle_resets for c in clients) == 0, "an idle keep-alive connection was reset"
    return sorted(f for c in clients for f in c.failures)


def test_twenty_reloads_under_load(make_proxy, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    p: Proxy = make_proxy(BODY.format(port=backend.port),
                          master={"shutdown_timeout": "30s", "close_spread": "2s", "access_log": "access.log"})
    stop = threading.Event()
    clients = _start_load(p.port, stop)
    slow: list[SlowRequest] = []
    try:
        for i in range(20):
            t0 = time.monotonic()
            s = SlowRequest(p.port, 5)
            s.start()
            slow.append(s)
            time.sleep(0.2)  # the slow request is in flight across the reload
            if i % 2:
                r = p.reload()
                assert r is not None and r.returncode == 0, r.stderr
            else:
                p.send_signal(signal.SIGHUP)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        for s in slow:
            s.join(30)
    finally:
        failures = _finish_load(clients, stop)
    assert failures == [], failures[:10]
    assert [s.result for s in slow] == ["ok"] * 20, [(s.started, s.result[:30]) for s in slow if s.result != "ok"]
    log = p.log()
    master = "\n".join(line for line in log.splitlines() if "master]" in line or "WARNING" in line
                       or "ERROR" in line)
    assert "reload failed" not in log, master
    for g in range(2, 22):  # each new generation is ready before the one it replaces drains
        ready, draining = f"generation {g} ready:", f"generation {g - 1} draining ("
        assert ready in log and draining in log, (g, master)
        assert log.index(ready) < log.index(draining), (g, master)
    assert "starts its final close_spread window now" in log  # the draining cap was reached
    requests = sum(c.ok for c in clients)
    assert requests > 200, requests


def test_upgrade_then_quit_old_master_under_load(make_proxy, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    p: Proxy = make_proxy(BODY.format(port=backend.port))
    stop = threading.Event()
    clients = _start_load(p.port, stop)
    slow = SlowRequest(p.port, 3)
    try:
        time.sleep(1)
        slow.start()
        time.sleep(0.2)
        r = p.cli("upgrade")
        assert r.returncode == 0, r.stderr
        new = int(p.pidfile.read_text())
        time.sleep(1)
        p.send_signal(signal.SIGWINCH)
        p.send_signal(signal.SIGQUIT)
        assert p.proc is not None and p.proc.wait(30) == 0
        time.sleep(1)
        slow.join(10)
    finally:
        failures = _finish_load(clients, stop)
    assert failures == [], failures[:10]
    assert slow.result == "ok"
    assert len(p.workers(master=new)) == 2
    assert p.cli("stop").returncode == 0


def test_kill_9_of_a_worker_fails_only_its_connections(make_proxy, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    p: Proxy = make_proxy(BODY.format(port=backend.port))
    stop = threading.Event()
    clients = _start_load(p.port, stop)
    try:
        time.sleep(1)
        victim = min(p.wait_workers(2))
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        p.wait_workers(2, timeout=10)
        served = sum(c.ok for c in clients)
        wait_until(lambda: sum(c.ok for c in clients) > served + 20, 10, "requests after the respawn")
    finally:
        failures = _finish_load(clients, stop)
    assert len(failures) <= len(clients), failures  # at most the connections the victim held
    assert all(t - killed_at < 2.0 for t, _ in failures), failures


def _tunnel_records(path: Path) -> list[dict[str, object]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def test_tunnels_survive_reload_and_close_spread_before_shutdown_timeout(  # type: ignore[no-untyped-def]
        make_proxy, backend: Backend) -> None:
    shutdown, spread = 6.0, 3.0
    p: Proxy = make_proxy(BODY.format(port=backend.port),
                          master={"shutdown_timeout": f"{shutdown:g}s", "close_spread": f"{spread:g}s",
                                  "tunnel_log": "tunnels.log"})
    url = f"ws://127.0.0.1:{p.port}/ws/echo"
    stack = contextlib.ExitStack()
    sockets = [stack.enter_context(ws_connect(url, open_timeout=10, close_timeout=2)) for _ in range(12)]
    closed_at: dict[int, float] = {}

    def watch(i: int) -> None:
        ws = sockets[i]
        try:
            while True:
                ws.recv(timeout=30)
        except Exception:  # noqa: BLE001 - any end of the tunnel is what we time
            closed_at[i] = time.monotonic()

    try:
        for ws in sockets:
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
        r = p.reload()
        assert r is not None and r.returncode == 0, r.stderr
        reloaded = time.monotonic()
        for ws in sockets:
            ws.send("after")
            assert ws.recv(timeout=5) == "after"
        threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(len(sockets))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(shutdown + 10)
    finally:
        stack.close()
    times = sorted(t - reloaded for t in closed_at.values())
    assert len(times) == len(sockets)
    assert times[0] >= shutdown - spread - 0.5, times
    assert times[-1] <= shutdown + 1.5, times
    assert times[-1] - times[0] >= spread / 3, times  # spread out, not all at once
    records = wait_until(lambda: (r := _tunnel_records(p.dir / "tunnels.log")) and len(r) >= len(sockets) and r,
                         10, "tunnel records")
    assert [rec["end"] for rec in records] == ["shutdown"] * len(sockets)
    wait_until(lambda: not p.worker_pids(generation=1), 10, "generation 1 to exit")
    assert pids_alive(p.worker_pids(generation=2))


@pytest.mark.parametrize("limit", [{"max_requests": 40}, {"max_worker_rss": 1}])
def test_recycling_replaces_workers_gracefully(make_proxy, backend: Backend, limit) -> None:  # type: ignore[no-untyped-def]
    p: Proxy = make_proxy(BODY.format(port=backend.port), master=limit)
    first = p.wait_workers(2)
    stop = threading.Event()
    clients = _start_load(p.port, stop)
    try:
        wait_until(lambda: not pids_alive(first), 20, "the first workers to be recycled")
        served = sum(c.ok for c in clients)
        wait_until(lambda: sum(c.ok for c in clients) > served + 20, 10, "requests after recycling")
    finally:
        failures = _finish_load(clients, stop)
    assert failures == [], failures[:10]
    assert "recycling worker" in p.log()
    assert "respawning" not in p.log()


def test_status_counts_the_connections_and_tunnels_the_test_opened(  # type: ignore[no-untyped-def]
        make_proxy, backend: Backend) -> None:
    p: Proxy = make_proxy(BODY.format(port=backend.port))
    p.wait_workers(2)
    url = f"ws://127.0.0.1:{p.port}/ws/echo"

    def totals() -> tuple[int, int]:
        r = p.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        ws = json.loads(r.stdout)["masters"][0]["workers"]
        return sum(w["connections"] for w in ws), sum(w["tunnels"] for w in ws)

    with contextlib.ExitStack() as stack:
        tunnels = [stack.enter_context(ws_connect(url, open_timeout=10)) for _ in range(3)]
        plain = [stack.enter_context(socket.create_connection(("127.0.0.1", p.port))) for _ in range(2)]
        for ws in tunnels:
            ws.send("x")
            assert ws.recv(timeout=5) == "x"
        conns, tuns = wait_until(lambda: (t := totals())[1] == 3 and t, 10, "3 tunnels in status")
        assert conns >= len(plain)
        assert p.cli("status").stdout.count(" worker ") == 2
    wait_until(lambda: totals() == (0, 0), 10, "status to count nothing after the test closed all")


def test_usr1_reopens_the_access_log_in_every_worker(make_proxy, backend: Backend) -> None:  # type: ignore[no-untyped-def]
    p: Proxy = make_proxy(BODY.format(port=backend.port), master={"access_log": "access.log"})
    p.wait_workers(2)
    log = p.dir / "access.log"
    with Conn(p.port) as c:
        assert c.request("GET", "/size/1").status == 200
    wait_until(lambda: log.exists() and "/size/1 " in log.read_text(), 10, "the first access record")
    log.rename(p.dir / "access.log.1")
    p.send_signal(signal.SIGUSR1)
    wait_until(log.exists, 10, "a new access log")
    for _ in range(10):  # fresh connections: both workers are likely to serve some
        with Conn(p.port) as c:
            assert c.request("GET", "/size/2").status == 200
    wait_until(lambda: log.read_text().count("/size/2 ") == 10, 10, "every new record in the new file")
    assert "/size/2 " not in (p.dir / "access.log.1").read_text()
