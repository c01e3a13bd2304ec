"""`python -m bench tune`: which tunnel timeout to set, and what each choice costs.

  python -m bench tune --from-log FILE [--target 0.01] [--ping S] [--toml OUT]
  python -m bench tune [--gaps exp:MEAN | lognormal:MEDIAN:SIGMA | fixed:V | file:PATH | --replay LOG]
                       [--timeouts 30s,1m,5m] [--scale K] [--sessions N] [--gaps-per-session N]
                       [--ping S] [--concurrency N] [--dead-peers N] [--dead-max S] [--target 0.01]

Offline (--from-log): idle-gap percentiles per location from forkproxy's tunnel log, with
sessions ended by a timeout treated as right-censored (Kaplan–Meier), and the smallest
timeout that keeps cuts under the target, with the reasoning; past the timeout in force
the answer is an extrapolation and says so.

Sweep: for each timeout, a fresh forkproxy (so no value's sessions leak into the next)
with tunnel_timeout = value / scale; the sessions play their gaps `scale` times faster.
Measured per value: share of sessions cut, tunnels, fds and PSS held by the proxy, and
(at scale 1, timeouts up to --dead-max) how long a dead peer's tunnel lingers: its packets
are dropped (bench.dropper) and the proxy is watched until it lets the tunnel go.
Both modes print a table and write the recommendation as TOML (--toml, default
bench/out/tune.toml).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from forkproxy.units import parse_duration

from . import dropper, tunelog, tunetraffic
from .contenders import _port_from_log
from .procs import HOST, Service, Services, connections_per_process, fd_count, log, pss_bytes, raise_nofile
from .stats import fmt
from .workers import parallel
from .wsload import handshake, masked_frame

OUT = Path(__file__).resolve().parent / "out"
PATH = "/ws/tune"


def _dur(text: str) -> float:
    return float(parse_duration(text))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench tune", description=__doc__.split("\n")[0])
    ap.add_argument("--from-log", metavar="FILE", help="analyse a forkproxy tunnel log offline")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gaps", default="exp:20", help="idle-gap model (default exp:20, seconds)")
    src.add_argument("--replay", metavar="LOG", help="replay sessions' longest gaps from a tunnel log")
    ap.add_argument("--timeouts", default="5s,15s,30s,60s", help="comma-separated values to sweep")
    ap.add_argument("--scale", type=float, default=1.0, help="time-scale factor (keep value/scale >= 1s)")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--gaps-per-session", type=int, default=5)
    ap.add_argument("--ping", type=_dur, default=None, help="application ping interval, e.g. 20s (websockets' default)")
    ap.add_argument("--concurrency", type=int, default=50, help="sessions open at once at most")
    ap.add_argument("--dead-peers", type=int, default=3, help="dead peers per value (0: skip)")
    ap.add_argument("--dead-max", type=_dur, default=120.0, help="measure dead peers only for timeouts up to this")
    ap.add_argument("--target", type=float, default=0.01, help="largest acceptable share of sessions cut")
    ap.add_argument("--location", default="/ws/", help="the location the recommendation is for")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--toml", type=Path, default=OUT / "tune.toml")
    return ap.parse_args(argv)


# -- offline -------------------------------------------------------------------------

def offline(args: argparse.Namespace) -> int:
    parsed = tunelog.read_log(args.from_log)
    for no, why in parsed.bad[:10]:
        print(f"{args.from_log}:{no}: skipped: {why}", file=sys.stderr)
    if not parsed.sessions:
        print("no tunnel records found", file=sys.stderr)
        return 1
    recs = []
    for loc, sess in sorted(tunelog.by_location(parsed.sessions).items()):
        r = tunelog.recommend(sess, args.target, loc, args.ping)
        recs.append(r)
        print(f"## location {loc or '?'}\n")
        ends: dict[str, int] = {}
        for s in sess:
            ends[s.end] = ends.get(s.end, 0) + 1
        print("ends: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))
        print("longest idle gap per session (Kaplan–Meier): " +
              ", ".join(f"{k} {fmt(v)}s" if not math.isnan(v) else f"{k} beyond the log"
                        for k, v in r.percentiles.items()))
        print("\n| timeout | sessions cut | from |\n|---|---|---|")
        for t, share, kind in r.cut_table:
            if math.isnan(share):
                continue
            print(f"| {tunelog.fmt_duration(t)} | {share:.2%} | {'Kaplan–Meier' if kind == 'km' else 'extrapolated tail'} |")
            if share < args.target / 10 or (r.timeout is not None and t > 4 * r.timeout):
                break
        print(f"\nrecommended tunnel_timeout: {tunelog.fmt_duration(r.timeout) if r.timeout else 'none'} ({r.basis})")
        for line in r.reasoning:
            print(f"- {line}")
        print()
    return _write_toml(args.toml, recs)


def _write_toml(path: Path, recs: list[tunelog.Recommendation]) -> int:
    snippet = tunelog.toml_snippet(recs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(snippet)
    print(snippet)
    print(f"(written to {path})")
    return 0


# -- sweep ---------------------------------------------------------------------------

TUNE_CONFIG = """\
[master]
workers = {workers}
worker_connections = 10240
shutdown_timeout = "1s"
pidfile = "{dir}/forkproxy.pid"
error_log = "stderr"
access_log = "off"
tunnel_log = "{dir}/tunnel.log"

[upstream.raw_backend]
servers = ["{raw}"]

[[server]]
listen = ["127.0.0.1:0"]

[[server.location]]
path = "{location}"
proxy_pass = "http://raw_backend"
tunnel_timeout = "{timeout}"
set_header = {{ Upgrade = "$http_upgrade", Connection = "upgrade" }}
"""


class Proxy:
    """A fresh forkproxy for one swept value."""

    def __init__(self, work: Path, raw_port: int, timeout: float, workers: int, services: Services) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="value-", dir=work))
        ms = max(1, round(timeout * 1000))
        conf = self.dir / "forkproxy.toml"
        conf.write_text(TUNE_CONFIG.format(workers=workers, dir=self.dir, raw=f"{HOST}:{raw_port}",
                                           location=PATH.rsplit("/", 1)[0] + "/", timeout=f"{ms}ms"))
        self.service = services.add(Service("forkproxy", [sys.executable, "-m", "forkproxy", "-c", str(conf)],
                                            log_path=self.dir / "forkproxy.log", cwd=self.dir))
        self.port = _port_from_log(self.service)
        self.services = services

    def held(self) -> tuple[int, int, int]:
        procs = self.service.processes()
        return sum(connections_per_process(procs[1:], self.port)), fd_count(procs), pss_bytes(procs)

    def stop(self) -> None:
        self.service.stop()
        if self.service in self.services.items:
            self.services.items.remove(self.service)


def _sample(proxy: Proxy, stop: threading.Event, into: list[tuple[int, int, int]]) -> None:
    while not stop.is_set():
        into.append(proxy.held())
        stop.wait(0.25)


def dead_linger(proxy: Proxy, count: int, cap: float) -> float:
    """Open `count` tunnels, make their clients vanish, and time until the proxy lets them go."""
    socks = [handshake(proxy.port, PATH) for _ in range(count)]
    for s in socks:
        s.sendall(masked_frame(b"hello"))
    ports = [s.getsockname()[1] for s in socks]
    time.sleep(0.3)
    t0 = time.monotonic()
    linger = math.nan
    try:
        with dropper.PacketDrop(ports):
            while time.monotonic() - t0 < cap:
                procs = proxy.service.processes()[1:]
                alive = 0
                for p in procs:
                    try:
                        alive += sum(1 for c in p.net_connections(kind="tcp")
                                     if c.raddr and c.raddr.port in ports and c.status == "ESTABLISHED")
                    except Exception:
                        continue
                if alive == 0:
                    linger = time.monotonic() - t0
                    break
                time.sleep(0.1)
    finally:
        for s in socks:
            s.close()
    return linger


def sweep(args: argparse.Namespace) -> int:
    model, rows, why_no_dead = run_sweep(args)
    if model is None:
        return 1
    return _sweep_report(args, model, rows, why_no_dead)


def run_sweep(args: argparse.Namespace) -> tuple[tunetraffic.GapModel | None, list[dict[str, Any]], str | None]:
    """One row per swept value (see the module doc); (None, [], why) when there is no traffic."""
    raise_nofile()
    values = [_dur(v) for v in args.timeouts.split(",") if v.strip()]
    if args.replay:
        parsed = tunelog.read_log(args.replay)
        model = tunetraffic.GapModel("replay", values=tuple(s.max_idle for s in parsed.sessions))
        if not model.values:
            print(f"no sessions in {args.replay}", file=sys.stderr)
            return None, [], None
    else:
        model = tunetraffic.parse_model(args.gaps)
    plays = tunetraffic.scripts(model, args.sessions, args.gaps_per_session, args.seed)
    mean_len = sum(sum(p) for p in plays) / len(plays)
    interval = mean_len / args.concurrency
    why_no_dead = dropper.unavailable() if args.dead_peers else "not asked for (--dead-peers 0)"
    if why_no_dead:
        log(f"dead peers not measured: {why_no_dead}")
    services = Services()
    work = Path(tempfile.mkdtemp(prefix="forkproxy-tune-"))
    rows: list[dict[str, Any]] = []
    try:
        raw = services.add(Service("rawbackend", [sys.executable, "-m", "bench.rawbackend", "--workers", "1"],
                                   log_path=work / "rawbackend.log"))
        raw_port = _port_from_log(raw)
        for value in values:
            scaled = value / args.scale
            if scaled < 1.0:
                log(f"note: {value:g}s at scale {args.scale:g} is {scaled:.2f}s: timer ticks (0.1 s) blur it")
            log(f"timeout {value:g}s (proxy runs {scaled:.3g}s): {len(plays)} sessions, {model.describe()}")
            proxy = Proxy(work, raw_port, scaled, args.workers, services)
            samples: list[tuple[int, int, int]] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample, args=(proxy, stop, samples), daemon=True)
            base = proxy.held()
            sampler.start()
            longest = max(sum(p) for p in plays) / args.scale
            deadline = len(plays) * interval / args.scale + longest + 30
            res = parallel([(tunetraffic.drive, (proxy.port, PATH, plays, args.scale, args.ping,
                                                 args.concurrency, deadline, interval))], deadline + 30)[0]
            stop.set()
            sampler.join(2)
            if isinstance(res, Exception):
                raise res
            cut = sum(1 for o in res if o.cut) / len(res)
            errors = sum(1 for o in res if o.error and o.error != "deadline")
            row: dict[str, Any] = {
                "timeout": value, "cut": cut, "expected": tunetraffic.expected_cut(plays, value, args.ping),
                "tunnels_mean": sum(s[0] for s in samples) / max(1, len(samples)),
                "tunnels_max": max((s[0] for s in samples), default=0),
                "fds_max": max((s[1] for s in samples), default=0) - base[1],
                "pss_max_mib": (max((s[2] for s in samples), default=0) - base[2]) / 2**20,
                "errors": errors, "dead_linger": math.nan, "tunnel_log": str(proxy.dir / "tunnel.log")}
            proxy.stop()
            if not why_no_dead and value <= args.dead_max:
                log(f"timeout {value:g}s: {args.dead_peers} dead peers at scale 1")
                dproxy = Proxy(work, raw_port, value, args.workers, services)
                row["dead_linger"] = dead_linger(dproxy, args.dead_peers, value * 1.5 + 10)
                dproxy.stop()
            rows.append(row)
            log(f"timeout {value:g}s: cut {cut:.2%} (model {row['expected']:.2%}), tunnels held mean "
                f"{row['tunnels_mean']:.1f}, dead peers linger {fmt(row['dead_linger'])}s")
    finally:
        services.stop_all()
    return model, rows, why_no_dead


def _sweep_report(args: argparse.Namespace, model: tunetraffic.GapModel, rows: list[dict[str, Any]],
                  why_no_dead: str | None) -> int:
    print(f"# timeout sweep: {args.sessions} sessions, gaps {model.describe()}, "
          f"{args.gaps_per_session if model.kind != 'replay' else 1} gap(s) each, ping "
          f"{args.ping or 'none'}, scale {args.scale:g}\n")
    print("| timeout | sessions cut | model says | tunnels held (mean / max) | fds held (max) | "
          "PSS growth (max, MiB) | dead peer lingers (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {tunelog.fmt_duration(r['timeout'])} | {r['cut']:.2%} | {r['expected']:.2%} | "
              f"{r['tunnels_mean']:.1f} / {r['tunnels_max']} | {r['fds_max']} | {r['pss_max_mib']:.2f} | "
              f"{fmt(r['dead_linger']) if not math.isnan(r['dead_linger']) else '—'} |")
    if why_no_dead:
        print(f"\ndead peers not measured: {why_no_dead}")
    print("\ntunnel logs (times in them are scaled by 1/scale): " + ", ".join(
        f"{tunelog.fmt_duration(r['timeout'])} {r['tunnel_log']}" for r in rows))
    ok = [r for r in rows if r["cut"] <= args.target]
    chosen = min((r["timeout"] for r in ok), default=None)
    print()
    if chosen is None:
        print(f"no swept value keeps cuts at or under {args.target:.2%}: sweep longer values")
        return 0
    print(f"recommended tunnel_timeout: {tunelog.fmt_duration(chosen)} — the smallest swept value that cuts "
          f"at most {args.target:.2%} of sessions; a dead peer then holds its tunnel about that long")
    rec = tunelog.Recommendation(args.location, args.sessions, 0, None, args.target, chosen, "measured", [], {}, [])
    _chart(args, rows)
    return _write_toml(args.toml, [rec])


def _chart(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    xs = [r["timeout"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, [r["cut"] * 100 for r in rows], "o-", label="sessions cut (%)")
    ax.plot(xs, [r["expected"] * 100 for r in rows], "x--", label="model (%)")
    ax.axhline(args.target * 100, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("tunnel_timeout (s)")
    ax.set_ylabel("% of sessions cut")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["tunnels_mean"] for r in rows], "s-", color="tab:green", label="tunnels held (mean)")
    ax2.set_ylabel("tunnels held")
    fig.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    path = args.toml.with_suffix(".png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"chart: {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.from_log:
        return offline(args)
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
