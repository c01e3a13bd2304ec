"""Tests of the backends themselves: the demo backend (bench.backend, run as a process) and
the test backends of backends.py, driven with plain sockets, http.client and websockets."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from backends import RecordingBackend, Response, UpgradeBackend, WsEchoServer
from websockets.sync.client import connect as ws_connect

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.backend import payload  # noqa: E402  (the repo root is not always on sys.path)


def start_demo(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.backend", "--listen", "127.0.0.1:0", *args],
                            cwd=ROOT, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert line.startswith("listening on 127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    assert proc.wait(5) == 0


@pytest.fixture(scope="module")
def demo() -> Iterator[int]:
    proc, port = start_demo()
    yield port
    stop(proc)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def raw(port: int, data: bytes, shut: bool = True, timeout: float = 5.0) -> bytes:
    """Send data, optionally half-close, and read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def get(port: int, method: str, path: str, body: object = None, headers: dict[str, str] | None = None,
        **kw: object) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {}, **kw)  # type: ignore[arg-type]
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


# --- demo backend: HTTP routes ---------------------------------------------------------

def test_demo_root_and_status(demo: int) -> None:
    resp, body = get(demo, "GET", "/")
    assert resp.status == 200 and b"demo backend" in body
    assert resp.getheader("X-Backend") == f"127.0.0.1:{demo}"
    assert get(demo, "GET", "/status/418")[0].status == 418
    resp, body = get(demo, "GET", "/status/204")
    assert resp.status == 204 and body == b""
    assert get(demo, "GET", "/nope")[0].status == 404


def test_demo_size_chunked_head(demo: int) -> None:
    resp, body = get(demo, "GET", "/size/200001")
    assert resp.getheader("Content-Length") == "200001" and body == payload(200001)
    resp, body = get(demo, "GET", "/chunked/100000?chunk=3000")
    assert resp.getheader("Transfer-Encoding") == "chunked" and body == payload(100000)
    wire = raw(demo, b"GET /chunked/7?chunk=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert wire.endswith(b"\r\n\r\n3\r\nfor\r\n3\r\nkpr\r\n1\r\no\r\n0\r\n\r\n")
    # HEAD: same head, no body, and the connection stays usable
    wire = raw(demo, b"HEAD /size/100 HTTP/1.1\r\nHost: x\r\n\r\nGET /size/3 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.count(b"HTTP/1.1 200") == 2 and b"Content-Length: 100\r\n" in wire and wire.endswith(b"\r\n\r\nfor")


def test_demo_echo_sha256_headers(demo: int) -> None:
    data = os.urandom(300_000)
    assert get(demo, "POST", "/echo", data)[1] == data
    resp, body = get(demo, "PUT", "/echo", iter([data[:1000], data[1000:]]), encode_chunked=True)
    assert resp.getheader("Transfer-Encoding") == "chunked" and body == data
    resp, body = get(demo, "POST", "/sha256", data)
    assert body.decode().strip() == hashlib.sha256(data).hexdigest() == resp.getheader("X-Body-SHA256")
    head = b"GET /headers HTTP/1.1\r\nHost: example\r\nX-Odd-Case: a\r\nx-odd-case: b\r\nConnection: close\r\n\r\n"
    assert raw(demo, head).endswith(b"\r\n\r\n" + head)


def test_demo_pipelining_http10_and_expect(demo: int) -> None:
    reqs = b"".join(b"GET /size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in (1, 2, 3))
    wire = raw(demo, reqs + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert wire.count(b"HTTP/1.1 200 OK") == 4 and wire.endswith(b"\r\n\r\nhi")
    # HTTP/1.0: closes after the response, chunked routes become close-delimited
    with socket.create_connection(("127.0.0.1", demo), timeout=5) as s:
        s.sendall(b"GET /chunked/10 HTTP/1.0\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert b"Transfer-Encoding" not in out and out.endswith(b"\r\n\r\n" + payload(10))
    # Expect: 100-continue gets its 100 before the body is sent
    with socket.create_connection(("127.0.0.1", demo), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abc")
        assert s.recv(1000).endswith(b"\r\n\r\nabc")


def test_demo_sleep_and_concurrency(demo: int) -> None:
    t0 = time.monotonic()
    assert get(demo, "GET", "/sleep/0.3")[0].status == 200
    assert time.monotonic() - t0 >= 0.3
    socks = [socket.create_connection(("127.0.0.1", demo), timeout=10) for _ in range(200)]
    for s in socks:
        s.sendall(b"GET /size/5 HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in socks:
        assert s.recv(1000).startswith(b"HTTP/1.1 200 OK")
        s.close()


def test_demo_port_in_use(demo: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.backend", "--listen", f"127.0.0.1:{demo}"],
                          cwd=ROOT, capture_output=True, timeout=10, check=False)
    assert proc.returncode == 2 and b"already in use" in proc.stderr


# --- demo backend: WebSocket -----------------------------------------------------------

def test_demo_websocket_echo(demo: int) -> None:
    with ws_connect(f"ws://127.0.0.1:{demo}/ws/", max_size=None, compression=None) as ws:
        for size in (0, 1, 125, 126, 65535, 65536, 1 << 20):
            data = os.urandom(size)
            ws.send(data)
            assert ws.recv() == data
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(["frag", "mented", " text"])
        assert ws.recv() == "fragmented text"
        assert ws.ping(b"p").wait(2)
        big = os.urandom(16 << 20)
        t0 = time.monotonic()
        ws.send(big)
        assert ws.recv() == big
        print(f"16 MiB echo: {time.monotonic() - t0:.3f}s")
        ws.close(4321, "bye")
    assert ws.close_code == 4321 and ws.close_reason == "bye"


def test_demo_websocket_discard() -> None:
    proc, port = start_demo("--ws-discard")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            head = s.recv(1000)
            assert head.startswith(b"HTTP/1.1 101") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
            s.sendall(os.urandom(4 << 20))  # not even valid frames: discarded unparsed
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1000) == b""
    finally:
        stop(proc)


# --- RecordingBackend ------------------------------------------------------------------

def test_recording_keepalive_and_bodies() -> None:
    with RecordingBackend() as be:
        assert be.bytes_received.value == 0
        conn = http.client.HTTPConnection("127.0.0.1", be.port, timeout=5)
        for _ in range(3):
            conn.request("GET", "/a", headers={"X-Test": "1"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b"ok\n"
        conn.request("POST", "/b", body=iter([b"hello ", b"world"]), encode_chunked=True)
        conn.getresponse().read()
        conn.close()
        assert be.connections.value == 1 and len(be.requests) == 4
        first, last = be.requests[0], be.requests[3]
        assert first.head.startswith(b"GET /a HTTP/1.1\r\n") and first.header("x-test") == "1"
        assert last.body == b"hello world" and last.wire_body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
        assert last.body_sha256 == hashlib.sha256(b"hello world").hexdigest()
        assert be.bytes_received.value == sum(len(r.head) + len(r.wire_body) for r in be.requests)


def test_recording_handler_streams_chunked() -> None:
    def handler(req: object) -> Response:
        return Response(201, iter([b"a" * 10, b"b" * 5]), headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])

    with RecordingBackend(handler) as be:
        resp, body = get(be.port, "GET", "/")
        assert resp.status == 201 and body == b"a" * 10 + b"b" * 5
        assert resp.headers.get_all("Set-Cookie") == ["a=1", "b=2"]


def test_recording_idle_close_after() -> None:
    with RecordingBackend(idle_close_after=0.3) as be:
        with socket.create_connection(("127.0.0.1", be.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1000).endswith(b"ok\n")
            t0 = time.monotonic()
            assert s.recv(1000) == b""
            assert 0.25 <= time.monotonic() - t0 < 2
        assert be.idle_closes.value == 1


def test_recording_raw_response_verbatim() -> None:
    garbage = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    with RecordingBackend(raw_response=garbage) as be:
        assert raw(be.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == garbage
    with RecordingBackend(raw_response=garbage, raw_then="reset") as be, connect(be.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        with pytest.raises(ConnectionResetError):
            while chunk := s.recv(1000):
                got += chunk
        assert got in (garbage, b"")


def test_recording_reject_early_status() -> None:
    with RecordingBackend(reject_early_status=413) as be:
        with socket.create_connection(("127.0.0.1", be.port), timeout=5) as s:
            s.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
            out = b""
            while chunk := s.recv(1000):
                out += chunk
        assert out.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in out
        assert not be.requests[0].body_read


def test_recording_throttles() -> None:
    body = os.urandom(300_000)
    with RecordingBackend(throttle_read_bps=1 << 20, record_body=False) as be:
        t0 = time.monotonic()
        resp, _ = get(be.port, "POST", "/", body)
        assert resp.status == 200 and time.monotonic() - t0 >= 0.2
        assert be.requests[0].body == b"" and be.requests[0].body_length == len(body)
    with RecordingBackend(lambda req: Response(body=body), throttle_write_bps=1 << 20) as be:
        t0 = time.monotonic()
        assert get(be.port, "GET", "/")[1] == body
        assert time.monotonic() - t0 >= 0.2


def test_recording_reset_all() -> None:
    with RecordingBackend(response_delay=5) as be, connect(be.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert be.wait_requests(1)
        be.reset_all()
        with pytest.raises(ConnectionResetError):
            s.recv(1000)


# --- WsEchoServer and UpgradeBackend ---------------------------------------------------

def test_ws_echo_server() -> None:
    with WsEchoServer() as srv:
        with ws_connect(f"ws://127.0.0.1:{srv.port}/chat?x=1", max_size=None) as ws:
            ws.send(b"\x00" * 100_000)
            assert ws.recv() == b"\x00" * 100_000
            ws.close(4000)
        assert ws.close_code == 4000
        deadline = time.monotonic() + 2
        while not srv.close_codes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.paths == ["/chat?x=1"] and srv.close_codes == [4000]
        assert any(k.lower() == "upgrade" and v == "websocket" for k, v in srv.handshakes[0])


def upgrade_request(token: str = "foo") -> bytes:
    return f"GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: {token}\r\nConnection: upgrade\r\n\r\n".encode()


def read_until_eof(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_upgrade_echo_half_close_and_early_data() -> None:
    with UpgradeBackend(early_data=b"EARLY") as be:
        with socket.create_connection(("127.0.0.1", be.port), timeout=5) as s:
            s.sendall(upgrade_request() + b"client-early")
            s.sendall(b"x" * 100_000)
            s.shutdown(socket.SHUT_WR)
            out = read_until_eof(s)
        assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\nEARLY")
        assert out.endswith(b"client-early" + b"x" * 100_000)
        assert be.tunnels[0].done.wait(2) and be.tunnels[0].ended == "eof"
        assert be.tunnels[0].received_bytes == 100_012


def test_upgrade_server_first_and_plain_requests() -> None:
    with UpgradeBackend(mode="server_first", server_data=b"bye") as be:
        with socket.create_connection(("127.0.0.1", be.port), timeout=5) as s:
            s.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1000).endswith(b"no upgrade\n")
            s.sendall(upgrade_request("websocket"))
            assert read_until_eof(s).endswith(b"\r\n\r\nbye")  # the server's FIN came first
            s.sendall(b"after the FIN")
            s.shutdown(socket.SHUT_WR)
            assert be.tunnels[0].done.wait(2)
        assert bytes(be.tunnels[0].received) == b"after the FIN"


def test_upgrade_reset_and_unasked_101() -> None:
    with UpgradeBackend(reset_after=10) as be:
        with socket.create_connection(("127.0.0.1", be.port), timeout=5) as s:
            s.sendall(upgrade_request() + b"0123456789abc")
            with pytest.raises(ConnectionResetError):
                read_until_eof(s)
        assert be.tunnels[0].done.wait(2) and be.tunnels[0].ended == "reset"
    with UpgradeBackend(always_101=True) as be, connect(be.port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 101 ")


def test_upgrade_reset_all_while_idle() -> None:
    with UpgradeBackend() as be, connect(be.port) as s:
        s.sendall(upgrade_request())
        s.recv(1000)
        deadline = time.monotonic() + 2
        while not be.tunnels and time.monotonic() < deadline:
            time.sleep(0.01)
        threading.Timer(0.1, be.reset_all).start()
        with pytest.raises(ConnectionResetError):
            read_until_eof(s)


# --- make run (bench.demo) -------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_make_run(tmp_path: Path) -> None:
    """The default config on free ports: banner, a request through the proxy, Ctrl-C stops all."""
    proxy_port, app_port = free_port(), free_port()
    text = (ROOT / "forkproxy.toml").read_text()
    text = text.replace("127.0.0.1:8000", f"127.0.0.1:{proxy_port}").replace("127.0.0.1:8080", f"127.0.0.1:{app_port}")
    text = text.replace("[master]\n", f'[master]\npidfile = "{tmp_path}/forkproxy.pid"\n', 1)
    config = tmp_path / "forkproxy.toml"
    config.write_text(text)
    demo = subprocess.Popen([sys.executable, "-m", "bench.demo", "-c", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert demo.stdout is not None
        out = ""
        deadline = time.monotonic() + 20
        while "Ctrl-C stops everything" not in out and time.monotonic() < deadline:
            line = demo.stdout.readline()
            assert line, f"demo exited early ({demo.wait()}):\n{out}"
            out += line
        assert f"curl -i http://127.0.0.1:{proxy_port}/" in out and "-m websockets ws://" in out
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3  # backend, master, workers
        resp, body = get(proxy_port, "GET", "/")
        assert resp.status == 200 and f"127.0.0.1:{app_port}".encode() in body
        # the port is taken now: a second demo says so and exits 2
        second = subprocess.run([sys.executable, "-m", "bench.demo", "-c", str(config)], cwd=ROOT,
                                capture_output=True, text=True, timeout=20, check=False)
        assert second.returncode == 2 and "already in use" in second.stderr
        demo.send_signal(2)  # SIGINT, as Ctrl-C
        assert demo.wait(15) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
    finally:
        if demo.poll() is None:
            demo.kill()
