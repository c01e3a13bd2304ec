"""`python -m bench run`: forkproxy, nginx and direct side by side, rounds alternating.

  python -m bench run [--quick] [--rounds N] [--scenarios NAME ...] [--layout shared|pinned]
                      [--out DIR] [--workers N]

Invariants:
- One set of backends and one instance of each contender serve the whole run; each
  scenario runs all its rounds before the next starts, and within a round the contenders
  take turns in an order that rotates by one each round.
- Each measurement reads the CPU of the contender, the backends and the generators where
  its measured window starts and ends (after any warm-up; `scenarios.Window`), so CPU per
  unit and cores used cover the same interval as the work; generators+backends at >= 90%
  of the cores they had in that window make it inconclusive.
- A missing tool (nginx, wrk, taskset, matplotlib) is printed and skips only what needs
  it. The exit status is 1 only when a scenario errored, 0 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from . import report
from .contenders import Backends, Contender, Direct, Forkproxy, Nginx, nginx_version
from .procs import Services, generators_cpu, log, raise_nofile, which
from .scenarios import BY_NAME, SCENARIOS, Ctx, Scenario, Window
from .stats import median
from .tunnelstats import splice_share

SATURATED = 0.9
OUT = Path(__file__).resolve().parent / "out"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(), "nginx": nginx_version(),
            "wrk": "installed" if which("wrk") else "missing"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of short windows (CI smoke test, < 2 min)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 3, quick 1)")
    ap.add_argument("--scenarios", nargs="+", choices=[s.name for s in SCENARIOS], metavar="NAME",
                    help="subset of: " + " ".join(s.name for s in SCENARIOS))
    ap.add_argument("--layout", choices=("shared", "pinned"), default="shared",
                    help="pinned: proxies on CPU 0, backends and generators on the others (taskset)")
    ap.add_argument("--contenders", nargs="+", choices=("forkproxy", "nginx", "direct"),
                    default=["forkproxy", "nginx", "direct"])
    ap.add_argument("--workers", type=int, default=2, help="workers of each proxy (default 2)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per measured window (default 5, quick 1)")
    ap.add_argument("--idle-tunnels", type=int, default=None, help="default 5000, quick 500")
    ap.add_argument("--reloads", type=int, default=None, help="default 20, quick 5")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs) even when all went well")
    return ap.parse_args(argv)


def layout_cpus(layout: str) -> tuple[list[int] | None, list[int] | None, str]:
    """(proxy cpus, generator+backend cpus, note)."""
    if layout == "shared":
        return None, None, ""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not which("taskset"):
        return None, None, "pinned layout needs 2 CPUs and taskset: running shared"
    return cpus[:1], cpus[1:], ""


def start_contenders(names: list[str], work: Path, backends: Backends, services: Services,
                     proxy_cpus: list[int] | None, workers: int, missing: set[str],
                     notes: list[str]) -> tuple[list[Contender], bool]:
    """The contenders that started (nginx skipped when missing), and whether one failed to (noted)."""
    contenders: list[Contender] = []
    failed = False
    for name in names:
        if name == "nginx" and "nginx" in missing:
            continue
        log(f"starting {name}")
        try:
            if name == "forkproxy":
                contenders.append(Forkproxy(work, backends, services, proxy_cpus, workers))
            elif name == "nginx":
                contenders.append(Nginx(work, backends, services, proxy_cpus, workers))
            else:
                contenders.append(Direct(backends))
        except Exception as e:
            log(f"{name} did not start: {e}")
            notes.append(f"{name} did not start: {e}")
            failed = True
    return contenders, failed


def run_rounds(ctx: Ctx, sc: Scenario, who: list[Contender], backends: Backends,
               rounds: int) -> tuple[list[dict[str, Any]], bool]:
    """Every round of one scenario, contenders taking turns in an order rotating by one each round;
    and whether any measurement errored (an exception, or errors the generators saw: resets, non-2xx)."""
    out: list[dict[str, Any]] = []
    errored = False
    for rnd in range(rounds):
        order = who[rnd % len(who):] + who[:rnd % len(who)] if who else []
        for c in order:
            r = measure(ctx, sc, c, backends, rnd)
            out.append(r)
            errored = errored or bool(r.get("error"))
    return out, errored


def save(rec: dict[str, Any], out: Path, prefix: str) -> Path:
    """The run record as `out/<prefix>-<time>.json`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(rec, indent=1, default=float))
    return path


def measure(ctx: Ctx, sc: Scenario, c: Contender, backends: Backends, rnd: int) -> dict[str, Any]:
    """One call of the scenario; its `cpu` is what was spent in the scenario's measured window."""
    size0 = _size(c)
    rec: dict[str, Any] = {"round": rnd, "contender": c.name}
    window = Window(lambda: cpu_reading(c, backends))
    window.open()
    try:
        m = sc.fn(ctx, c, window)
    except Exception as e:  # one failed measurement is reported, the run goes on
        rec["error"] = f"{type(e).__name__}: {e}"
        log(f"  {sc.name} {c.name}: ERROR {rec['error']}")
        traceback.print_exc(limit=2, file=sys.stderr)
        return rec
    spent = window.cpu()
    cpu = {k: spent[k] for k in ("proxy", "backends", "generators", "wall")}
    cpu["other"] = max(0.0, spent["machine"] - cpu["proxy"] - cpu["backends"] - cpu["generators"])
    wall = cpu["wall"]
    rec.update(metrics=m.metrics, work=m.work, extra=m.extra, errors=m.errors, cpu=cpu)
    if sc.name.startswith("ws_") and getattr(c, "tunnel_log", None):
        time.sleep(0.7)  # tunnel records are flushed on the worker's next tick (0.5 s)
        share = splice_share(getattr(c, "tunnel_log", None), size0)
        if share is not None:
            rec["extra"]["splice_share"] = share
    used = (cpu["generators"] + cpu["backends"]) / wall
    proxy_used = cpu["proxy"] / wall
    other_used = cpu["other"] / wall
    have = len(ctx.gen_cpus) if ctx.gen_cpus else (os.cpu_count() or 1) - proxy_used - other_used
    rec["inconclusive"] = bool(c.is_proxy and sc.per and used >= SATURATED * have)
    if m.errors:
        rec["error"] = f"{m.errors} errors reported by the generators"
    shown = ", ".join(f"{k}={v:.4g}" for k, v in m.metrics.items())
    log(f"  {sc.name} round {rnd} {c.name}: {shown}; cores: proxy {proxy_used:.2f}, gen+backends {used:.2f}, "
        f"other {other_used:.2f}"
        + (" (inconclusive)" if rec["inconclusive"] else "") + (f"; {m.errors} errors" if m.errors else ""))
    return rec


def cpu_reading(c: Contender, backends: Backends) -> dict[str, float]:
    """CPU-seconds so far of the contender, the backends, the generators and the machine; the clock."""
    return {"proxy": c.cpu(), "backends": backends.cpu(), "generators": generators_cpu(),
            "machine": machine_busy(), "wall": time.monotonic()}


def machine_busy() -> float:
    """CPU-seconds every process on the machine (ours and others') spent in user and kernel mode.

    Interrupt and softirq time is left out: loopback traffic is processed there, and it
    belongs to no process, so counting it would charge our own traffic to "other"."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system)


def _size(c: Contender) -> int:
    path = getattr(c, "tunnel_log", None)
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def lost_over_reloads(rec: dict[str, Any]) -> list[int]:
    """The rounds in which forkproxy failed requests over reloads (its logs are then kept)."""
    return [r["round"] for r in rec["scenarios"].get("reloads", {}).get("rounds", [])
            if r["contender"] == "forkproxy" and r["metrics"].get("failed")]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 5.0)
    proxy_cpus, gen_cpus, note = layout_cpus(args.layout)
    ctx = Ctx(quick=args.quick, duration=duration, warm=0.5 if args.quick else 1.0, gen_cpus=gen_cpus,
              idle_tunnels=args.idle_tunnels or (500 if args.quick else 5000),
              reloads=args.reloads or (5 if args.quick else 20))
    nofile = raise_nofile(65536)
    notes = [n for n in (note,) if n]
    if nofile < 4 * ctx.idle_tunnels:
        ctx.idle_tunnels = max(100, nofile // 4 - 200)
        notes.append(f"RLIMIT_NOFILE is {nofile}: idle tunnels cut to {ctx.idle_tunnels}")
    missing = {t for t in ("nginx", "wrk") if not which(t)}
    for t in sorted(missing):
        notes.append(f"{t} missing (apt-get install {'nginx-light' if t == 'nginx' else t}): "
                     + ("the nginx contender is skipped" if t == "nginx" else "wrk scenarios are skipped"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("matplotlib missing (pip install -e '.[bench]'): no PNG charts")
    for n in notes:
        log(n)
    wanted = [BY_NAME[n] for n in args.scenarios] if args.scenarios else list(SCENARIOS)
    command = "python -m bench run " + " ".join(shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv))
    rec: dict[str, Any] = {"command": command.strip(), "started": dt.datetime.now().isoformat(timespec="seconds"),
                           "machine": machine(), "layout": args.layout if proxy_cpus or args.layout == "shared" else "shared",
                           "rounds": rounds, "duration": duration, "notes": notes, "contenders": [], "scenarios": {}}
    services = Services()
    work = Path(tempfile.mkdtemp(prefix="forkproxy-bench-"))
    errored = False
    try:
        log(f"work dir {work}; starting backends")
        backends = Backends(work, services, gen_cpus, workers=2)
        notes += backends.notes
        contenders, failed = start_contenders(args.contenders, work, backends, services, proxy_cpus, args.workers,
                                              missing, notes)
        errored = errored or failed
        rec["contenders"] = [c.name for c in contenders]
        for sc in wanted:
            entry: dict[str, Any] = {"title": sc.title, "per": sc.per, "rounds": [],
                                     "metrics": [asdict(m) | {"higher": m.higher_is_better} for m in sc.metrics]}
            rec["scenarios"][sc.name] = entry
            lacking = [t for t in sc.needs if t in missing]
            if lacking:
                entry["skipped"] = f"{', '.join(lacking)} missing"
                log(f"{sc.name}: skipped ({entry['skipped']})")
                continue
            if sc.name == "http_latency":
                _set_rate(ctx, rec)
            log(f"{sc.name}: {sc.title}")
            who = [c for c in contenders if c.is_proxy or not sc.proxies_only]
            entry["rounds"], failed = run_rounds(ctx, sc, who, backends, rounds)
            errored = errored or failed
    finally:
        services.stop_all()
        lost = lost_over_reloads(rec)
        if lost:  # a result, not an error, but one to look into: the logs say why
            log(f"forkproxy lost requests over reloads in round(s) {lost}")
        if errored or lost or args.keep:
            log(f"logs of the proxies and backends kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rec["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    jpath = save(rec, args.out, "bench")
    stamp = jpath.stem.removeprefix("bench-")
    md = report.markdown(rec)
    (args.out / f"bench-{stamp}.md").write_text(md)
    png = report.charts(rec, args.out / f"bench-{stamp}.png")
    print(md)
    for n in notes:
        print(f"note: {n}")
    print(f"\nJSON: {jpath}" + (f"\nchart: {png}" if png else ""))
    return 1 if errored else 0


def _set_rate(ctx: Ctx, rec: dict[str, Any]) -> None:
    rounds = rec["scenarios"].get("http_rps", {}).get("rounds", [])
    for who in ("nginx", "forkproxy", "direct"):
        vals = [r["metrics"]["rps"] for r in rounds if r["contender"] == who and not r.get("error")]
        if vals:
            ctx.offered_rate = median(vals) / 2
            ctx.rate_source = f"half of {who}'s measured maximum"
            return
    ctx.offered_rate = 1000.0
    ctx.rate_source = "fixed 1,000 req/s (no maximum measured in this run)"
