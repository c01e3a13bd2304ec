"""WebSocket through the real master: the `websockets` client against a `websockets` server
behind forkproxy (ports the OS picks), over the splice relay and the copy relay."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from backends import WsEchoServer
from harness import Proxy, wait_until
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

BODY = """
[upstream.app]
servers = ["{addr}"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/ws/"
proxy_pass = "http://app"
websocket = true
tunnel_timeout = "1h"

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""


class Setup:
    def __init__(self, make_proxy: Callable[..., Proxy], tmp: Path, cap: int,
                 handler: Callable[[Any], None] | None = None) -> None:
        self.server = WsEchoServer(handler, max_size=None).start()
        self.log = tmp / "tunnels.jsonl"
        self.proxy = make_proxy(BODY.format(addr=self.server.address),
                                master={"tunnel_log": str(self.log), "splice_pipes": cap})
        self.cap = cap

    def connect(self, path: str = "/ws/echo", **kw: Any) -> ClientConnection:
        kw.setdefault("max_size", None)
        ws: ClientConnection = connect(f"ws://127.0.0.1:{self.proxy.port}{path}", compression=None,
                                       proxy=None, ping_interval=None, open_timeout=10, close_timeout=5, **kw)
        return ws

    def records(self, n: int) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]] | None:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            return [json.loads(x) for x in lines] if len(lines) >= n else None
        got: list[dict[str, Any]] = wait_until(read, 10, f"{n} tunnel records")
        return got


@pytest.fixture(params=[1024, 0], ids=["splice", "copy"])
def setup(request: pytest.FixtureRequest, make_proxy: Callable[..., Proxy], tmp_path: Path) -> Iterator[Setup]:
    s = Setup(make_proxy, tmp_path, request.param)
    yield s
    s.server.stop()


@pytest.fixture
def make_setup(make_proxy: Callable[..., Proxy], tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    made: list[Setup] = []

    def make(handler: Callable[[Any], None] | None = None) -> Setup:
        s = Setup(make_proxy, tmp_path, 1024, handler)
        made.append(s)
        return s
    yield make
    for s in made:
        s.server.stop()


SIZES = [0, 1, 125, 126, 65535, 65536, 65537, 1 << 20 | 3, 16 << 20]


def test_echo_text_and_binary_from_0_to_16mib(setup: Setup) -> None:
    rng = random.Random(4)
    with setup.connect() as ws:
        for size in SIZES:
            data = os.urandom(size)
            ws.send(data)
            assert ws.recv(timeout=20) == data
            text = "".join(rng.choice("aé€𝄞 z") for _ in range(min(size, 2 << 20) // 3))
            ws.send(text)
            assert ws.recv(timeout=20) == text
    (rec,) = setup.records(1)
    assert rec["bytes_up"] > 16 << 20 and rec["bytes_down"] > 16 << 20
    if setup.cap == 0:
        assert rec["spliced_up"] == rec["spliced_down"] == 0
    else:
        assert rec["spliced_up"] > 8 << 20 and rec["spliced_down"] > 8 << 20


def test_fragmented_messages_both_ways(make_setup: Callable[..., Setup]) -> None:
    def handler(ws: Any) -> None:
        for message in ws:  # echo the joined message back in fragments of its own
            ws.send([message[i:i + 1000] for i in range(0, len(message), 1000)] or [message])
    s = make_setup(handler)
    with s.connect() as ws:
        parts = [os.urandom(n) for n in (1, 999, 70000, 0, 5)]
        ws.send(parts)  # one message in five frames
        assert ws.recv(timeout=10) == b"".join(parts)
        ws.send(["frag", "mented ", "text"])
        assert ws.recv(timeout=10) == "fragmented text"


def test_ping_pong_both_ways(make_setup: Callable[..., Setup]) -> None:
    pongs: list[bool] = []

    def handler(ws: Any) -> None:
        for _ in ws:
            pongs.append(ws.ping(b"from-server").wait(5))
            ws.send("pinged")
    s = make_setup(handler)
    with s.connect() as ws:
        assert ws.ping(b"from-client").wait(5)
        ws.send("ping me")
        assert ws.recv(timeout=10) == "pinged"
    assert pongs == [True]


def test_close_codes_pass_both_ways(make_setup: Callable[..., Setup]) -> None:
    def handler(ws: Any) -> None:
        for message in ws:
            if message == "close please":
                ws.close(4002, "server bye")
                return
            ws.send(message)
    s = make_setup(handler)
    with s.connect() as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.close(4001, "client bye")
    wait_until(lambda: s.server.close_codes, 5, "the server to see the close")
    assert s.server.close_codes == [4001]
    with s.connect() as ws:
        ws.send("close please")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and (info.value.rcvd.code, info.value.rcvd.reason) == (4002, "server bye")
    recs = s.records(2)
    assert {r["end"] for r in recs} == {"upstream"}  # a WebSocket server closes TCP first


def test_200_concurrent_tunnels_no_cross_talk(setup: Setup) -> None:
    def one(i: int) -> bool:
        with setup.connect() as ws:
            for j in range(10):
                msg = f"{i}:{j}:" + "x" * (i * 37 % 3000)
                ws.send(msg)
                if ws.recv(timeout=20) != msg:
                    return False
            blob = struct.pack("!I", i) * (1000 + i)
            ws.send(blob)
            return ws.recv(timeout=20) == blob

    with ThreadPoolExecutor(200) as pool:
        assert all(pool.map(one, range(200)))
    assert len(setup.records(200)) == 200


def test_upstream_closes_first(make_setup: Callable[..., Setup]) -> None:
    def handler(ws: Any) -> None:
        ws.send("bye now")
        ws.close(1000, "done")
    s = make_setup(handler)
    with s.connect() as ws:
        assert ws.recv(timeout=5) == "bye now"
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=5)
    (rec,) = s.records(1)
    assert rec["end"] == "upstream" and rec["reset"] is False


def test_client_resets(make_setup: Callable[..., Setup]) -> None:
    done = threading.Event()
    seen: list[str] = []

    def handler(ws: Any) -> None:
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed as e:
            seen.append(type(e).__name__)
        finally:
            done.set()
    s = make_setup(handler)
    with s.connect() as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.socket.close()  # with linger 0: an RST
        assert done.wait(5)
    assert seen == ["ConnectionClosedError"] and s.server.close_codes == [None]  # 1006: no close frame
    (rec,) = s.records(1)
    assert rec["end"] == "client" and rec["reset"] is True
