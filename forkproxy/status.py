"""`forkproxy status`: every process, from psutil and the scoreboard (layer 5).

Invariants: read-only. The pidfile is trusted only if it names a live forkproxy master;
worker counters come from the master's scoreboard file (mapped read-only), memory, CPU
and fds from psutil. A master that is mid-upgrade shows both the new master (pidfile)
and the old one (pidfile.oldbin).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import psutil

from . import pidfile
from .scoreboard import Scoreboard

CPU_SAMPLE = 0.2  # seconds between the two CPU readings


def _proc_facts(procs: dict[int, psutil.Process]) -> dict[int, dict[str, Any]]:
    for p in procs.values():
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(CPU_SAMPLE)
    out: dict[int, dict[str, Any]] = {}
    for pid, p in procs.items():
        try:
            with p.oneshot():
                times = p.cpu_times()
                out[pid] = {"rss": p.memory_info().rss, "cpu_percent": p.cpu_percent(None),
                            "cpu_seconds": round(times.user + times.system, 2), "fds": p.num_fds(),
                            "title": " ".join(p.cmdline()), "uid": p.uids().real,
                            "started": p.create_time()}
        except psutil.Error:
            out[pid] = {}
    return out


def _master_status(pid: int, board_path: str, oldbin: bool) -> dict[str, Any]:
    master = psutil.Process(pid)
    workers: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    try:
        board = Scoreboard.open(board_path)
    except (OSError, ValueError):
        board = None
    now = time.monotonic()
    if board is not None:
        info = board.master()
        header = {"generation": info.generation, "state": info.state_name}
        for s in board.entries():
            workers.append({"pid": s.pid, "role": "worker", "index": s.index, "generation": s.generation,
                            "state": s.state_name, "connections": s.connections, "tunnels": s.tunnels,
                            "requests": s.requests, "heartbeat_age": round(max(0.0, now - s.heartbeat), 2)})
        board.close()
    known = {w["pid"] for w in workers}
    try:
        children = master.children()
    except psutil.Error:
        children = []
    for c in children:
        if c.pid not in known:
            try:
                title = " ".join(c.cmdline())
            except psutil.Error:
                continue
            if title.startswith("forkproxy: worker"):
                workers.append({"pid": c.pid, "role": "worker", "state": "unknown"})
    procs = {pid: master}
    for w in workers:
        try:
            procs[w["pid"]] = psutil.Process(w["pid"])
        except psutil.Error:
            pass
    facts = _proc_facts(procs)
    for w in workers:
        w.update({k: v for k, v in facts.get(w["pid"], {}).items() if k != "title"})
    workers.sort(key=lambda w: (-int(w.get("generation", 0)), int(w.get("index", 0))))
    return {"pid": pid, "role": "master", "oldbin": oldbin, **header,
            **facts.get(pid, {}), "workers": workers}


def collect(pidfile_path: str) -> list[dict[str, Any]]:
    """Every live master for this pidfile (the current one, then an .oldbin one)."""
    out = []
    for path, old in ((pidfile_path, False), (pidfile_path + pidfile.OLDBIN, True)):
        pid = pidfile.running_master(path)
        if pid is not None:
            try:
                out.append(_master_status(pid, pidfile.scoreboard_path(path), old))
            except psutil.Error:
                continue
    return out


def _mib(n: Any) -> str:
    return f"{n / 1048576:.1f}M" if isinstance(n, int) else "-"


def render(masters: list[dict[str, Any]]) -> str:
    head = ("PID", "ROLE", "GEN", "STATE", "RSS", "CPU%", "FDS", "CONNS", "TUNNELS", "REQUESTS")
    rows: list[tuple[str, ...]] = [head]
    for m in masters:
        role = "master (old)" if m["oldbin"] else "master"
        rows.append((str(m["pid"]), role, str(m.get("generation", "-")), str(m.get("state", "-")),
                     _mib(m.get("rss")), f"{m.get('cpu_percent', 0.0):.1f}", str(m.get("fds", "-")),
                     "-", "-", "-"))
        for w in m["workers"]:
            role = f"worker {w['index']}" if "index" in w else "worker"
            rows.append((str(w["pid"]), role, str(w.get("generation", "-")), str(w.get("state", "-")),
                         _mib(w.get("rss")), f"{w.get('cpu_percent', 0.0):.1f}", str(w.get("fds", "-")),
                         str(w.get("connections", "-")), str(w.get("tunnels", "-")),
                         str(w.get("requests", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def main(pidfile_path: str, as_json: bool) -> int:
    masters = collect(pidfile_path)
    if as_json:
        print(json.dumps({"pidfile": pidfile_path, "masters": masters}, indent=2))
    elif masters:
        print(render(masters))
    if not masters:
        if not as_json:
            print(f"forkproxy: no master running (pidfile {pidfile_path})", file=sys.stderr)
        return 1
    return 0
