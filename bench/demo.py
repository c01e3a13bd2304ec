"""`make run`: start the demo backend and forkproxy on a config, then print what to try.

`python -m bench.demo -c forkproxy.toml` starts `bench.backend` on every loopback address
of the config's upstreams, then `python -m forkproxy -c FILE`, waits until the proxy
answers HTTP, and prints a few commands to try. Both children run in their own process
groups and die with this process (PR_SET_PDEATHSIG); Ctrl-C, SIGTERM or SIGHUP stops the
proxy first, then the backend, and waits until every process they started has exited.
Exit status: 0 after a requested stop, 2 if an address is taken, 1 if a child failed.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_stop_requested: list[int] = []


_LIBC = ctypes.CDLL(None)


def _die_with_parent() -> None:
    """preexec_fn (runs before any thread is started): SIGTERM this child when the demo dies."""
    try:
        _LIBC.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except AttributeError:
        pass


def _host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'host:port', '[v6]:port', ':port' or 'port' (a listen value may carry options after a space)."""
    text = text.split()[0]
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    return host.strip("[]") or default_host, int(port)


def read_config(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]], str]:
    """(upstream addresses to serve, proxy listen addresses, a WebSocket path to try)."""
    with path.open("rb") as f:
        cfg = tomllib.load(f)
    upstreams: list[tuple[str, int]] = []
    for group in cfg.get("upstream", {}).values():
        for server in group.get("servers", []):
            text = server if isinstance(server, str) else str(server.get("address") or server.get("server", ""))
            if text and not text.startswith("unix:"):
                addr = _host_port(text.removeprefix("http://"))
                if addr not in upstreams:
                    upstreams.append(addr)
    listens: list[tuple[str, int]] = []
    ws_path = "/ws/"
    for server in cfg.get("server", []):
        values = server.get("listen", [])
        for value in [values] if isinstance(values, str) else values:
            host, port = _host_port(str(value))
            listens.append(("127.0.0.1" if host in ("0.0.0.0", "*") else "::1" if host == "::" else host, port))
        for loc in server.get("location", []):
            upgrades = loc.get("websocket") or "Upgrade" in loc.get("set_header", {})
            words = str(loc.get("path", "")).split()  # "/ws/", "^~ /ws/", "= /ws" (not a regex)
            if upgrades and words and (len(words) == 1 or words[0] in ("^~", "=")) and words[-1].startswith("/"):
                ws_path = words[-1]
                break
    return upstreams or [("127.0.0.1", 8080)], listens or [("127.0.0.1", 8000)], ws_path


def _fmt(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _in_use(addr: tuple[str, int]) -> bool:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def _spawn(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, env=env, process_group=0,
                            preexec_fn=_die_with_parent, **kw)  # noqa: PLW1509 - no thread runs yet


def _accepts(addr: tuple[str, int]) -> bool:
    try:
        socket.create_connection(addr, timeout=1).close()
        return True
    except OSError:
        return False


def _wait_backend(proc: subprocess.Popen[str], addrs: list[tuple[str, int]]) -> bool:
    """Wait until the backend accepts on every address; False if it exits or we are told to stop."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not all(_accepts(a) for a in addrs):
        if proc.poll() is not None:
            assert proc.stdout is not None
            print(proc.stdout.read(), end="", file=sys.stderr)
            return False
        if _stop_requested or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Tail(threading.Thread):
    """Copies a child's output: held back until `live` is set, printed after; keeps the tail."""

    def __init__(self, stream: IO[str], prefix: str) -> None:
        super().__init__(daemon=True)
        self.stream, self.prefix = stream, prefix
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self.held: list[str] = []
        self.live = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        for line in self.stream:
            with self._lock:
                self.lines.append(line)
                if self.live.is_set():
                    sys.stderr.write(self.prefix + line)
                else:
                    self.held.append(line)

    def go_live(self) -> None:
        with self._lock:
            for line in self.held:
                sys.stderr.write(self.prefix + line)
            self.held.clear()
            self.live.set()


def _answers(addr: tuple[str, int]) -> bool:
    """True once something at addr answers a GET / with an HTTP status line."""
    try:
        with socket.create_connection(addr, timeout=2) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {_fmt(addr)}\r\nConnection: close\r\n\r\n".encode())
            return s.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


def _stop(procs: list[subprocess.Popen[str]], tracked: set[psutil.Process]) -> None:
    """SIGTERM each child in order (waiting for it), then make sure every tracked process is gone."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"pid {proc.pid} did not stop in {STOP_TIMEOUT:.0f}s: killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
    _, alive = psutil.wait_procs(list(tracked), timeout=STOP_TIMEOUT)
    for p in alive:
        print(f"pid {p.pid} outlived its parent: killing it", file=sys.stderr)
        try:
            p.kill()
        except psutil.Error:
            pass


def _track(tracked: set[psutil.Process], proc: subprocess.Popen[str]) -> None:
    try:
        tracked.update(psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        pass


def _command(name: str) -> str:
    """How to run a console script of this environment from the current directory."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("../..") else str(path)
    except ValueError:
        return str(path)


def banner(listen: tuple[str, int], upstreams: list[tuple[str, int]], ws_path: str, config: str,
           master: int, backend: int) -> str:
    url = f"http://{_fmt(listen)}"
    workers = len(psutil.Process(master).children()) if psutil.pid_exists(master) else 0
    py, fp = _command("python"), _command("forkproxy")
    return f"""
  forkproxy is up: master pid {master} with {workers} workers, config {config}
  proxy    {url}/
  backend  {", ".join(_fmt(a) for a in upstreams)}  (python -m bench.backend, pid {backend})

  Try, from another terminal:
    curl -i {url}/
    curl -i {url}/size/1000000 -o /dev/null
    curl -i --data-binary 'hello, forkproxy' {url}/echo
    curl -i {url}/headers                       # the request as the backend saw it
    {py} -m websockets ws://{_fmt(listen)}{ws_path}      # type a line: it comes back
    {fp} status -c {config}
    kill -HUP {master}                                # reload {config}, no connection dropped

  Ctrl-C stops everything.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.demo", description="backend + forkproxy + tips")
    ap.add_argument("-c", "--config", default="forkproxy.toml", help="forkproxy config (default forkproxy.toml)")
    ap.add_argument("--backend-verbose", action="store_true", help="log every request the backend serves")
    args = ap.parse_args(argv)
    try:
        upstreams, listens, ws_path = read_config(Path(args.config))
    except (OSError, tomllib.TOMLDecodeError, ValueError, AttributeError) as e:
        print(f"demo: cannot read {args.config}: {e}", file=sys.stderr)
        return 1
    for addr, what in [(a, "the backend (upstream.*.servers)") for a in upstreams] + [
            (a, "the proxy (server.listen)") for a in listens]:
        if _in_use(addr):
            print(f"demo: {_fmt(addr)} is already in use, so {what} cannot listen there.\n"
                  f"      Is another `make run` (or something else) still running? Stop it, or change "
                  f"{args.config}.", file=sys.stderr)
            return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: _stop_requested.append(signum))

    argv_backend = [sys.executable, "-m", "bench.backend"] + [x for a in upstreams for x in ("--listen", _fmt(a))]
    backend = _spawn(argv_backend + (["--verbose"] if args.backend_verbose else []), cwd=ROOT)
    procs: list[subprocess.Popen[str]] = [backend]
    tracked: set[psutil.Process] = set()
    try:
        if not _wait_backend(backend, upstreams):
            if _stop_requested:
                return 0
            code = backend.poll()
            print(f"demo: the backend did not start (exit status {code})", file=sys.stderr)
            return 2 if code == 2 else 1
        proxy = _spawn([sys.executable, "-m", "forkproxy", "-c", args.config])
        procs.insert(0, proxy)  # stopped first: no 502 while it drains
        assert proxy.stdout is not None and backend.stdout is not None
        proxy_out, backend_out = Tail(proxy.stdout, ""), Tail(backend.stdout, "backend: ")
        proxy_out.start()
        backend_out.start()
        backend_out.go_live()

        deadline = time.monotonic() + READY_TIMEOUT
        while not _answers(listens[0]):
            if _stop_requested:
                return 0
            if proxy.poll() is not None or time.monotonic() > deadline:
                why = f"exited with status {proxy.returncode}" if proxy.poll() is not None else (
                    f"did not answer on {_fmt(listens[0])} within {READY_TIMEOUT:.0f}s")
                proxy_out.join(1)
                print(f"demo: forkproxy {why}. Its last log lines:", file=sys.stderr)
                print("".join("  | " + line for line in proxy_out.lines) or "  | (nothing)", file=sys.stderr)
                return 1
            time.sleep(0.1)
        _track(tracked, proxy)
        proxy_out.go_live()
        print(banner(listens[0], upstreams, ws_path, args.config, proxy.pid, backend.pid), flush=True)

        while not _stop_requested:
            for proc, name in ((proxy, "forkproxy"), (backend, "the backend")):
                if proc.poll() is not None:
                    print(f"demo: {name} exited unexpectedly (status {proc.returncode})", file=sys.stderr)
                    if proc is proxy:
                        proxy_out.join(1)
                        print("".join("  | " + line for line in list(proxy_out.lines)[-15:]), file=sys.stderr)
                    return 1
            _track(tracked, proxy)  # workers come and go with reloads: remember them all
            time.sleep(0.5)
        print("\ndemo: stopping forkproxy and the backend...", file=sys.stderr)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        _stop(procs, tracked)


if __name__ == "__main__":
    sys.exit(main())
