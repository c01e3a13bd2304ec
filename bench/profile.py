"""`python -m bench profile`: Python calls and syscalls per proxied request and per message.

  python -m bench profile [--requests N] [--messages N] [--top K]

One forkproxy worker (workers = 1) in front of bench.rawbackend. For HTTP (keep-alive GET
of a small body) and for WebSocket echo (32-byte messages through a tunnel):
1. warm up (connections, upstream keep-alive pool, tunnels open);
2. cProfile window: the worker's profiler is switched on by signal (bench.profiled), the
   load runs, the profiler is switched off and dumps its stats: calls / request;
3. strace window (if strace is installed): `strace -c -f -p WORKER` attached, the same
   load again, then detached: syscalls / request.
A round trip of the echo is two tunnelled messages (one each way); figures are given per
round trip and per message. Neither window times anything: tracing slows the worker.

  python -m bench profile --instructions

instead prints the user-space CPU instructions per proxied request (bench.instructions:
one connection in one process under valgrind's cachegrind), a figure that, unlike a
timing, does not move with the machine's load: the one to compare before and after a change.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import wsload
from .contenders import _port_from_log, forkproxy_config
from .httpload import _Conn, _complete
from .procs import Service, Services, log, python_env, which
from .workers import parallel

CLIENTS = 4


def _http_client(port: int, n: int) -> int:
    c = _Conn(port)
    c.sock.setblocking(True)
    req = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        c.sock.sendall(req)
        while not _complete(c):
            data = c.sock.recv(65536)
            if not data:
                raise ConnectionError("EOF in a response")
            c.buf += data
    c.sock.close()
    return n


def _echo_client(port: int, n: int) -> int:
    s = wsload.handshake(port, "/ws/echo")
    msg = wsload.masked_frame(bytes(32))
    for _ in range(n):
        s.sendall(msg)
        got = 0
        while got < 34:
            data = s.recv(4096)
            if not data:
                raise ConnectionError("EOF in the echo")
            got += len(data)
    s.close()
    return n


def _load(fn, port: int, total: int) -> int:  # type: ignore[no-untyped-def]
    res = parallel([(fn, (port, total // CLIENTS))] * CLIENTS, timeout=600)
    for r in res:
        if isinstance(r, Exception):
            raise r
    return sum(res)


def _profile_window(pid: int, outdir: Path, fn, port: int, total: int) -> tuple[int, pstats.Stats]:  # type: ignore[no-untyped-def]
    prof = outdir / f"worker-{pid}.prof"
    prof.unlink(missing_ok=True)
    os.kill(pid, signal.SIGRTMIN)
    time.sleep(0.2)
    done = _load(fn, port, total)
    os.kill(pid, signal.SIGRTMIN + 1)
    deadline = time.monotonic() + 30
    while not prof.exists() or prof.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not dump its profile")
        time.sleep(0.05)
    time.sleep(0.2)
    return done, pstats.Stats(str(prof))


def _strace_window(pid: int, outdir: Path, fn, port: int, total: int) -> tuple[int, dict[str, int]]:  # type: ignore[no-untyped-def]
    out = outdir / f"strace-{pid}.txt"
    st = subprocess.Popen([which("strace") or "strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                          stderr=subprocess.PIPE, text=True)
    assert st.stderr is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait until attached
        line = st.stderr.readline()
        if "attached" in line or not line:
            break
    time.sleep(0.2)
    try:
        done = _load(fn, port, total)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(30)
    return done, parse_strace(out.read_text())


def parse_strace(text: str) -> dict[str, int]:
    """Calls per syscall from `strace -c` output (the total line left out)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        tok = line.split()
        if len(tok) < 5 or tok[-1] == "total":
            continue
        try:
            float(tok[0])
            calls = int(tok[3])
        except ValueError:
            continue
        out[tok[-1]] = out.get(tok[-1], 0) + calls
    return out


def _report(title: str, unit: str, n: int, stats: pstats.Stats | None, sys_n: int, syscalls: dict[str, int] | None,
            top: int, per_extra: float = 1.0) -> list[str]:
    lines = [f"## {title}", ""]
    if stats is not None:
        total = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        own = sum(v[1] for k, v in stats.stats.items() if k[0] != "~")  # type: ignore[attr-defined]
        lines.append(f"Python function calls per {unit}: {total / n:.1f} ({total} calls / {n})"
                     + (f"; per message: {total / n / per_extra:.1f}" if per_extra != 1 else "")
                     + f"; of which functions written in Python: {own / n:.1f}, built-ins and C methods: "
                     f"{(total - own) / n:.1f}")
        lines += ["", f"| calls per {unit} | function |", "|---|---|"]
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])[:top]  # type: ignore[attr-defined]
        for (file, line, func), v in rows:
            where = f"{Path(file).name}:{line}" if line else file
            lines.append(f"| {v[1] / n:.2f} | {func} ({where}) |")
        lines += ["", f"| calls per {unit} | function written in Python | own time share |", "|---|---|---|"]
        own_rows = [kv for kv in stats.stats.items() if kv[0][0] != "~"]  # type: ignore[attr-defined]
        tt = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
        for (file, line, func), v in sorted(own_rows, key=lambda kv: -kv[1][1])[:top]:
            lines.append(f"| {v[1] / n:.2f} | {func} ({Path(file).name}:{line}) | {v[2] / tt:.1%} |")
    if syscalls is not None:
        total = sum(syscalls.values())
        lines += ["", f"Syscalls per {unit}: {total / sys_n:.2f} ({total} / {sys_n})"
                  + (f"; per message: {total / sys_n / per_extra:.2f}" if per_extra != 1 else ""),
                  "", f"| syscalls per {unit} | syscall |", "|---|---|"]
        for name, calls in sorted(syscalls.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"| {calls / sys_n:.2f} | {name} |")
    elif sys_n == 0:
        lines += ["", "strace missing (apt-get install strace): no syscall counts"]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000, help="HTTP requests per window (default 20000)")
    ap.add_argument("--messages", type=int, default=20000, help="echo round trips per window (default 20000)")
    ap.add_argument("--top", type=int, default=12, help="rows of the per-function/per-syscall tables")
    ap.add_argument("--instructions", action="store_true",
                    help="print CPU instructions per request instead (needs valgrind)")
    args = ap.parse_args(argv)
    if args.instructions:
        if not which("valgrind"):
            print("valgrind missing (apt-get install valgrind): cannot count instructions", file=sys.stderr)
            return 1
        from .instructions import count
        log("counting instructions under cachegrind (four runs, about 30 s)")
        print(f"user-space instructions per proxied request: {count():,.0f} "
              f"(every response head new: {count(unique=True):,.0f})")
        return 0
    services = Services()
    work = Path(tempfile.mkdtemp(prefix="forkproxy-profile-"))
    lines: list[str] = []
    try:
        raw = services.add(Service("rawbackend", [sys.executable, "-m", "bench.rawbackend", "--workers", "2"],
                                   log_path=work / "rawbackend.log"))
        raw_port = _port_from_log(raw)
        conf = forkproxy_config(work, 1, raw_port, raw_port)
        env = dict(python_env(), FORKPROXY_BENCH_PROFILE=str(work))
        fp = services.add(Service("forkproxy", [sys.executable, "-m", "bench.profiled", "-c", str(conf)],
                                  log_path=work / "forkproxy.log", env=env, cwd=work))
        port = _port_from_log(fp)
        deadline = time.monotonic() + 10
        while len(fp.processes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        wpid = fp.processes()[-1].pid
        log(f"worker pid {wpid}; warming up")
        _load(_http_client, port, 2000)
        strace = which("strace")
        for title, unit, fn, n, per in (
                ("HTTP keep-alive GET, small response", "request", _http_client, args.requests, 1.0),
                ("WebSocket echo, 32-byte messages", "round trip", _echo_client, args.messages, 2.0)):
            log(f"{title}: cProfile window ({n})")
            done, stats = _profile_window(wpid, work, fn, port, n)
            sys_done, calls = 0, None
            if strace:
                log(f"{title}: strace window ({n})")
                sys_done, calls = _strace_window(wpid, work, fn, port, n)
            lines += _report(title, unit, done, stats, sys_done, calls, args.top, per)
    finally:
        services.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f"# forkproxy profile: 1 worker, {CLIENTS} concurrent clients, backend bench.rawbackend\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
