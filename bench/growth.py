"""`python -m bench growth`: how forkproxy's cost grows with load, next to nginx.

  python -m bench growth [--quick] [--rounds N] [--duration S] [--http-conns N ...] [--tunnels N ...]
                         [--layout shared|pinned] [--workers N] [--out DIR] [--keep]

Two sweeps over one set of backends and one instance of each proxy:
- HTTP: keep-alive GETs of `/small` from the nginx HTTP backend (`bench run`'s http_rps path,
  backend and wrk wrapper) at 1, 50, 500 and 5,000 concurrent connections (quick: 1, 50, 500);
- WebSocket: 64 KiB frames client -> raw backend (ws_bulk's pump) through 1, 4 and 64 tunnels.

Invariants:
- Each (sweep, count) is a scenario measured by `bench.run.measure`, so CPU is counted as
  `bench run` counts it (utime+stime of every process of the contender, reaped workers
  included) and a figure is inconclusive on the same rule (generators+backends at >= 90% of
  the cores they had). Contenders take turns, in an order rotating by one each round.
- Proxy CPU per request / per GB, requests/s, GB/s and the cores used all cover the measured
  window alone: the CPU is read where it starts and ends, after the warm-up (wrk's 1 s
  warm-up run, the pump's first ctx.warm seconds), and the work is what was done in it.
- Proxy memory is the PSS summed over the contender's processes, sampled every 0.25 s
  while the load runs (warm-up and window, connections open); the table shows the peak.
  The proxies serve the whole run, so a row's PSS includes what earlier rows left behind.
- Every load loop is bounded in count and time; loopback only, ports picked by the OS.
- The exit status is 1 only when a measurement errored (a contender failed to start, a
  generator failed, or wrk saw errors); the numbers themselves are never judged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import report
from .contenders import Backends, Contender
from .procs import Services, log, pss_bytes, raise_nofile, which
from .run import OUT, layout_cpus, machine, run_rounds, save, start_contenders
from .scenarios import Ctx, Measure, Metric, Scenario, Window, http_small, ws_bulk
from .stats import fmt, median

HTTP_CONNS, QUICK_HTTP_CONNS, TUNNELS = (1, 50, 500, 5000), (1, 50, 500), (1, 4, 64)
PSS_EVERY = 0.25        # seconds between PSS samples
WRK_TIMEOUT = 10        # s; 5,000 connections opened at once overflow the 511 backlog: SYN retries take 1-3 s
FDS_SPARE = 256         # fds this process and wrk need beyond one per connection
CONTENDERS = ("forkproxy", "nginx")

RPS = Metric("rps", "requests/s", "req/s", True)
CPU_REQ = Metric("cpu_us", "proxy CPU per request", "CPU-µs", False)
GBPS = Metric("gbps", "GB/s", "GB/s", True)
CPU_GB = Metric("cpu_s_gb", "proxy CPU per GB", "CPU-s", False)
PSS = Metric("pss_mib", "proxy PSS, peak", "MiB", False)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench growth", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"connections {' '.join(map(str, QUICK_HTTP_CONNS))}, 1 s windows (< 1 min)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of each count (default 1)")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per measured window (default 4, quick 1; wrk rounds it to whole seconds, at least 1)")
    ap.add_argument("--http-conns", type=int, nargs="+", default=None, metavar="N",
                    help=f"concurrent HTTP connections (default {' '.join(map(str, HTTP_CONNS))})")
    ap.add_argument("--tunnels", type=int, nargs="+", default=None, metavar="N",
                    help=f"WebSocket tunnels (default {' '.join(map(str, TUNNELS))}; 0 for none)")
    ap.add_argument("--layout", choices=("shared", "pinned"), default="shared",
                    help="pinned: proxies on CPU 0, backends and generators on the others (taskset)")
    ap.add_argument("--workers", type=int, default=2, help="workers of each proxy (default 2)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs) even when all went well")
    args = ap.parse_args(argv)
    if args.http_conns is None:
        args.http_conns = list(QUICK_HTTP_CONNS if args.quick else HTTP_CONNS)
    if args.tunnels is None:
        args.tunnels = list(TUNNELS)
    args.http_conns = [n for n in args.http_conns if n > 0]
    args.tunnels = [n for n in args.tunnels if n > 0]
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def sampled(fn: Callable[[Ctx, Contender, Window], Measure], scale: float,
            cpu_key: str) -> Callable[[Ctx, Contender, Window], Measure]:
    """`fn` run in a thread while the contender's PSS is sampled (warm-up and window); the Measure
    gets the peak (MiB). The CPU per unit (times `scale`) is filled in by `add_cpu_metric` once the
    window's CPU is known."""
    def run(ctx: Ctx, c: Contender, w: Window) -> Measure:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["m"] = fn(ctx, c, w)
            except BaseException as e:  # re-raised in the caller's thread
                box["e"] = e

        t = threading.Thread(target=target, name="growth-load", daemon=True)
        t.start()
        deadline = time.monotonic() + ctx.warm + ctx.duration + 180
        samples: list[int] = []
        while t.is_alive() and time.monotonic() < deadline:
            samples.append(pss_bytes(c.processes()))
            t.join(PSS_EVERY)
        if t.is_alive():
            raise RuntimeError("the load did not finish in time")
        if "e" in box:
            raise box["e"]
        m: Measure = box["m"]
        m.extra.update(pss_samples=len(samples), pss_last_mib=samples[-1] / 2**20 if samples else None,
                       cpu_key=cpu_key, cpu_scale=scale)
        m.metrics[PSS.key] = max(samples) / 2**20 if samples else float("nan")
        return m
    return run


def scenarios(http_conns: list[int], tunnels: list[int]) -> list[Scenario]:
    out = [Scenario(f"http_{n}", f"HTTP keep-alive, small response, {n:,} conn{'s' if n > 1 else ''} (wrk)", (RPS, CPU_REQ, PSS),
                    "request", sampled(http_small(n, WRK_TIMEOUT), 1e6, CPU_REQ.key), needs=("wrk",))
           for n in http_conns]
    out += [Scenario(f"ws_bulk_{n}", f"WebSocket bulk, 64 KiB frames, {n} tunnel{'s' if n > 1 else ''}",
                     (GBPS, CPU_GB, PSS), "GB", sampled(ws_bulk(n), 1.0, CPU_GB.key))
            for n in tunnels]
    return out


def add_cpu_metric(r: dict[str, Any]) -> None:
    """The proxy's CPU per unit of work in the window, as a metric of the round (so rounds and ratios summarise it)."""
    ex = r.get("extra") or {}
    if "cpu" in r and r.get("work") and "cpu_key" in ex:
        r["metrics"][ex["cpu_key"]] = r["cpu"]["proxy"] / r["work"] * ex["cpu_scale"]


def idle_pss(contenders: list[Contender]) -> dict[str, float]:
    time.sleep(0.5)
    return {c.name: pss_bytes(c.processes()) / 2**20 for c in contenders}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    duration = args.duration or (1.0 if args.quick else 4.0)
    proxy_cpus, gen_cpus, note = layout_cpus(args.layout)
    ctx = Ctx(quick=args.quick, duration=duration, warm=0.5 if args.quick else 1.0, gen_cpus=gen_cpus,
              idle_tunnels=0, reloads=0)
    notes = [n for n in (note,) if n]
    missing = {t for t in ("nginx", "wrk") if not which(t)}
    for t in sorted(missing):
        notes.append(f"{t} missing (apt-get install {'nginx-light' if t == 'nginx' else t}): "
                     + ("no nginx column" if t == "nginx" else "the HTTP sweep is skipped"))
    conns = args.http_conns if "wrk" not in missing else []
    nofile = raise_nofile(65536)  # inherited by wrk
    if conns and max(conns) + FDS_SPARE > nofile:
        dropped = [n for n in conns if n + FDS_SPARE > nofile]
        conns = [n for n in conns if n + FDS_SPARE <= nofile]
        notes.append(f"RLIMIT_NOFILE is {nofile}: skipped {', '.join(map(str, dropped))} connections")
    for n in notes:
        log(n)
    command = "python -m bench growth " + " ".join(shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv))
    rec: dict[str, Any] = {"kind": "growth", "command": command.strip(),
                           "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                           "layout": args.layout if proxy_cpus or args.layout == "shared" else "shared",
                           "rounds": args.rounds, "duration": duration, "notes": notes, "contenders": [],
                           "idle_pss_mib": {}, "scenarios": {}}
    services = Services()
    work = Path(tempfile.mkdtemp(prefix="forkproxy-growth-"))
    errored = False
    t_start = time.monotonic()
    try:
        log(f"work dir {work}; starting backends")
        backends = Backends(work, services, gen_cpus, workers=2)
        notes += backends.notes
        contenders, errored = start_contenders(list(CONTENDERS), work, backends, services, proxy_cpus, args.workers,
                                               missing, notes)
        rec["contenders"] = [c.name for c in contenders]
        rec["idle_pss_mib"] = idle_pss(contenders)
        if "wrk" in missing:
            rec["scenarios"]["http"] = {"title": "HTTP keep-alive sweep", "per": "request", "rounds": [],
                                        "metrics": [], "skipped": "wrk missing"}
        for sc in scenarios(conns, args.tunnels):
            log(f"{sc.name}: {sc.title}")
            rounds, failed = run_rounds(ctx, sc, contenders, backends, args.rounds)
            for r in rounds:
                add_cpu_metric(r)
            errored = errored or failed
            rec["scenarios"][sc.name] = {"title": sc.title, "per": sc.per, "rounds": rounds,
                                         "metrics": [asdict(m) | {"higher": m.higher_is_better} for m in sc.metrics]}
    finally:
        services.stop_all()
        if errored or args.keep:
            log(f"logs of the proxies and backends kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rec["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    rec["wall_seconds"] = round(time.monotonic() - t_start, 1)
    jpath = save(rec, args.out, "growth")
    md = markdown(rec)
    jpath.with_suffix(".md").write_text(md)
    print(md)
    for n in notes:
        print(f"note: {n}")
    print(f"\nJSON: {jpath}")
    return 1 if errored else 0


# The tables.

def _cell(rec: dict[str, Any], name: str, who: str, key: str) -> str:
    vals = report.values(rec, name, who, key)
    if not vals:
        return "—"
    s = fmt(median(vals)) + (f" ({fmt(min(vals))}–{fmt(max(vals))})" if len(vals) > 1 and min(vals) < max(vals) else "")
    return s + (" ⚠" if key in (RPS.key, GBPS.key) and report.inconclusive(rec, name, who) else "")


def _cores(rec: dict[str, Any], name: str, who: str) -> str:
    rs = [r for r in rec["scenarios"][name]["rounds"] if r["contender"] == who and r.get("cpu", {}).get("wall")]
    if not rs:
        return "—"
    proxy = median([r["cpu"]["proxy"] / r["cpu"]["wall"] for r in rs])
    load = median([(r["cpu"]["generators"] + r["cpu"]["backends"]) / r["cpu"]["wall"] for r in rs])
    return f"{proxy:.2f} / {load:.2f}"


def _table(rec: dict[str, Any], names: list[str], count: str, rate: Metric, cpu: Metric) -> list[str]:
    who = [c for c in CONTENDERS if c in rec["contenders"]]
    pair = len(who) == 2
    head = [count, *(f"{c} {rate.unit}" for c in who)] + (["forkproxy ÷ nginx"] if pair else [])
    head += [f"{c} {cpu.unit} per {'request' if cpu is CPU_REQ else 'GB'}" for c in who]
    head += (["forkproxy ÷ nginx"] if pair else []) + [f"{c} PSS MiB (peak)" for c in who]
    head += [f"{c} cores (proxy / load)" for c in who]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for name in names:
        n = name.rsplit("_", 1)[1]
        row = [f"{int(n):,}"]
        row += [_cell(rec, name, c, rate.key) for c in who]
        row += [report.ratio_cell(rec, name, "forkproxy", "nginx", rate.key)] if pair else []
        row += [_cell(rec, name, c, cpu.key) for c in who]
        row += [report.ratio_cell(rec, name, "forkproxy", "nginx", cpu.key)] if pair else []
        row += [_cell(rec, name, c, PSS.key) for c in who]
        row += [_cores(rec, name, c) for c in who]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(rec: dict[str, Any]) -> str:
    sc = rec["scenarios"]
    http = [n for n in sc if n.startswith("http_")]
    ws = [n for n in sc if n.startswith("ws_bulk_")]
    idle = ", ".join(f"{c} {v:.1f} MiB" for c, v in rec.get("idle_pss_mib", {}).items())
    lines = [f"Layout: **{rec['layout']}**, {rec['rounds']} round(s) of {fmt(rec['duration'])} s windows per count, "
             "contenders alternating; cells are medians (min–max over rounds when more than one). "
             "Rates, proxy CPU per unit and cores cover the measured window (not the warm-up); PSS is summed over the proxy's processes, "
             f"sampled every {PSS_EVERY:g} s while the load ran, the peak shown (idle after start: {idle or '—'}). "
             "Cores: CPU-seconds per second of the proxy and of the load (generators+backends). "
             "⚠ = inconclusive (the load used >= 90% of the cores it had: "
             f"{'the CPUs not given to the proxies' if rec['layout'] == 'pinned' else 'the cores neither the proxy nor other processes used'}).", ""]
    if "http" in sc and sc["http"].get("skipped"):
        lines += [f"HTTP keep-alive sweep: skipped ({sc['http']['skipped']}).", ""]
    elif http:
        lines += ["HTTP keep-alive, 13-byte responses (`/small`, wrk), by concurrent connections:", ""]
        lines += _table(rec, http, "connections", RPS, CPU_REQ) + [""]
    if ws:
        lines += ["WebSocket bulk, 64 KiB frames client → backend, by tunnels:", ""]
        lines += _table(rec, ws, "tunnels", GBPS, CPU_GB) + [""]
    errs = [(n, r["contender"], r["round"], r["error"]) for n, s in sc.items()
            for r in s.get("rounds", []) if r.get("error")]
    if errs:
        lines += ["Errors (rounds left out of the table):", ""] + [f"- {n} / {c} / round {i}: {e}" for n, c, i, e in errs]
    return "\n".join(lines).rstrip() + "\n"
