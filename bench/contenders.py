"""The backends and the contenders of a bench run: forkproxy, nginx and direct.

Invariants:
- Backends: nginx serving fixed bodies for HTTP (the Python raw backend stands in when
  nginx is missing, and the run says so), and `bench.rawbackend` for WebSocket and uploads.
- Every contender exposes the same paths: /small, /1m (HTTP backend), /upload and /ws/*
  (raw backend). A proxy serves them all on one port; `direct` sends each kind of request
  straight to its backend, so it is the ceiling.
- forkproxy and nginx get equivalent configs (bench/nginx.conf says which key matches
  which), the same worker count, and the same CPUs in the pinned layout.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .procs import HOST, REPO, Service, Services, free_port, python_env, tree_cpu, wait_port, which

BENCH = Path(__file__).resolve().parent
_LISTEN = re.compile(r"listening on \[?[0-9a-fA-F.:]+?\]?:(\d+)")
SMALL_PATH, BIG_PATH, UPLOAD_PATH = "/small", "/1m", "/upload"


def nofile() -> int:
    """The fd limit both proxies get: what this process could raise its own to (65536 at most)."""
    return min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _port_from_log(svc: Service, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTEN.search(svc.tail(100000))
        if m:
            return int(m.group(1))
        if not svc.alive():
            break
        time.sleep(0.05)
    raise RuntimeError(f"{svc.name} did not report its port:\n{svc.tail()}")


def _nginx_prefix(work: Path, name: str) -> Path:
    prefix = work / name
    work.chmod(0o755)  # nginx workers run as `nobody` when started by root
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "www"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    return prefix


def _render(template: Path, prefix: Path, values: dict[str, str]) -> Path:
    text = template.read_text()
    for key, value in dict(values, PREFIX=str(prefix), NOFILE=str(nofile())).items():
        text = text.replace(f"@{key}@", value)
    out = prefix / "nginx.conf"
    out.write_text(text)
    return out


def start_nginx(name: str, template: Path, work: Path, values: dict[str, str], services: Services,
                cpus: list[int] | None) -> tuple[Service, int, Path]:
    """nginx from a template on a port picked just before it starts (nginx cannot listen on :0)."""
    nginx = which("nginx")
    assert nginx is not None
    prefix = _nginx_prefix(work, name)
    for attempt in range(5):
        port = free_port()
        conf = _render(template, prefix, dict(values, LISTEN=f"{HOST}:{port}"))
        svc = services.add(Service(name, [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "stderr.log")],
                                   log_path=prefix / "stdout.log", cpus=cpus))
        try:
            wait_port(port, 10.0, svc.proc)
            return svc, port, conf
        except RuntimeError as e:
            svc.stop()
            if attempt == 4:
                why = (prefix / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx {name} did not start: {why}") from e
    raise AssertionError("unreachable")


class Backends:
    def __init__(self, work: Path, services: Services, cpus: list[int] | None, workers: int = 2) -> None:
        self.notes: list[str] = []
        raw = services.add(Service("rawbackend", [sys.executable, "-m", "bench.rawbackend", "--workers", str(workers)],
                                   log_path=work / "rawbackend.log", cpus=cpus))
        self.raw_port = _port_from_log(raw)
        self.services = [raw]
        if which("nginx"):
            prefix = _nginx_prefix(work, "nginx-backend")
            (prefix / "www" / BIG_PATH.lstrip("/")).write_bytes(bytes(1 << 20))
            svc, self.http_port, _ = start_nginx("nginx-backend", BENCH / "nginx-backend.conf", work,
                                                 {"WORKERS": str(workers)}, services, cpus)
            self.services.append(svc)
            self.http_kind = "nginx"
        else:
            self.http_port = self.raw_port
            self.http_kind = "python raw backend"
            self.notes.append("nginx missing (apt-get install nginx-light): the HTTP backend is bench.rawbackend")

    def cpu(self) -> float:
        return tree_cpu(self.services)


class Contender:
    """Where clients connect, and what the contender's processes cost."""

    name = "?"
    is_proxy = True

    def __init__(self) -> None:
        self.service: Service | None = None
        self.port = 0

    def port_for(self, kind: str) -> int:
        return self.port

    def processes(self) -> list[psutil.Process]:
        return self.service.processes() if self.service else []

    def workers(self) -> list[psutil.Process]:
        """Processes that serve connections (not the master)."""
        return self.processes()[1:]

    def cpu(self) -> float:
        return tree_cpu([self.service]) if self.service else 0.0

    def reload(self) -> None:
        raise NotImplementedError


class Direct(Contender):
    name = "direct"
    is_proxy = False

    def __init__(self, backends: Backends) -> None:
        super().__init__()
        self.backends = backends

    def port_for(self, kind: str) -> int:
        return self.backends.http_port if kind == "http" else self.backends.raw_port

    def processes(self) -> list[psutil.Process]:
        return []


FORKPROXY_CONFIG = """\
# Written by `python -m bench run`; bench/nginx.conf is the equivalent nginx config.
[master]
workers = {workers}
worker_connections = 10240
worker_rlimit_nofile = {nofile}
shutdown_timeout = "10s"
pidfile = "{dir}/forkproxy.pid"
error_log = "stderr"
log_level = "info"
access_log = "off"
tunnel_log = "{dir}/tunnel.log"

[map.connection_upgrade]
source = "$http_upgrade"
default = "upgrade"
values = {{ "" = "close" }}

[upstream.http_backend]
servers = ["{http}"]
keepalive = 32

[upstream.raw_backend]
servers = ["{raw}"]
keepalive = 32

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "/ws/"
proxy_pass = "http://raw_backend"
tunnel_timeout = "1h"
set_header = {{ Upgrade = "$http_upgrade", Connection = "$connection_upgrade" }}

[[server.location]]
path = "= /upload"
proxy_pass = "http://raw_backend"

[[server.location]]
path = "/"
proxy_pass = "http://http_backend"
"""


def forkproxy_config(dirpath: Path, workers: int, http_port: int, raw_port: int, extra_master: str = "") -> Path:
    text = FORKPROXY_CONFIG.format(workers=workers, dir=dirpath, http=f"{HOST}:{http_port}", raw=f"{HOST}:{raw_port}",
                                   nofile=nofile())
    if extra_master:
        text = text.replace("[map.connection_upgrade]", extra_master.rstrip() + "\n\n[map.connection_upgrade]")
    path = dirpath / "forkproxy.toml"
    path.write_text(text)
    return path


class Forkproxy(Contender):
    name = "forkproxy"

    def __init__(self, work: Path, backends: Backends, services: Services, cpus: list[int] | None,
                 workers: int = 2) -> None:
        super().__init__()
        self.dir = work / "forkproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = forkproxy_config(self.dir, workers, backends.http_port, backends.raw_port)
        self.tunnel_log = self.dir / "tunnel.log"
        self.service = services.add(Service("forkproxy", [sys.executable, "-m", "forkproxy", "-c", str(self.config)],
                                            log_path=self.dir / "forkproxy.log", cpus=cpus, cwd=self.dir))
        self.port = _port_from_log(self.service)
        wait_port(self.port, 10.0, self.service.proc)
        self._wait_workers(workers)

    def _wait_workers(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.workers()) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def reload(self) -> None:
        r = subprocess.run([sys.executable, "-m", "forkproxy", "reload", "-c", str(self.config)],
                           capture_output=True, text=True, timeout=30, env=python_env(), cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"forkproxy reload failed: {r.stdout.strip()} {r.stderr.strip()}")


class Nginx(Contender):
    name = "nginx"

    def __init__(self, work: Path, backends: Backends, services: Services, cpus: list[int] | None,
                 workers: int = 2) -> None:
        super().__init__()
        self.service, self.port, self.conf = start_nginx(
            "nginx", BENCH / "nginx.conf", work,
            {"WORKERS": str(workers), "HTTP_BACKEND": f"{HOST}:{backends.http_port}",
             "RAW_BACKEND": f"{HOST}:{backends.raw_port}"}, services, cpus)
        self.prefix = self.conf.parent
        self.nworkers = workers

    def reload(self) -> None:
        """HUP, then wait (bounded) until a new set of workers serves, as `forkproxy reload` does."""
        before = {p.pid for p in self.workers()}
        assert self.service is not None
        self.service.proc.send_signal(1)  # SIGHUP
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            fresh = [p for p in self.workers() if p.pid not in before]
            if len(fresh) >= self.nworkers:
                return
            time.sleep(0.02)
        raise RuntimeError("nginx reload: no new workers after 10 s")


def nginx_version() -> str:
    nginx = which("nginx")
    if not nginx:
        return "missing"
    r = subprocess.run([nginx, "-v"], capture_output=True, text=True)
    return (r.stderr or r.stdout).strip().replace("nginx version: ", "")


__all__ = ["Backends", "Contender", "Direct", "Forkproxy", "Nginx", "REPO", "SMALL_PATH", "BIG_PATH",
           "UPLOAD_PATH", "forkproxy_config", "nginx_version", "python_env"]
