"""Reports of a bench run: the Markdown tables, the JSON record and optional PNG charts.

Invariants: everything here is computed from the run record (the JSON), so a saved record
can be reported again (`python -m bench report FILE`). A ratio is the median of the
per-round ratios (contenders alternate within a round, so a round pairs like with like);
its range is the min–max of those per-round ratios. A ratio is marked inconclusive when
most rounds of either side were (generators and backends near the cores they had).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from .stats import Summary, fmt, median

PROXIES = ("forkproxy", "nginx")


def _rounds(rec: dict[str, Any], scen: str, contender: str) -> list[dict[str, Any]]:
    return [r for r in rec["scenarios"][scen]["rounds"] if r["contender"] == contender and not r.get("error")]


def values(rec: dict[str, Any], scen: str, contender: str, key: str) -> list[float]:
    out = []
    for r in _rounds(rec, scen, contender):
        v = r["metrics"].get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.append(float(v))
    return out


def inconclusive(rec: dict[str, Any], scen: str, contender: str) -> bool:
    rs = _rounds(rec, scen, contender)
    return bool(rs) and sum(1 for r in rs if r.get("inconclusive")) * 2 > len(rs)


def round_ratios(rec: dict[str, Any], scen: str, a: str, b: str, key: str) -> list[float]:
    by_round: dict[int, dict[str, float]] = {}
    for who in (a, b):
        for r in _rounds(rec, scen, who):
            v = r["metrics"].get(key)
            if v is not None and not math.isnan(v):
                by_round.setdefault(r["round"], {})[who] = v
    out = []
    for pair in by_round.values():
        if a in pair and b in pair and pair[b] != 0:
            out.append(pair[a] / pair[b])
    return out


def _cell(vals: list[float]) -> str:
    if not vals:
        return "—"
    s = Summary.of(vals)
    if s.n == 1 or s.low == s.high:
        return fmt(s.median)
    return f"{fmt(s.median)} ({fmt(s.low)}–{fmt(s.high)})"


def ratio_cell(rec: dict[str, Any], scen: str, a: str, b: str, key: str) -> str:
    rs = round_ratios(rec, scen, a, b, key)
    if not rs:
        return "—"
    text = _cell(rs)
    flags = [who for who in (a, b) if who != "direct" and inconclusive(rec, scen, who)]
    return text + (" ⚠" if flags else "")


def markdown(rec: dict[str, Any]) -> str:
    who = rec["contenders"]
    lines = [f"Layout: **{rec['layout']}**, {rec['rounds']} round(s) per scenario, contenders alternating; "
             f"cells are median (min–max) over rounds; ratios are medians of per-round ratios. "
             f"⚠ = inconclusive (generators+backends used >= 90% of the cores they had: "
             f"{'the CPUs not given to the proxies' if rec['layout'] == 'pinned' else 'the cores neither the proxy nor other processes used'}).", ""]
    head = ["scenario", "metric", *who]
    pairs = [(a, b) for a, b in (("forkproxy", "nginx"), ("forkproxy", "direct"), ("nginx", "direct"))
             if a in who and b in who]
    head += [f"{a} ÷ {b}" for a, b in pairs]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, sc in rec["scenarios"].items():
        if sc.get("skipped"):
            lines.append(f"| {sc['title']} | skipped: {sc['skipped']} |" + " |" * (len(head) - 2))
            continue
        for m in sc["metrics"]:
            row = [sc["title"], m["label"] if m["label"] == m["unit"] else f"{m['label']} ({m['unit']})"]
            row += [_cell(values(rec, name, c, m["key"])) for c in who]
            row += [ratio_cell(rec, name, a, b, m["key"]) for a, b in pairs]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", cost_table(rec)]
    errs = [(n, r["contender"], r["round"], r["error"]) for n, sc in rec["scenarios"].items()
            for r in sc.get("rounds", []) if r.get("error")]
    if errs:
        lines += ["", "Errors:", ""] + [f"- {n} / {c} / round {i}: {e}" for n, c, i, e in errs]
    extras = extras_notes(rec)
    if extras:
        lines += ["", *extras]
    return "\n".join(lines) + "\n"


def cost_table(rec: dict[str, Any]) -> str:
    lines = ["| scenario | contender | proxy CPU-s per unit | proxy cores used | generators+backends cores used | "
             "other processes' cores | verdict |",
             "|---|---|---|---|---|---|---|"]
    for name, sc in rec["scenarios"].items():
        if sc.get("skipped") or not sc.get("per"):
            continue
        for c in rec["contenders"]:
            rs = _rounds(rec, name, c)
            if not rs:
                continue
            per = [r["cpu"]["proxy"] / r["work"] for r in rs if r.get("work")]
            pcores = [r["cpu"]["proxy"] / r["cpu"]["wall"] for r in rs if r["cpu"]["wall"]]
            gcores = [(r["cpu"]["generators"] + r["cpu"]["backends"]) / r["cpu"]["wall"] for r in rs if r["cpu"]["wall"]]
            ocores = [r["cpu"]["other"] / r["cpu"]["wall"] for r in rs if r["cpu"]["wall"] and "other" in r["cpu"]]
            unit = {"request": "per request", "GB": "per GB", "message": "per message"}[sc["per"]]
            per_txt = "—" if c == "direct" else f"{fmt(median(per))} {unit}" if per else "—"
            verdict = "ceiling" if c == "direct" else ("inconclusive" if inconclusive(rec, name, c) else "ok")
            lines.append(f"| {sc['title']} | {c} | {per_txt} | {fmt(median(pcores)) if c != 'direct' else '—'} | "
                         f"{fmt(median(gcores))} | {fmt(median(ocores)) if ocores else '—'} | {verdict} |")
    return "\n".join(lines)


def extras_notes(rec: dict[str, Any]) -> list[str]:
    out = []
    for name, sc in rec["scenarios"].items():
        for c in rec["contenders"]:
            rs = _rounds(rec, name, c)
            spreads = [r["extra"].get("spread") for r in rs if r.get("extra", {}).get("spread")]
            if spreads:
                out.append(f"- {sc['title']}, {c}: tunnels per worker by round {spreads}")
            if name == "http_latency" and rs:
                ex = rs[0]["extra"]
                ach = [r["extra"]["achieved_rps"] for r in rs]
                late = [r["extra"]["late"] for r in rs]
                out.append(f"- {sc['title']}, {c}: offered {fmt(ex['offered_rps'])} req/s ({ex['rate_source']}), "
                           f"achieved {fmt(median(ach))} req/s, unanswered at the end (counted with their wait so far) {late}")
            if name == "reloads" and rs:
                out.append(f"- {sc['title']}, {c}: " + "; ".join(
                    f"round {r['round']}: {int(r['extra']['reloads'])} reloads, {int(r['extra']['ok'])} ok, "
                    f"{int(r['extra']['failed'])} failed, {int(r['extra']['idle_eof'])} idle EOFs seen before reuse, "
                    f"{int(r['extra']['idle_reset'])} idle resets" for r in rs))
            if name == "idle_tunnels" and rs:
                out.append(f"- {sc['title']}, {c}: " + "; ".join(
                    f"{r['extra']['tunnels']} tunnels, PSS {r['extra']['pss_before_mib']:.1f} → "
                    f"{r['extra']['pss_after_mib']:.1f} MiB" for r in rs if "pss_before_mib" in r["extra"]))
            if name.startswith("ws_") and c == "forkproxy":
                sp = [r["extra"].get("splice_share") for r in rs if r.get("extra", {}).get("splice_share") is not None]
                if sp:
                    out.append(f"- {sc['title']}, forkproxy: share of tunnel bytes spliced (tunnel log) {[round(x, 3) for x in sp]}")
    return out


def charts(rec: dict[str, Any], path: Path) -> Path | None:
    """One PNG: a bar per contender for each scenario's metrics, min–max as error bars."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(n, sc, m) for n, sc in rec["scenarios"].items() if not sc.get("skipped") for m in sc["metrics"]]
    panels = [p for p in panels if any(values(rec, p[0], c, p[2]["key"]) for c in rec["contenders"])]
    if not panels:
        return None
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colours = {"forkproxy": "#2a7ab0", "nginx": "#3a9a3a", "direct": "#999999"}
    for ax, (n, sc, m) in zip(axes.flat, panels):
        names, meds, lo, hi = [], [], [], []
        for c in rec["contenders"]:
            v = values(rec, n, c, m["key"])
            if not v:
                continue
            s = Summary.of(v)
            names.append(c)
            meds.append(s.median)
            lo.append(s.median - s.low)
            hi.append(s.high - s.median)
        ax.bar(names, meds, yerr=[lo, hi], capsize=4, color=[colours.get(x, "#777") for x in names])
        positive = [v for v in meds if v > 0]
        if positive and max(positive) / min(positive) > 100:
            ax.set_yscale("log")  # latencies a thousand times apart: keep the small bars visible
        unit = m["unit"] if m["unit"] == m["label"] else f"{m['label']}, {m['unit']}"
        ax.set_title(f"{sc['title']}\n{unit} ({'higher' if m['higher'] else 'lower'} is better"
                     f"{', log scale' if ax.get_yscale() == 'log' else ''})", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m bench report RUN.json [CHART.png]   (a bench run or bench growth record)", file=sys.stderr)
        return 2
    rec = json.loads(Path(args[0]).read_text())
    if rec.get("kind") == "growth":  # a `bench growth` record: its own tables
        from .growth import markdown as growth_markdown
        print(growth_markdown(rec))
        return 0
    print(markdown(rec))
    if len(args) > 1:
        print(f"chart: {charts(rec, Path(args[1]))}")
    return 0
