"""Smaller parts of the harness: gap models, strace parsing, the report's ratios."""

from __future__ import annotations

import math

import pytest

from bench import report, tunetraffic
from bench.procs import which
from bench.profile import parse_strace

STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 45.00    0.004500           1      3000           recvfrom
 35.00    0.003500           1      2000           sendto
 20.00    0.002000           3       600        12 epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           1      5600        12 total
"""


def test_parse_strace() -> None:
    assert parse_strace(STRACE) == {"recvfrom": 3000, "sendto": 2000, "epoll_wait": 600}


def test_gap_models() -> None:
    exp = tunetraffic.parse_model("exp:10")
    assert exp.cdf(10) == pytest.approx(1 - math.exp(-1))
    ln = tunetraffic.parse_model("lognormal:5:1")
    assert ln.cdf(5) == pytest.approx(0.5)
    fixed = tunetraffic.parse_model("fixed:3")
    assert (fixed.cdf(2.9), fixed.cdf(3)) == (0.0, 1.0)
    with pytest.raises(ValueError):
        tunetraffic.parse_model("poisson:3")
    plays = tunetraffic.scripts(exp, 2000, 3, seed=7)
    assert len(plays) == 2000 and all(len(p) == 3 for p in plays)
    # P(any of 3 gaps >= 20) = 1 - (1 - e^-2)^3
    assert tunetraffic.expected_cut(plays, 20.0, None) == pytest.approx(1 - (1 - math.exp(-2)) ** 3, abs=0.03)
    assert tunetraffic.expected_cut(plays, 20.0, ping=15.0) == 0.0


def _rec() -> dict:  # type: ignore[type-arg]
    rounds = []
    for i, (fp, ng, d) in enumerate([(100, 200, 400), (110, 200, 400), (90, 300, 400)]):
        for who, v in (("forkproxy", fp), ("nginx", ng), ("direct", d)):
            rounds.append({"round": i, "contender": who, "metrics": {"rps": float(v)}, "work": 1000.0,
                           "cpu": {"proxy": 1.0, "backends": 0.1, "generators": 0.1, "wall": 2.0},
                           "extra": {}, "inconclusive": False})
    return {"layout": "shared", "rounds": 3, "contenders": ["forkproxy", "nginx", "direct"],
            "scenarios": {"http_rps": {"title": "HTTP", "per": "request", "rounds": rounds,
                                       "metrics": [{"key": "rps", "label": "requests/s", "unit": "req/s", "higher": True}]}}}


def test_ratios_pair_contenders_within_a_round() -> None:
    rec = _rec()
    assert report.round_ratios(rec, "http_rps", "forkproxy", "nginx", "rps") == [0.5, 0.55, 0.3]
    md = report.markdown(rec)
    assert "| HTTP | requests/s (req/s) | 100 (90–110) | 200 (200–300) | 400 | 0.5 (0.3–0.55) |" in md


def test_inconclusive_rounds_mark_the_ratio() -> None:
    rec = _rec()
    for r in rec["scenarios"]["http_rps"]["rounds"]:
        if r["contender"] == "nginx":
            r["inconclusive"] = True
    assert report.ratio_cell(rec, "http_rps", "forkproxy", "nginx", "rps").endswith("⚠")
    assert not report.ratio_cell(rec, "http_rps", "forkproxy", "direct", "rps").endswith("⚠")


def test_instruction_harness_proxies_every_exchange_through_one_connection() -> None:
    from bench.instructions import exchanges

    assert exchanges(30, warm=5) == 30  # each response is checked whole inside


@pytest.mark.skipif(not which("valgrind"), reason="needs valgrind (apt-get install valgrind)")
def test_instruction_count_is_positive_and_repeatable() -> None:
    from bench.instructions import count

    first, second = count(50, 150), count(50, 150)
    assert 10_000 < first < 5_000_000
    assert abs(first - second) / first < 0.05  # the point of counting instructions


def test_the_rounds_with_requests_lost_over_reloads_are_found() -> None:
    from bench.run import lost_over_reloads

    def rnd(n: int, who: str, failed: float) -> dict[str, object]:
        return {"round": n, "contender": who, "metrics": {"failed": failed}}
    rounds = [rnd(0, "forkproxy", 0.0), rnd(0, "nginx", 15.0), rnd(1, "forkproxy", 0.0), rnd(2, "forkproxy", 3.0)]
    assert lost_over_reloads({"scenarios": {"reloads": {"rounds": rounds}}}) == [2]
    assert lost_over_reloads({"scenarios": {"reloads": {"rounds": rounds[:3]}}}) == []  # nginx's do not count
    assert lost_over_reloads({"scenarios": {}}) == []  # reloads not run
