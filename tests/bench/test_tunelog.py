"""The offline timeout analysis against analytic answers on synthetic tunnel logs."""

from __future__ import annotations

import json
import math
import tomllib

import pytest

from bench import tunelog
from bench.tunelog import KaplanMeier, Session, fit_tail, recommend


def record(max_idle: float, end: str = "client", location: str = "/ws/", **kw: object) -> str:
    r = {"time": "2026-01-01T00:00:00+0000", "location": location, "client": "127.0.0.1:1",
         "upstream": "127.0.0.1:2", "protocol": "websocket", "start": 0.0, "duration": max_idle + 1,
         "bytes_up": 10, "bytes_down": 20, "spliced_up": 0, "spliced_down": 0, "copied_up": 10,
         "copied_down": 20, "max_idle": max_idle, "end": end, "reset": False, "error": None}
    r.update(kw)
    return json.dumps(r)


def test_parse_keeps_good_records_and_lists_bad_lines() -> None:
    lines = [record(1.5), "", "not json", "[1, 2]", record(2.0, end="sideways"),
             json.dumps({"end": "client"}), record(3.0, end="timeout", location="/chat/")]
    got = tunelog.parse_lines(lines)
    assert [(s.max_idle, s.end, s.location) for s in got.sessions] == [(1.5, "client", "/ws/"),
                                                                        (3.0, "timeout", "/chat/")]
    assert [no for no, _ in got.bad] == [3, 4, 5, 6]
    assert got.sessions[1].censored and not got.sessions[0].censored
    assert set(tunelog.by_location(got.sessions)) == {"/ws/", "/chat/"}


def test_every_end_value_of_the_log_is_known() -> None:
    for end in ("client", "upstream", "timeout", "fin_timeout", "shutdown", "error"):
        assert tunelog.parse_lines([record(1.0, end=end)]).sessions


def test_kaplan_meier_textbook_example() -> None:
    km = KaplanMeier([(1, True), (2, True), (3, False), (4, True), (5, False)])
    assert km.survival(0.5) == 1.0
    assert km.survival(1) == pytest.approx(0.8)
    assert km.survival(3.5) == pytest.approx(0.6)
    assert km.survival(4) == pytest.approx(0.3)
    assert math.isnan(km.survival(6))          # past a censored maximum: unknown
    assert km.cut_share(4) == pytest.approx(0.6)  # P(M >= 4)


def test_without_censoring_kaplan_meier_is_the_empirical_distribution() -> None:
    gaps = [i / 10 for i in range(1000)]  # 0.0 .. 99.9, known
    km = KaplanMeier([(g, True) for g in gaps])
    assert km.cut_share(60) == pytest.approx(0.4)
    assert km.cut_share(90) == pytest.approx(0.1)
    assert km.cut_share(120) == 0.0
    assert km.quantile(0.5) == pytest.approx(49.9)


def test_recommendation_on_known_gaps() -> None:
    sessions = [Session("/ws/", 200.0, i / 10, "client") for i in range(1000)]
    r = recommend(sessions, target=0.01)
    assert (r.timeout, r.basis) == (120.0, "measured")  # 90 s still cuts 10%
    r = recommend(sessions, target=0.15)
    assert (r.timeout, r.basis) == (90.0, "measured")   # 60 s cuts 40%


def exponential_log(n: int, mean: float, timeout: float) -> list[Session]:
    """n sessions whose longest gaps are the exponential's quantiles; those >= timeout were cut."""
    out = []
    for i in range(n):
        m = -mean * math.log(1 - (i + 0.5) / n)
        if m >= timeout:
            out.append(Session("/ws/", timeout + 1, timeout, "timeout"))
        else:
            out.append(Session("/ws/", m + 1, m, "client"))
    return out


def test_censored_sessions_are_not_mistaken_for_short_ones() -> None:
    sessions = exponential_log(4000, 10.0, 15.0)
    r = recommend(sessions, target=0.01)
    km = KaplanMeier([(s.max_idle, not s.censored) for s in sessions])
    for t in (2.0, 5.0, 10.0, 14.0):
        assert km.cut_share(t) == pytest.approx(math.exp(-t / 10), abs=2e-3)
    assert r.censored == sum(1 for s in sessions if s.censored)
    assert r.current_timeout == 15.0
    # Beyond the timeout in force the answer is an extrapolation: exp(-45/10) = 1.1% > 1%,
    # exp(-60/10) = 0.25% <= 1%.
    assert (r.timeout, r.basis) == (60.0, "extrapolated")
    assert any("EXTRAPOLATED" in line for line in r.reasoning)
    tail = fit_tail([(s.max_idle, not s.censored) for s in sessions], km)
    assert tail is not None
    assert tail.theta == pytest.approx(10.0, rel=0.05)
    assert tail.survival(30.0) == pytest.approx(math.exp(-3), rel=0.1)
    assert r.percentiles["p50"] == pytest.approx(10 * math.log(2), abs=0.02)
    assert math.isnan(r.percentiles["p99"])  # 46 s is past what the log can tell


def test_a_target_met_inside_the_observed_range_is_measured() -> None:
    r = recommend(exponential_log(4000, 10.0, 120.0), target=0.01)
    # exp(-45/10) = 1.1% > 1%, exp(-60/10) = 0.25%: both inside the observed 120 s.
    assert (r.timeout, r.basis) == (60.0, "measured")


def test_no_tail_no_answer() -> None:
    sessions = [Session("/ws/", 31.0, 30.0, "timeout") for _ in range(10)]
    r = recommend(sessions, target=0.01)
    assert r.timeout is None and r.basis == "unknown"
    assert "measure with a longer timeout" in r.reasoning[-1]


def test_pings_are_part_of_the_reasoning() -> None:
    r = recommend([Session("/ws/", 100.0, 20.0, "client")] * 5, target=0.01, ping=20.0)
    assert r.timeout == 30.0
    assert any("pings every 20s" in line for line in r.reasoning)


def test_toml_snippet_round_trips() -> None:
    r = recommend([Session("/chat/", 10.0, 5.0, "client")] * 3, target=0.01, location="/chat/")
    doc = tomllib.loads(tunelog.toml_snippet([r]))
    assert doc["server"][0]["location"] == [{"path": "/chat/", "tunnel_timeout": "10s", "proxy_read_timeout": "60s"}]


def test_fmt_duration() -> None:
    assert [tunelog.fmt_duration(x) for x in (0.25, 5, 90, 3600, 5400)] == ["250ms", "5s", "90s", "1h", "90m"]
