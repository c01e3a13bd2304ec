"""End-to-end harness: run the real `python -m forkproxy` master in a temp dir.

`Proxy(tmp_dir, body)` writes a config (a [master] section the harness owns, then `body`:
the upstream/server sections of the test, with `127.0.0.1:0` listen addresses), starts
the master in its own process group, and waits (bounded) until the log says the first
generation is serving. Ports the OS picked are read from the `listening on` lines.

Invariants: a Proxy never leaks processes: `stop()` asserts nothing of its process
group survives and `kill_all()` (the fixture finaliser) SIGKILLs the whole group.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

import psutil

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
REPO = Path(__file__).resolve().parents[2]

# A server whose upstream is a closed port: enough for tests that send no request.
DEFAULT_BODY = """
[upstream.app]
servers = ["127.0.0.1:9"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/"
proxy_pass = "http://app"
"""

_LISTEN = re.compile(r"listening on \[?([0-9a-fA-F.:]+?)\]?:(\d+)")
_READY = re.compile(r"generation (\d+) ready")
_WORKER_TITLE = re.compile(r"forkproxy: worker (\d+) gen (\d+)( draining)?")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no TOML for {value!r}")


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def group_members(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


def title(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline()).strip()
    except psutil.Error:
        return ""


def _take_tty() -> None:
    """In the child after setsid: make stdin (a pty) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Proxy:
    def __init__(self, tmp: Path, body: str = DEFAULT_BODY, *, workers: int = 2,
                 master: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.dir = Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "forkproxy.toml"
        self.pidfile = self.dir / "forkproxy.pid"
        self.error_log = self.dir / "error.log"
        self.stdio_log = self.dir / "stdio.log"
        self.master_settings: dict[str, Any] = {
            "workers": workers, "pidfile": str(self.pidfile), "error_log": str(self.error_log),
            "log_level": "info", "shutdown_timeout": "10s", "ready_timeout": "10s",
        }
        self.master_settings.update(master or {})
        self.body = body
        self.env = env
        self.wrapper = wrapper or []  # a command that execs its arguments (same pid)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pty_master = -1
        self.pgid = 0
        self.ports: list[int] = []
        self.write_config()

    # -- config ----------------------------------------------------------------------

    def config_text(self, body: str | None = None, master: dict[str, Any] | None = None) -> str:
        settings = dict(self.master_settings, **(master or {}))
        lines = ["[master]"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
        return "\n".join(lines) + "\n" + (self.body if body is None else body)

    def write_config(self, body: str | None = None, master: dict[str, Any] | None = None,
                     raw: str | None = None) -> None:
        """Rewrite the config file (for reload tests); `raw` replaces it verbatim."""
        text = raw if raw is not None else self.config_text(body, master)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    # -- start and stop --------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT, terminal: bool = False) -> Proxy:
        """Start the master in a new session; `terminal` gives it a pty as controlling
        terminal with its group in the foreground (as when run from a shell)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        stdin: int = subprocess.DEVNULL
        if terminal:
            self.pty_master, stdin = os.openpty()
        with open(self.stdio_log, "ab") as out:
            cmd = [*self.wrapper, sys.executable, "-m", "forkproxy", "-c", str(self.config_path)]
            self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=out, cwd=self.dir, env=env,
                                         start_new_session=True, preexec_fn=_take_tty if terminal else None)
        if terminal:
            os.close(stdin)
        self.pgid = self.proc.pid
        self.wait_log(_READY, timeout, "the first generation to be ready")
        self.ports = [int(m.group(2)) for m in _LISTEN.finditer(self.log())]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return self.ports[0]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the master, wait for it, and assert it left nothing behind."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"master did not exit within {timeout:g}s of {signal.Signals(sig).name}") from None
        wait_until(lambda: not group_members(self.pgid), 5.0, "every process of the group to exit")
        return code

    def kill_all(self) -> None:
        """Finaliser: SIGKILL the whole process group, whatever state the test left."""
        if self.pgid:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.pty_master >= 0:
            os.close(self.pty_master)
            self.pty_master = -1

    def __enter__(self) -> Self:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.alive():
                self.stop()
        finally:
            self.kill_all()

    # -- observing -------------------------------------------------------------------

    def log(self) -> str:
        """The error log, then whatever the process wrote to stdout/stderr."""
        parts = []
        for path in (self.error_log, self.stdio_log):
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def wait_log(self, pattern: str | re.Pattern[str], timeout: float = START_TIMEOUT,
                 what: str | None = None, count: int = 1) -> list[re.Match[str]]:
        """Wait until `pattern` matches the log `count` times; fails early if the master died."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern

        def found() -> list[re.Match[str]] | None:
            matches = list(rx.finditer(self.log()))
            if len(matches) >= count:
                return matches
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"master exited ({self.proc.returncode}) while waiting for "
                                     f"{what or rx.pattern}; log:\n{self.log()}")
            return None

        try:
            result: list[re.Match[str]] = wait_until(found, timeout, what or rx.pattern)
        except AssertionError as e:
            raise AssertionError(f"{e}; log:\n{self.log()[-4000:]}") from None
        return result

    def workers(self, master: int | None = None) -> list[psutil.Process]:
        """Live (non-zombie) workers of a master, from psutil."""
        try:
            children = psutil.Process(master or self.pid).children()
        except psutil.Error:
            return []
        out = []
        for c in children:
            try:
                if c.status() != psutil.STATUS_ZOMBIE and title(c.pid).startswith("forkproxy: worker"):
                    out.append(c)
            except psutil.Error:
                continue
        return out

    def worker_pids(self, generation: int | None = None, draining: bool | None = None,
                    master: int | None = None) -> set[int]:
        """Pids of workers whose title matches the generation and draining state asked."""
        out = set()
        for p in self.workers(master):
            m = _WORKER_TITLE.match(title(p.pid))
            if m is None:
                continue
            if generation is not None and int(m.group(2)) != generation:
                continue
            if draining is not None and bool(m.group(3)) != draining:
                continue
            out.add(p.pid)
        return out

    def wait_workers(self, n: int, generation: int | None = None, timeout: float = 10.0,
                     master: int | None = None) -> set[int]:
        """Wait until exactly `n` serving (not draining) workers of `generation` run."""
        def ok() -> set[int] | None:
            pids = self.worker_pids(generation, draining=False, master=master)
            return pids if len(pids) == n else None
        try:
            result: set[int] = wait_until(ok, timeout, f"{n} workers of generation {generation}")
        except AssertionError as e:
            raise AssertionError(f"{e}; workers: {[title(p.pid) for p in self.workers(master)]}; "
                                 f"log:\n{self.log()[-3000:]}") from None
        return result

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def cli(self, *args: str, timeout: float = 60.0, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `python -m forkproxy ARGS -c CONFIG` and capture its output."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "forkproxy", *args, "-c", str(self.config_path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check,
                              env=env, cwd=self.dir)

    def reload(self, via: str = "cli") -> subprocess.CompletedProcess[str] | None:
        """Reload with `forkproxy reload` (returns its result) or with SIGHUP."""
        if via == "cli":
            return self.cli("reload")
        self.send_signal(signal.SIGHUP)
        return None

    def files_left(self) -> list[str]:
        """Files a stopped master must not leave: pidfile, control socket, scoreboard."""
        names = ("forkproxy.pid", "forkproxy.pid.sock", "forkproxy.pid.scoreboard")
        return sorted(p.name for p in self.dir.iterdir()
                      if p.name.startswith(names) and not p.name.endswith(".toml"))


def pids_alive(pids: Iterable[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.Error:
            pass
    return out


def http_get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 10.0,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False
