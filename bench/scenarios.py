"""The scenarios of `bench run`: each measures one contender once and returns its figures.

A scenario function takes (Ctx, Contender, Window) and returns a `Measure`: named metrics,
the work done (requests, bytes or messages) to put CPU-seconds against, and extras (latency
percentiles, tunnel spread, errors). The CPU of the proxy, the backends and the generators
is read where the Window opens and closes: a scenario with a warm-up opens it where the
work it counts begins and closes it where that work ends, so the CPU and the work cover the
same interval; one without a warm-up leaves it open around the whole call. Every load loop
is bounded by count and time.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import httpload, wsload
from .contenders import BIG_PATH, SMALL_PATH, UPLOAD_PATH, Contender
from .procs import HOST, connections_per_process, fd_count, pss_bytes, which
from .stats import percentile
from .workers import parallel, spawn


@dataclass
class Ctx:
    quick: bool
    duration: float             # seconds of each measured window
    warm: float                 # seconds of warm-up before it
    gen_cpus: list[int] | None  # pinned layout: where generators run
    idle_tunnels: int
    reloads: int
    offered_rate: float = 0.0   # set from nginx's (or forkproxy's) measured maximum
    rate_source: str = ""


@dataclass
class Measure:
    metrics: dict[str, float]
    work: float = 0.0           # requests, bytes or messages, per Scenario.per
    extra: dict[str, Any] = field(default_factory=dict)
    errors: int = 0


class Window:
    """The measured window of one scenario call, as CPU readings where it opens and closes.

    `read` returns CPU-seconds so far by part (and "wall": the monotonic clock); `cpu()` gives
    what each part spent between the two readings. The runner opens the window before the call
    and closes it after, unless the scenario closed it itself."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read
        self.begin: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def open(self) -> None:
        self.begin, self.end = self.read(), {}

    def close(self) -> None:
        self.end = self.read()

    def cpu(self) -> dict[str, float]:
        if not self.end:
            self.close()
        return {k: self.end[k] - self.begin[k] for k in self.begin}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    metrics: tuple[Metric, ...]
    per: str                    # "request", "GB", "message" or "" (no CPU per unit)
    fn: Callable[[Ctx, Contender, Window], Measure]
    proxies_only: bool = False
    needs: tuple[str, ...] = ()


def wrk(ctx: Ctx, w: Window, port: int, path: str, conns: int, threads: int = 2,
        timeout: int | None = None) -> dict[str, float]:
    """wrk with `conns` keep-alive connections over min(threads, conns) threads, after a 1 s warm-up run
    when ctx.warm > 0; the window `w` frames the measured run, whose figures these are.
    A response slower than `timeout` seconds (wrk's default: 2) counts as an error.

    wrk needs an fd per connection: RLIMIT_NOFILE is inherited, so raise it in this process first
    (`procs.raise_nofile`)."""
    exe = which("wrk")
    assert exe is not None
    threads = max(1, min(threads, conns))
    def argv(seconds: int) -> list[str]:
        cmd = [exe, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
               *([f"--timeout={timeout}s"] if timeout else []), f"http://{HOST}:{port}{path}"]
        return ["taskset", "-c", ",".join(map(str, ctx.gen_cpus)), *cmd] if ctx.gen_cpus else cmd
    seconds = max(1, round(ctx.duration))
    slack = 30 + conns // 200  # connecting thousands of sockets takes a while
    if ctx.warm > 0:
        subprocess.run(argv(1), capture_output=True, text=True, timeout=1 + slack)
    w.open()
    r = subprocess.run(argv(seconds), capture_output=True, text=True, timeout=seconds + slack)
    w.close()
    out = r.stdout
    m = _REQUESTS.search(out)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({r.returncode}): {out[-500:]} {r.stderr[-500:]}")
    secs = float(m.group(2)) / (1000.0 if m.group(3) == "ms" else 1.0)
    reqs = float(m.group(1))
    errs = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        errs += sum(int(x) for x in se.groups())
    nx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if nx:
        errs += int(nx.group(1))
    lat = {}
    for pct in ("50", "99"):
        lm = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.M)
        if lm:
            lat[pct] = float(lm.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[lm.group(2)]
    return {"requests": reqs, "seconds": secs, "errors": float(errs),
            "p50_ms": lat.get("50", float("nan")), "p99_ms": lat.get("99", float("nan"))}


_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")


def http_small(conns: int, timeout: int | None = None) -> Callable[[Ctx, Contender, Window], Measure]:
    """Keep-alive GETs of the 13-byte body over `conns` connections (wrk); `http_rps` is 50."""
    def run(ctx: Ctx, c: Contender, win: Window) -> Measure:
        w = wrk(ctx, win, c.port_for("http"), SMALL_PATH, conns, timeout=timeout)
        return Measure({"rps": w["requests"] / w["seconds"]}, work=w["requests"],
                       extra={"wrk_p50_ms": w["p50_ms"], "wrk_p99_ms": w["p99_ms"]}, errors=int(w["errors"]))
    return run


http_rps = http_small(50)


def http_latency(ctx: Ctx, c: Contender, w: Window) -> Measure:
    procs = 2
    rate = ctx.offered_rate / procs
    res, _ = run_window(ctx, w, [(httpload.open_loop, (c.port_for("http"), SMALL_PATH, rate, 25))] * procs)
    lat = array("d")
    late = errors = scheduled = 0.0
    for r in res:
        if isinstance(r, Exception):
            raise r
        lat.frombytes(r["latencies"])
        late += r["late"]
        errors += r["errors"]
        scheduled += r["scheduled"]
    done = len(lat) - late
    return Measure({"p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3},
                   work=done, errors=int(errors),
                   extra={"offered_rps": ctx.offered_rate, "achieved_rps": done / ctx.duration,
                          "late": late, "scheduled": scheduled, "rate_source": ctx.rate_source})


def http_big(ctx: Ctx, c: Contender, win: Window) -> Measure:
    w = wrk(ctx, win, c.port_for("http"), BIG_PATH, 8)
    nbytes = w["requests"] * (1 << 20)
    return Measure({"mbps": nbytes / w["seconds"] / 1e6}, work=nbytes / 1e9, errors=int(w["errors"]))


def _upload(port: int, size: int, duration: float, max_uploads: int) -> dict[str, float]:
    block = bytes(1 << 20)
    s = socket.create_connection((HOST, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: bench\r\nContent-Length: {size}\r\n\r\n".encode()
    t0 = time.monotonic()
    done = 0
    while done < max_uploads and (done < 2 or time.monotonic() - t0 < duration):
        s.sendall(head)
        left = size
        while left:
            n = min(left, len(block))
            s.sendall(block[:n] if n < len(block) else block)
            left -= n
        resp = b""
        while b"\r\n\r\n" not in resp or not resp.endswith(b"ok\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("EOF before the upload's response")
            resp += chunk
        if not resp.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"upload answered {resp[:40]!r}")
        done += 1
    secs = time.monotonic() - t0
    s.close()
    return {"bytes": float(done * size), "seconds": secs, "uploads": float(done)}


def http_upload(ctx: Ctx, c: Contender, w: Window) -> Measure:
    """No warm-up: the window is the whole call."""
    size = 100 << 20
    res = parallel([(_upload, (c.port_for("raw"), size, ctx.duration, 50))], ctx.duration + 120, ctx.gen_cpus)[0]
    if isinstance(res, Exception):
        raise res
    return Measure({"mbps": res["bytes"] / res["seconds"] / 1e6}, work=res["bytes"] / 1e9,
                   extra={"uploads": res["uploads"]})


def _spread(c: Contender) -> list[int]:
    if not c.is_proxy:
        return []
    return connections_per_process(c.workers(), c.port)


def run_window(ctx: Ctx, w: Window, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]],
               during: Callable[[], Any] | None = None) -> tuple[list[Any], Any]:
    """Run generator processes (`workers.parallel`) that warm up for ctx.warm, then count their work
    for ctx.duration: each call gets the window's (start, end) on the monotonic clock as its last two
    arguments, and `w` is opened at start and closed at end. `during()`, when given, runs once inside
    the window (half a second in at most); the results of the calls and what `during` returned."""
    start = time.monotonic() + ctx.warm
    end = start + ctx.duration
    timeout = ctx.warm + ctx.duration + 30
    timed = [(fn, (*args, start, end)) for fn, args in calls]
    box: dict[str, list[Any]] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", parallel(timed, timeout, ctx.gen_cpus)))
    t.start()
    _sleep_until(start)
    w.open()
    seen = None
    if during is not None:
        _sleep_until(start + min(0.5, ctx.duration / 2))
        seen = during()
    _sleep_until(end)
    w.close()
    t.join(timeout + 5)
    return box.get("r", [RuntimeError("generators did not return")]), seen


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def ws_bulk(tunnels: int, procs: int = 4) -> Callable[[Ctx, Contender, Window], Measure]:
    """64 KiB frames client -> backend over `tunnels` tunnels: one pump process per tunnel up to
    `procs` tunnels, beyond that `procs` processes sharing the tunnels (epoll)."""
    def run(ctx: Ctx, c: Contender, w: Window) -> Measure:
        port, frame = c.port_for("raw"), 64 * 1024
        calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]
        if tunnels <= procs:
            calls = [(wsload.bulk, (port, "/ws/bulk", frame))] * tunnels
        else:
            share = [tunnels // procs + (i < tunnels % procs) for i in range(procs)]
            calls = [(wsload.bulk_many, (port, "/ws/bulk", frame, n)) for n in share]
        res, spread = run_window(ctx, w, calls, lambda: _spread(c))
        total = secs = 0.0
        for r in res:
            if isinstance(r, Exception):
                raise r
            total += r["bytes"]
            secs = max(secs, r["seconds"])
        return Measure({"gbps": total / secs / 1e9}, work=total / 1e9,
                       extra={"spread": spread, "pump_processes": len(calls)})
    return run


def ws_echo(ctx: Ctx, c: Contender, w: Window) -> Measure:
    procs, tunnels = 2, 32
    calls = [(wsload.echo, (c.port_for("raw"), "/ws/echo", tunnels // procs, 32))] * procs
    res, spread = run_window(ctx, w, calls, lambda: _spread(c))
    msgs = secs = errors = 0.0
    rtts = array("d")
    for r in res:
        if isinstance(r, Exception):
            raise r
        msgs += r["messages"]
        secs = max(secs, r["seconds"])
        errors += r["errors"]
        rtts.frombytes(r["rtts"])
    return Measure({"msgs": msgs / secs, "p50_us": percentile(rtts, 50) * 1e6, "p99_us": percentile(rtts, 99) * 1e6},
                   work=msgs, errors=int(errors), extra={"spread": spread})


def idle_tunnels(ctx: Ctx, c: Contender, w: Window) -> Measure:
    warm = max(50, ctx.idle_tunnels // 20)
    proc, conn = spawn(wsload.hold_idle, (c.port_for("raw"), "/ws/idle", warm, ctx.idle_tunnels), ctx.gen_cpus)
    try:
        if not conn.poll(60):
            raise RuntimeError("idle tunnels: warm-up timed out")
        tag, n = conn.recv()
        if tag != "warm":
            raise RuntimeError(f"idle tunnels: {n}")
        time.sleep(1.0)
        procs = c.processes()
        pss0, fds0 = pss_bytes(procs), fd_count(procs)
        conn.send("go")
        if not conn.poll(120):
            raise RuntimeError("idle tunnels: opening timed out")
        tag, n2 = conn.recv()
        if tag != "open":
            raise RuntimeError(f"idle tunnels: {n2}")
        time.sleep(1.0)
        procs = c.processes()
        pss1, fds1 = pss_bytes(procs), fd_count(procs)
        spread = _spread(c)
        conn.send("close")
    finally:
        proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join(2)
    count = n2 - n
    time.sleep(1.0)  # let the proxy close them before the next contender
    if not c.is_proxy:
        return Measure({"pss_kib": float("nan"), "fds": float("nan")}, extra={"tunnels": count})
    return Measure({"pss_kib": (pss1 - pss0) / count / 1024, "fds": (fds1 - fds0) / count},
                   extra={"tunnels": count, "spread": spread, "pss_before_mib": pss0 / 2**20,
                          "pss_after_mib": pss1 / 2**20})


def reloads(ctx: Ctx, c: Contender, w: Window) -> Measure:
    """No warm-up: the window is the whole call (every completed request counts)."""
    interval = 0.5 if ctx.quick else 1.0
    duration = ctx.reloads * interval + 2.0
    calls = [(httpload.careful, (c.port_for("http"), SMALL_PATH, 16, duration, 0.02, seed)) for seed in (1, 2)]
    box: dict[str, list[Any]] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", parallel(calls, duration + 30, ctx.gen_cpus)))
    t.start()
    time.sleep(1.0)
    done = 0
    try:
        for _ in range(ctx.reloads):
            c.reload()
            done += 1
            time.sleep(interval)
    finally:
        t.join(duration + 40)
    res = box.get("r", [RuntimeError("reload clients did not return")])
    agg = {"ok": 0.0, "failed": 0.0, "reconnects": 0.0, "idle_eof": 0.0, "idle_reset": 0.0}
    for r in res:
        if isinstance(r, Exception):
            raise r
        for k in agg:
            agg[k] += r[k]
    return Measure({"failed": agg["failed"]}, work=agg["ok"], extra=dict(agg, reloads=done))


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("http_rps", "HTTP keep-alive, small response, 50 conns (wrk)",
             (Metric("rps", "requests/s", "req/s", True),), "request", http_rps, needs=("wrk",)),
    Scenario("http_latency", "HTTP at half nginx's max rate (open loop, 50 conns)",
             (Metric("p50_ms", "p50 latency", "ms", False), Metric("p99_ms", "p99 latency", "ms", False)),
             "request", http_latency),
    Scenario("http_1m", "HTTP 1 MiB responses, 8 conns (wrk)",
             (Metric("mbps", "MB/s", "MB/s", True),), "GB", http_big, needs=("wrk",)),
    Scenario("http_upload", "HTTP 100 MiB uploads, 1 conn",
             (Metric("mbps", "MB/s", "MB/s", True),), "GB", http_upload),
    Scenario("ws_bulk_1", "WebSocket bulk, 64 KiB frames, 1 tunnel",
             (Metric("gbps", "GB/s", "GB/s", True),), "GB", ws_bulk(1)),
    Scenario("ws_bulk_4", "WebSocket bulk, 64 KiB frames, 4 tunnels",
             (Metric("gbps", "GB/s", "GB/s", True),), "GB", ws_bulk(4)),
    Scenario("ws_echo", "WebSocket echo, 32 tunnels, 32-byte messages",
             (Metric("msgs", "messages/s", "msg/s", True), Metric("p50_us", "p50 round trip", "µs", False),
              Metric("p99_us", "p99 round trip", "µs", False)), "message", ws_echo),
    Scenario("idle_tunnels", "idle WebSocket tunnels: growth per tunnel",
             (Metric("pss_kib", "PSS per tunnel", "KiB", False), Metric("fds", "fds per tunnel", "fds", False)),
             "", idle_tunnels, proxies_only=True),
    Scenario("reloads", "reloads under keep-alive load: failed requests",
             (Metric("failed", "failed requests", "requests", False),), "request", reloads, proxies_only=True),
)

BY_NAME = {s.name: s for s in SCENARIOS}
