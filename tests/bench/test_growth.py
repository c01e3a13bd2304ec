"""`python -m bench growth` with tiny counts against real proxies (about 25 s), and its table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import growth
from bench.procs import which

TOOLS = {"wrk": "wrk", "nginx": "nginx-light"}
MISSING = [t for t in TOOLS if not which(t)]


def _record(out: Path) -> dict:  # type: ignore[type-arg]
    (path,) = out.glob("growth-*.json")
    assert path.with_suffix(".md").exists()
    return json.loads(path.read_text())


def _positive(rec: dict, name: str, who: str, key: str) -> float:  # type: ignore[type-arg]
    rounds = [r for r in rec["scenarios"][name]["rounds"] if r["contender"] == who]
    assert rounds, f"no round of {name} for {who}"
    for r in rounds:
        assert not r.get("error"), r.get("error")
        assert r["metrics"][key] > 0, (name, who, r["metrics"])
        assert r["metrics"]["pss_mib"] > 0
    return float(rounds[0]["metrics"][key])


@pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} "
                    f"(apt-get install {' '.join(TOOLS[t] for t in MISSING)})")
def test_growth_rows_have_positive_rates_for_both_proxies(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["--quick", "--http-conns", "1", "8", "--tunnels", "1", "--duration", "0.5", "--out", str(tmp_path)]
    assert growth.main(argv) == 0
    rec = _record(tmp_path)
    assert rec["contenders"] == ["forkproxy", "nginx"]
    assert list(rec["scenarios"]) == ["http_1", "http_8", "ws_bulk_1"]
    for who in ("forkproxy", "nginx"):
        for name in ("http_1", "http_8"):
            _positive(rec, name, who, "rps")
            _positive(rec, name, who, "cpu_us")
        _positive(rec, "ws_bulk_1", who, "gbps")
        _positive(rec, "ws_bulk_1", who, "cpu_s_gb")
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 8", "| 1"]
    for row in rows:
        cells = [c.strip(" ⚠") for c in row.strip("|").split("|")]
        assert float(cells[1].replace(",", "")) > 0 and float(cells[2].replace(",", "")) > 0  # rate, both proxies
        assert float(cells[3]) > 0  # forkproxy ÷ nginx


def test_growth_without_wrk_and_nginx_still_sweeps_tunnels(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FORKPROXY_BENCH_HIDE", "nginx,wrk")
    argv = ["--quick", "--tunnels", "1", "5", "--duration", "0.5", "--out", str(tmp_path)]
    assert growth.main(argv) == 0
    rec = _record(tmp_path)
    assert rec["contenders"] == ["forkproxy"]
    assert rec["scenarios"]["http"]["skipped"] == "wrk missing"
    _positive(rec, "ws_bulk_1", "forkproxy", "gbps")
    _positive(rec, "ws_bulk_5", "forkproxy", "gbps")  # 4 pump processes sharing 5 tunnels
    assert rec["scenarios"]["ws_bulk_5"]["rounds"][0]["extra"]["pump_processes"] == 4
    out = capsys.readouterr().out
    assert "HTTP keep-alive sweep: skipped (wrk missing)" in out
    assert "note: wrk missing (apt-get install wrk)" in out
    assert "note: nginx missing (apt-get install nginx-light)" in out


def _round(who: str, rnd: int, rate: float, inconclusive: bool = False) -> dict:  # type: ignore[type-arg]
    return {"round": rnd, "contender": who, "metrics": {"rps": rate, "cpu_us": 1e6 / rate, "pss_mib": 20.0},
            "work": rate, "cpu": {"proxy": 1.0, "backends": 0.5, "generators": 0.5, "wall": 1.0},
            "extra": {}, "inconclusive": inconclusive}


def test_table_medians_ratios_and_inconclusive_marks() -> None:
    rounds = [_round("forkproxy", 0, 100.0), _round("nginx", 0, 400.0),
              _round("forkproxy", 1, 300.0), _round("nginx", 1, 300.0, inconclusive=True),
              _round("forkproxy", 2, 200.0), _round("nginx", 2, 200.0, inconclusive=True)]
    rec = {"kind": "growth", "layout": "shared", "rounds": 3, "duration": 4.0, "contenders": ["forkproxy", "nginx"],
           "idle_pss_mib": {"forkproxy": 20.0, "nginx": 10.0},
           "scenarios": {"http_500": {"title": "HTTP", "per": "request", "rounds": rounds, "metrics": []}}}
    md = growth.markdown(rec)
    row = next(line for line in md.splitlines() if line.startswith("| 500 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "200 (100–300)"          # forkproxy req/s: median (min–max)
    assert cells[2] == "300 (200–400) ⚠"        # nginx: most rounds inconclusive
    assert cells[3] == "1 (0.25–1) ⚠"           # median of per-round ratios, marked
    assert cells[4] == "5,000 (3,333–10,000)"   # CPU-µs per request
    assert math.isclose(float(cells[7]), 20.0)  # PSS
    assert cells[9] == "1.00 / 1.00"            # cores: proxy / load
