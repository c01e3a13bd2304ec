"""Processes of a bench run: start, wait for a port, stop, and account CPU, PSS and fds.

Invariants:
- Every process the bench starts runs in its own session (process group) and is stopped
  by `Service.stop()`, which escalates TERM -> KILL on that group only; `Services` stops
  them all in reverse order at exit, so a run never leaks processes.
- CPU of a process tree is counted so that workers that exit between two readings are
  not lost: a master's `children_*` times hold what its reaped children used.
- Addresses are loopback only; ports come from the OS (bind to port 0), directly or,
  for programs that cannot listen on port 0 (nginx), just before they start.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:g}s")
        time.sleep(0.05)


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for this process and its children (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def which(name: str) -> str | None:
    """The program's path, or None; FORKPROXY_BENCH_HIDE=nginx,wrk hides tools (to try the fallbacks)."""
    if name in os.environ.get("FORKPROXY_BENCH_HIDE", "").split(","):
        return None
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)


def python_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Service:
    """One started program (and its children): a backend, a proxy, a generator."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, cpus: Sequence[int] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        if cpus:
            argv = [which("taskset") or "taskset", "-c", ",".join(map(str, cpus)), *argv]
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         env=env or python_env(), cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def processes(self) -> list[psutil.Process]:
        """The root process and its live descendants."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            _kill_group(self.pid, signal.SIGKILL)
            return
        _kill_group(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(self.pid, signal.SIGKILL)
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            pass


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Services:
    """Everything one run started; stops all of it, newest first."""

    def __init__(self) -> None:
        self.items: list[Service] = []

    def add(self, svc: Service) -> Service:
        self.items.append(svc)
        return svc

    def stop_all(self) -> None:
        while self.items:
            self.items.pop().stop()


def cpu_seconds(procs: Iterable[psutil.Process]) -> float:
    """User+system CPU of the processes, plus what their reaped children used."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def tree_cpu(services: Iterable[Service]) -> float:
    """CPU-seconds of whole trees, counted once each (a child's time is not in its live parent's)."""
    return sum(cpu_seconds(s.processes()) for s in services)


def children_cpu() -> float:
    """CPU of this process's reaped children (generators run as waited-for subprocesses)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def generators_cpu() -> float:
    """CPU-seconds this process's generators used so far: the reaped ones (`children_cpu`) and the
    running ones, read live so that a reading can fall inside a generator's run.

    Generators are this process's children outside any `Service` (a Service runs in a session of
    its own; generators stay in ours). A child reaped while it is read is counted in neither part
    or in both: the reading is taken again until the reaped total held still around it."""
    me, sid = psutil.Process(), os.getsid(0)
    for _ in range(10):
        reaped = children_cpu()
        running = cpu_seconds(p for p in me.children() if _sid(p.pid) == sid)
        if children_cpu() == reaped:
            break
    return reaped + running


def _sid(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def pss_bytes(procs: Iterable[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def fd_count(procs: Iterable[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.num_fds()
        except psutil.Error:
            continue
    return total


def connections_per_process(procs: Iterable[psutil.Process], local_port: int) -> list[int]:
    """Established TCP connections accepted on `local_port`, per process (for the spread over workers)."""
    out = []
    for p in procs:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:
            continue
        n = sum(1 for c in conns if c.laddr and c.laddr.port == local_port and c.status == psutil.CONN_ESTABLISHED)
        out.append(n)
    return out
